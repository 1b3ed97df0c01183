"""Engine: the one generation loop. play, record, bench and eval all consume it.

A rollout is x_0, (a_1, x_1), (a_2, x_2), ...: ``reset`` gives x_0 (generated, or the last of
the given context frames), ``step(a_t)`` gives x_t, ``stream`` yields a frame per action.

Per frame, with the KV cache::

    step t:   denoise #1: forward [x_{t-1} at the context noise level, x_t noisy]  (2 frames)
                          -> commit x_{t-1} (its clean K/V now context)
              denoise #k: forward [x_t noisy]                                       (1 frame)
              decode x_t -> RGB

So the clean K/V of a finished frame costs no forward of its own: it rides along with the next
frame's first denoising step. ``recompute=True`` is the no-cache baseline: every denoising step
recomputes the sinks + window + the new frame from their latents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import anchor, carry
from engine.action import NOOP, Action, actions_to_tensor
from engine.checkpoint import load_config, load_weights
from engine.config import EngineConfig, SamplerConfig, get_preset
from engine.decoder import FrameDecoder, StandInDecoder
from engine.model.dit import DiT
from engine.runner import Runner
from engine.sampler import SAMPLERS, Denoiser, make_sigmas, noise_like
from engine.timing import StageTimer
from engine.tokenizer import TokenizerDecoder, has_tokenizer, load_tokenizer
from engine.types import Frame


@dataclass(frozen=True)
class _Context:
    """A finished frame as context: its latent at the context noise level, its action, and its
    predecessor's context latent and level (read by copy-prior models; zeros at level 1 for a
    rollout's first frame)."""

    index: int
    latent: torch.Tensor  # (1, 1, C, h, w)
    action: torch.Tensor  # (1, 1, A)
    prev: torch.Tensor  # (1, 1, C, h, w)
    prev_sigma: torch.Tensor  # (1, 1)
    clean: torch.Tensor  # (1, C, h, w): the frame before the context noise (engine/carry.py reads it)


@dataclass(frozen=True)
class _Mark:
    """A rollout's state before a draft: what a rejected draft restores."""

    t: int
    pending: _Context | None
    last: _Context | None
    history: list[_Context]
    generator: torch.Tensor
    length: int  # committed cache frames
    anchor: torch.Tensor | None


class Engine:
    """One rollout on one cache slot of a ``Runner``."""

    def __init__(self, runner: Runner, decoder: FrameDecoder, slot: int = 0,
                 recompute: bool = False) -> None:
        self.runner = runner
        self.decoder = decoder
        self.slot = slot
        self.recompute = recompute
        self.config: EngineConfig = runner.config
        self.device = runner.device
        self._sampler = SAMPLERS[self.config.sampler.kind]
        self._sigmas = make_sigmas(self.config.sampler, self.device)
        m = self.config.model
        self._sigma_ctx = torch.full((1, 1), m.context_sigma, device=self.device)
        self._latent_shape = (1, m.latent_channels, m.latent_height, m.latent_width)
        self._no_prev = torch.zeros((1, 1, *self._latent_shape[1:]), device=self.device)
        self._sigma_one = torch.ones((1, 1), device=self.device)
        self._generator = torch.Generator(self.device)
        self._t = -1  # index of the last frame returned; -1 before reset
        self._pending: _Context | None = None  # cached mode: last frame, not yet in the cache
        self._history: list[_Context] = []  # recompute mode: sinks + window
        self._last: _Context | None = None  # the newest finished frame (the next one's predecessor)
        self._drafts: list[tuple[_Mark, Frame]] = []  # frames generated ahead, oldest first
        self._anchor: torch.Tensor | None = None  # (1, C, 3) statistics of the true context (engine/anchor.py)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: EngineConfig, model: DiT | None = None, *, device: str = "cpu",
              dtype: torch.dtype = torch.float32, seed: int = 0, attention: str = "auto",
              compile: bool = False, slots: int = 1, recompute: bool = False,
              decoder: FrameDecoder | None = None, sampler: SamplerConfig | None = None,
              spare_frames: int = 2, batch_invariant: bool | None = None, int8: bool = False) -> Engine:
        """An engine for ``config``; without ``model``, random weights from ``seed``; without
        ``decoder``, the untrained stand-in; ``sampler`` overrides the config's sampler;
        ``spare_frames`` bounds how far a rollout can draft ahead (``spare_frames - 1``);
        ``batch_invariant`` (default: on CPU) and ``int8`` (block linears in int8; CPU, fp32) see
        ``Runner``."""
        if sampler is not None:
            config = dataclasses.replace(config, sampler=sampler)
        if model is None:
            model = DiT(config.model)
            model.init_weights(torch.Generator().manual_seed(seed))
        runner = Runner(config, model, device=device, dtype=dtype, slots=slots, spare_frames=spare_frames,
                        attention=attention, compile=compile, batch_invariant=batch_invariant, int8=int8)
        if decoder is None:
            decoder = StandInDecoder(config, device=device)
        return cls(runner, decoder, recompute=recompute)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> Engine:
        """Random weights in the shape of preset ``name`` (see ``build`` for options)."""
        return cls.build(get_preset(name), **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> Engine:
        """Weights and config from a checkpoint folder (validated; see engine.checkpoint). The
        folder's tokenizer, if it has one, is the decoder (else the untrained stand-in)."""
        config, _ = load_config(path)
        model = DiT(config.model)
        model.load_state_dict(load_weights(path, model.state_dict()))
        if "decoder" not in kwargs and has_tokenizer(path):
            tokenizer, _ = load_tokenizer(path)
            kwargs["decoder"] = TokenizerDecoder(tokenizer, name=f"tokenizer ({Path(path).name})",
                                                 device=kwargs.get("device", "cpu"),
                                                 dtype=kwargs.get("dtype", torch.float32))  # one dtype
        engine = cls.build(config, model, **kwargs)
        engine.runner.source = str(path)  # a background compile's child process reloads it from here
        return engine

    # ------------------------------------------------------------------ the loop
    @property
    def frame_index(self) -> int:
        """t of the last frame returned (-1 before ``reset``); drafts not yet taken do not count."""
        return self._t - len(self._drafts)

    @torch.inference_mode()
    def reset(self, seed: int = 0, context: torch.Tensor | None = None,
              context_actions: Sequence[Action] | None = None) -> Frame:
        """Start a rollout. Without ``context``, generate x_0 (no action). With ``context``
        (K, C, h, w) latents x_0..x_{K-1} and optionally their actions a_1..a_{K-1}, prefill
        the cache and return x_{K-1}. Same seed + same actions -> identical frames."""
        self._generator.manual_seed(seed)
        compiled = self.runner.begin([self.slot])
        self.runner.cache.reset(self.slot)
        self._pending, self._history, self._last, self._t = None, [], None, -1
        self._drafts = []
        self._anchor = None  # set from the context, or from x_0 when it is generated
        if context is None:
            return self.step(NOOP)
        if context.ndim != 4 or context.shape[0] < 1 or tuple(context.shape[1:]) != self._latent_shape[1:]:
            raise ValueError(f"context must be (K >= 1, {', '.join(map(str, self._latent_shape[1:]))}) "
                             f"latents, got {tuple(context.shape)}")
        k = context.shape[0]
        acts = [NOOP, *(context_actions if context_actions is not None else [NOOP] * (k - 1))]
        if len(acts) != k:
            raise ValueError(f"{k} context frames need {k - 1} actions (a_1..a_{k - 1}), got {len(acts) - 1}")
        latents = context.to(self.device, torch.float32)
        self._anchor = anchor.reference(latents)
        for i in range(k):
            if self._pending is not None:
                self._commit_pending()
            self._finish(i, latents[i : i + 1], actions_to_tensor([acts[i]], self.device).view(1, 1, -1))
        # The last context frame stays pending: like any finished frame, it rides along with the
        # next frame's first forward (so every rollout's steady step is the same 2-frame forward).
        self._t = k - 1
        rgb = self.decoder.decode(latents[-1:])[0].cpu().numpy()
        return Frame(index=k - 1, action=None if k == 1 else acts[-1], rgb=rgb, latent=latents[-1], compiled=compiled)

    def step(self, action: Action) -> Frame:
        """Generate x_t for a_t = ``action`` (t = previous index + 1). A draft made for this
        action (``draft``) is returned at once; a draft for another action is rolled back first."""
        taken = self.take_draft(action)
        return taken if taken is not None else generate([self], [action])[0]

    def stream(self, actions: Iterable[Action]) -> Iterator[Frame]:
        """Yield x_t for each a_t in ``actions`` (call ``reset`` first)."""
        if self._t < 0:
            raise RuntimeError("call reset() before stream()")
        for action in actions:
            yield self.step(action)

    def fork(self, slot: int) -> Engine:
        """A second rollout on ``slot`` of the same runner that continues from this one's state;
        the two then evolve independently (different actions, or the same ones identically).
        This rollout's drafts are rolled back first."""
        if slot == self.slot:
            raise ValueError("fork needs a different slot")
        self.cancel_drafts()
        other = Engine(self.runner, self.decoder, slot=slot, recompute=self.recompute)
        self.runner.cache.fork(self.slot, slot)
        other._generator.set_state(self._generator.get_state())
        other._t, other._pending, other._history = self._t, self._pending, list(self._history)
        other._last, other._anchor = self._last, self._anchor
        return other

    # ------------------------------------------------------------------ speculative frames
    @property
    def drafts(self) -> int:
        """Frames generated ahead (``draft``) and not yet taken."""
        return len(self._drafts)

    @property
    def draft_action(self) -> Action | None:
        """The action the newest draft assumed (None without drafts)."""
        return self._drafts[-1][1].action if self._drafts else None

    def draft(self, action: Action) -> Frame:
        """Generate the next frame under ``action`` ahead of time, without returning it as
        taken: ``step`` with the same action takes it, any other action rolls it back."""
        return generate([self], [action], draft=True)[0]

    def take_draft(self, action: Action) -> Frame | None:
        """The oldest draft if it was made for ``action``; else roll every draft back (the
        rollout is then bit for bit where it was before drafting) and return None."""
        if not self._drafts:
            return None
        mark, frame = self._drafts[0]
        if frame.action == action:
            self._drafts.pop(0)
            return dataclasses.replace(frame, timings_ms={"model": 0.0, "decode": 0.0, "total": 0.0,
                                                          "drafted_ms": frame.timings_ms.get("total", 0.0)})
        self._restore(mark)
        return None

    def cancel_drafts(self) -> None:
        """Roll every draft back."""
        if self._drafts:
            self._restore(self._drafts[0][0])

    def _mark(self) -> _Mark:
        return _Mark(self._t, self._pending, self._last, list(self._history), self._generator.get_state(),
                     self.runner.cache.length(self.slot), self._anchor)

    def _restore(self, mark: _Mark, keep_drafts: bool = False) -> None:
        """Back to ``mark``: its drafts are dropped (a rejection), or kept when the mark was
        taken after them (an abandoned step: ``Preempted``)."""
        self.runner.cache.rollback(self.slot, self.runner.cache.length(self.slot) - mark.length)
        self._t, self._pending, self._last, self._history = mark.t, mark.pending, mark.last, mark.history
        self._anchor = mark.anchor
        self._generator.set_state(mark.generator)
        if not keep_drafts:
            self._drafts = []

    # ------------------------------------------------------------------ internals
    def _finish(self, index: int, x0: torch.Tensor, action: torch.Tensor) -> None:
        """Turn a finished latent into context: noise it to the context level, keep it."""
        c = self.config.model.context_sigma
        latent = x0[:, None]  # (1, 1, C, h, w)
        if c > 0:
            noise = torch.randn(latent.shape, generator=self._generator, device=self.device)
            latent = (1 - c) * latent + c * noise
        prev, prev_sigma = self._predecessor()
        ctx = _Context(index, latent, action, prev, prev_sigma, x0)
        self._last = ctx
        if self.recompute:
            m = self.config.model
            keep = [h for h in self._history
                    if h.index < m.sink_frames or h.index > index - m.window_frames]
            self._history = [*keep, ctx]
        else:
            self._pending = ctx

    def _predecessor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(prev latent (1, 1, C, h, w), its level (1, 1)) for the frame after the newest one."""
        if self._last is None:
            return self._no_prev, self._sigma_one
        return self._last.latent, self._sigma_ctx

    def _commit_pending(self) -> None:
        p = self._pending
        assert p is not None
        self.runner.forward(self.slot, p.latent, self._sigma_ctx, p.action, p.prev, p.prev_sigma)
        self.runner.cache.commit(self.slot, 1)
        self._pending = None

    def _denoiser_recompute(self, t: int, action: torch.Tensor) -> Denoiser:
        hist = self._history
        index = torch.tensor([[h.index for h in hist] + [t]], device=self.device)  # (1, F)
        lat = [h.latent for h in hist]
        sig_ctx = self._sigma_ctx.expand(1, len(hist))
        acts = torch.cat([h.action for h in hist] + [action], dim=1)
        prev, prev_sigma = self._predecessor()
        prevs = torch.cat([h.prev for h in hist] + [prev], dim=1)  # (1, F, C, h, w)
        prev_sigmas = torch.cat([h.prev_sigma for h in hist] + [prev_sigma], dim=1)  # (1, F)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            xs = torch.cat([*lat, x[:, None]], dim=1)
            sig = torch.cat([sig_ctx, sigma.reshape(1, 1)], dim=1)
            return self.runner.forward_full(xs, sig, acts, index, prevs, prev_sigmas)[:, -1]

        return denoise


# ---------------------------------------------------------------------- one frame per rollout
def _same(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def _denoiser_batched(engines: Sequence[Engine], action: torch.Tensor, prev: torch.Tensor,
                      prev_sigma: torch.Tensor) -> Denoiser:
    """denoise(x (B, C, h, w), sigma) for B rollouts of one runner: one forward for the rollouts
    whose previous frame is still pending (it rides along: 2 frames each, then committed) and
    one for the others (1 frame each); in steady state every rollout is in the first."""
    runner = engines[0].runner
    sigma_ctx = engines[0]._sigma_ctx

    def forward(rows: list[int], x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        slots = [engines[i].slot for i in rows]
        whole = len(rows) == len(engines)
        pick = (lambda t: t) if whole else (lambda t: t[rows])
        xr, ar, pr, psr = pick(x)[:, None], pick(action), pick(prev), pick(prev_sigma)
        sg = sig.reshape(1, 1).expand(len(rows), 1)
        pend = [engines[i]._pending for i in rows]
        if pend[0] is None:
            return runner.forward(slots, xr, sg, ar, pr, psr)[:, 0]
        ps = [p for p in pend if p is not None]
        xs = torch.cat([_same([p.latent for p in ps]), xr], dim=1)  # (B, 2, C, h, w)
        v = runner.forward(slots, xs, torch.cat([sigma_ctx.expand(len(rows), 1), sg], dim=1),
                           torch.cat([_same([p.action for p in ps]), ar], dim=1),
                           torch.cat([_same([p.prev for p in ps]), pr], dim=1),
                           torch.cat([_same([p.prev_sigma for p in ps]), psr], dim=1))
        for i in rows:
            runner.cache.commit(engines[i].slot, 1)
            engines[i]._pending = None
        return v[:, 1]

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        folded = [i for i, e in enumerate(engines) if e._pending is not None]
        fresh = [i for i, e in enumerate(engines) if e._pending is None]
        if not folded or not fresh:
            return forward(folded or fresh, x, sigma)
        v = torch.empty_like(x)
        v[folded] = forward(folded, x, sigma)
        v[fresh] = forward(fresh, x, sigma)
        return v

    return denoise


@torch.inference_mode()
def generate(engines: Sequence[Engine], actions: Sequence[Action], draft: bool = False) -> list[Frame]:
    """x_t for every rollout in ``engines`` (distinct slots of one runner), each under its
    action: one batched forward per denoising step, one batched decode. Each rollout draws its
    noise from its own generator, so its frames do not depend on who else is in the batch
    (beyond float rounding). ``draft``: the frames are kept as drafts (see ``Engine.draft``).
    The one generation step: ``Engine.step``, the scheduler and the env all come here."""
    if len(engines) != len(actions) or not engines:
        raise ValueError(f"{len(engines)} rollouts and {len(actions)} actions")
    for action in actions:
        if not isinstance(action, Action):
            raise TypeError(f"a step takes an engine.action.Action, got {type(action).__name__}")
    first = engines[0]
    if any(e.runner is not first.runner or e.decoder is not first.decoder for e in engines):
        raise ValueError("a batch needs rollouts of one runner and one decoder")
    if len({e.slot for e in engines}) != len(engines):
        raise ValueError("a batch needs distinct rollouts (slots)")
    if not draft and any(e._drafts for e in engines):
        raise ValueError("a rollout with drafts must take or cancel them first (Engine.step does)")
    marks = [e._mark() for e in engines]  # what a rejected draft, or an abandoned step, restores
    timer = StageTimer(first.device)
    try:
        compiled, x0 = _generate_latents(engines, actions)
        timer.mark("model")
        if first.runner.batch_invariant and len(engines) > 1:  # conv kernels, too, pick by batch size
            rgb = torch.cat([first.decoder.decode(x0[i : i + 1]) for i in range(len(engines))]).cpu().numpy()
        else:
            rgb = first.decoder.decode(x0).cpu().numpy()
        timer.mark("decode")
    except BaseException:  # Preempted (an armed check found the step stale), or a failure: leave no trace
        for e, mark in zip(engines, marks, strict=True):
            e._restore(mark, keep_drafts=True)
        raise
    ms = timer.result()
    frames = []
    for i, (e, act) in enumerate(zip(engines, actions, strict=True)):
        e._t = t = e._t + 1
        frame = Frame(index=t, action=None if t == 0 else act, rgb=rgb[i], latent=x0[i], timings_ms=dict(ms),
                      compiled=compiled)
        if draft:
            e._drafts.append((marks[i], frame))
        frames.append(frame)
    return frames


def _generate_latents(engines: Sequence[Engine], actions: Sequence[Action]) -> tuple[bool, torch.Tensor]:
    """The model part of ``generate``: (compiled?, x_t latents (B, C, h, w)); each rollout's
    x_t is finished (context for the next step), its index not yet advanced."""
    first = engines[0]
    compiled = first.runner.begin([e.slot for e in engines])
    ts = [e._t + 1 for e in engines]
    a = _same([actions_to_tensor([act], first.device).view(1, 1, -1) for act in actions])  # (B, 1, A)
    gens = first._generator if len(engines) == 1 else [e._generator for e in engines]
    noise = noise_like(torch.empty((len(engines), *first._latent_shape[1:]), device=first.device), gens)
    if first.config.sampler.temperature != 1.0:  # a generator trained to sample: < 1 trades spread for fidelity
        noise = noise * first.config.sampler.temperature
    if first.recompute:
        x0 = _same([first._sampler(e._denoiser_recompute(t, a[i : i + 1]), noise[i : i + 1], e._sigmas, e._generator)
                    for i, (e, t) in enumerate(zip(engines, ts, strict=True))])
    else:
        preds = [e._predecessor() for e in engines]
        prev = _same([p[0] for p in preds])  # (B, 1, C, h, w)
        prev_sigma = _same([p[1] for p in preds])  # (B, 1)
        x0 = first._sampler(_denoiser_batched(engines, a, prev, prev_sigma), noise, first._sigmas, gens)
    m = first.config.model
    strength = m.stats_anchor
    if strength > 0:  # pull each frame's look back to its rollout's true context (x_0 anchors itself)
        pulled = []
        for i, e in enumerate(engines):  # per rollout: batch-invariant, and a few hundred values each
            if e._anchor is None:
                e._anchor = anchor.reference(x0[i : i + 1])
            pulled.append(anchor.pull(x0[i : i + 1], e._anchor, strength))
        x0 = _same(pulled)
    if m.detail_carry > 0:  # texture moves with the view from the previous frame, not re-predicted
        shift = getattr(first.runner.model, "shift", None)
        x0 = _same([x0[i : i + 1] if e._last is None  # a rollout's first frame has nothing to carry
                    else carry.carry(x0[i : i + 1], e._last.clean, a[i], shift, m.copy_shift_rows, m.detail_carry)
                    for i, e in enumerate(engines)])
    clip = m.latent_clip
    if clip > 0:  # a rollout must stay where the tokenizer's latents live, or it feeds on its own blow-up
        x0 = x0.clamp(-clip, clip)
    for i, (e, t) in enumerate(zip(engines, ts, strict=True)):
        e._finish(t, x0[i : i + 1], a[i : i + 1])
    return compiled, x0
