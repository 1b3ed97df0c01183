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

from engine.action import NOOP, Action, actions_to_tensor
from engine.checkpoint import load_config, load_weights
from engine.config import EngineConfig, SamplerConfig, get_preset
from engine.decoder import FrameDecoder, StandInDecoder
from engine.model.dit import DiT
from engine.runner import Runner
from engine.sampler import SAMPLERS, Denoiser, make_sigmas
from engine.timing import StageTimer
from engine.tokenizer import TokenizerDecoder, has_tokenizer, load_tokenizer
from engine.types import Frame


@dataclass
class _Context:
    """A finished frame as context: its latent at the context noise level, its action, and its
    predecessor's context latent and level (read by copy-prior models; zeros at level 1 for a
    rollout's first frame)."""

    index: int
    latent: torch.Tensor  # (1, 1, C, h, w)
    action: torch.Tensor  # (1, 1, A)
    prev: torch.Tensor  # (1, 1, C, h, w)
    prev_sigma: torch.Tensor  # (1, 1)


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

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: EngineConfig, model: DiT | None = None, *, device: str = "cpu",
              dtype: torch.dtype = torch.float32, seed: int = 0, attention: str = "auto",
              compile: bool = False, slots: int = 1, recompute: bool = False,
              decoder: FrameDecoder | None = None, sampler: SamplerConfig | None = None) -> Engine:
        """An engine for ``config``; without ``model``, random weights from ``seed``; without
        ``decoder``, the untrained stand-in; ``sampler`` overrides the config's sampler."""
        if sampler is not None:
            config = dataclasses.replace(config, sampler=sampler)
        if model is None:
            model = DiT(config.model)
            model.init_weights(torch.Generator().manual_seed(seed))
        runner = Runner(config, model, device=device, dtype=dtype, slots=slots,
                        attention=attention, compile=compile)
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
        return cls.build(config, model, **kwargs)

    # ------------------------------------------------------------------ the loop
    @property
    def frame_index(self) -> int:
        """t of the last frame returned (-1 before ``reset``)."""
        return self._t

    @torch.inference_mode()
    def reset(self, seed: int = 0, context: torch.Tensor | None = None,
              context_actions: Sequence[Action] | None = None) -> Frame:
        """Start a rollout. Without ``context``, generate x_0 (no action). With ``context``
        (K, C, h, w) latents x_0..x_{K-1} and optionally their actions a_1..a_{K-1}, prefill
        the cache and return x_{K-1}. Same seed + same actions -> identical frames."""
        self._generator.manual_seed(seed)
        self.runner.cache.reset(self.slot)
        self._pending, self._history, self._last, self._t = None, [], None, -1
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
        for i in range(k):
            self._finish(i, latents[i : i + 1], actions_to_tensor([acts[i]], self.device).view(1, 1, -1))
            if not self.recompute:
                self._commit_pending()
        self._t = k - 1
        rgb = self.decoder.decode(latents[-1:])[0].cpu().numpy()
        return Frame(index=k - 1, action=None if k == 1 else acts[-1], rgb=rgb, latent=latents[-1])

    @torch.inference_mode()
    def step(self, action: Action) -> Frame:
        """Generate x_t for a_t = ``action`` (t = previous index + 1)."""
        if not isinstance(action, Action):
            raise TypeError(f"step() takes an engine.action.Action, got {type(action).__name__}")
        timer = StageTimer(self.device)
        t = self._t + 1
        a = actions_to_tensor([action], self.device).view(1, 1, -1)  # (1, 1, A)
        noise = torch.randn(self._latent_shape, generator=self._generator, device=self.device)
        denoise = self._denoiser_recompute(t, a) if self.recompute else self._denoiser_cached(a)
        x0 = self._sampler(denoise, noise, self._sigmas, self._generator)  # (1, C, h, w)
        clip = self.config.model.latent_clip
        if clip > 0:  # a rollout must stay where the tokenizer's latents live, or it feeds on its own blow-up
            x0 = x0.clamp(-clip, clip)
        self._finish(t, x0, a)
        timer.mark("model")
        rgb = self.decoder.decode(x0)[0].cpu().numpy()
        timer.mark("decode")
        self._t = t
        return Frame(index=t, action=None if t == 0 else action, rgb=rgb, latent=x0[0],
                     timings_ms=timer.result())

    def stream(self, actions: Iterable[Action]) -> Iterator[Frame]:
        """Yield x_t for each a_t in ``actions`` (call ``reset`` first)."""
        if self._t < 0:
            raise RuntimeError("call reset() before stream()")
        for action in actions:
            yield self.step(action)

    def fork(self, slot: int) -> Engine:
        """A second rollout on ``slot`` of the same runner that continues from this one's state;
        the two then evolve independently (different actions, or the same ones identically)."""
        if slot == self.slot:
            raise ValueError("fork needs a different slot")
        other = Engine(self.runner, self.decoder, slot=slot, recompute=self.recompute)
        self.runner.cache.fork(self.slot, slot)
        other._generator.set_state(self._generator.get_state())
        other._t, other._pending, other._history = self._t, self._pending, list(self._history)
        other._last = self._last
        return other

    # ------------------------------------------------------------------ internals
    def _finish(self, index: int, x0: torch.Tensor, action: torch.Tensor) -> None:
        """Turn a finished latent into context: noise it to the context level, keep it."""
        c = self.config.model.context_sigma
        latent = x0[:, None]  # (1, 1, C, h, w)
        if c > 0:
            noise = torch.randn(latent.shape, generator=self._generator, device=self.device)
            latent = (1 - c) * latent + c * noise
        prev, prev_sigma = self._predecessor()
        ctx = _Context(index, latent, action, prev, prev_sigma)
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

    def _denoiser_cached(self, action: torch.Tensor) -> Denoiser:
        prev, prev_sigma = self._predecessor()

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            sig = sigma.reshape(1, 1)
            p = self._pending
            if p is None:
                return self.runner.forward(self.slot, x[:, None], sig, action, prev, prev_sigma)[:, 0]
            # Fold: the previous frame's clean K/V is written by this frame's first forward.
            xs = torch.cat([p.latent, x[:, None]], dim=1)  # (1, 2, C, h, w)
            v = self.runner.forward(self.slot, xs, torch.cat([self._sigma_ctx, sig], dim=1),
                                    torch.cat([p.action, action], dim=1), torch.cat([p.prev, prev], dim=1),
                                    torch.cat([p.prev_sigma, prev_sigma], dim=1))
            self.runner.cache.commit(self.slot, 1)
            self._pending = None
            return v[:, 1]

        return denoise

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
