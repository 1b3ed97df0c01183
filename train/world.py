"""``worldstream train world``: the block-causal DiT as a flow-matching teacher.

One training example is a clip of F frames of one episode, all denoised in one forward with the
same model and attention rule as inference (``FullContext``: sinks + sliding window, causal
across frames, bidirectional inside a frame)::

    clip:        x_s | x_{s+g+1} x_{s+g+2} ... x_{s+g+F-1}
    frame_index: 0   | g+1       g+2     ...   g+F-1          (frame 0 is the attention sink)

The gap g is 0 half of the time (a rollout's first seconds) and up to ``max_gap`` frames
otherwise (a long rollout, whose sink lies far behind the window). Every frame gets its own
noise level (diffusion forcing): with probability ``target_prob`` it is a *target* with
sigma ~ logit-normal and contributes to the loss; otherwise it is *context* with a light
sigma ~ U(0, context_sigma_max) and no loss, so that the model learns to read slightly noisy
history (inference writes finished frames at ``context_sigma``; its own outputs are imperfect).

Flow matching: x_sigma = (1 - sigma) x_0 + sigma eps, the model predicts v = eps - x_0.
The sink frame's action is zero (a rollout's first frame has none); frame t's is a_t.

Copy prior (``--copy-prior``, engine/model/copy_prior.py): every frame also gets its
predecessor's *context* version (the same noisy latent that frame shows as context; for a target
predecessor, a fresh one at a context level; for the sink, zeros at level 1), the loss is taken
on x0_hat in units of the prior's posterior std (EDM-style), and a share ``target_one`` of the
targets sit at sigma = 1, the level a 1-step sampler starts from.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import anchor, carry
from engine.cache import FullContext
from engine.checkpoint import save_checkpoint
from engine.config import EngineConfig
from engine.model.copy_prior import copy_scale, pan, x0_from_velocity
from engine.model.dit import DiT
from engine.tokenizer import CONFIG as TOK_CONFIG
from engine.tokenizer import WEIGHTS as TOK_WEIGHTS
from engine.tokenizer import Tokenizer, load_tokenizer
from train.data import ClipBank, LatentEpisode, load_latent_data
from train.loop import LoopConfig, Trainer, hardware
from train.world_critic import Critic, CriticTask, adaptive_weight
from train.world_losses import (
    absolute_error,
    energy_score,
    gradient_difference,
    marginal_crps,
    sharpness,
    squared_error,
    statistics_difference,
)
from train.world_pan import measure_pan
from train.world_setup import TRAIN_ONLY, freeze_except, init_from, teacher_config

LOSSES = ("l2", "l1", "energy", "crps")


@dataclass(frozen=True)
class WorldArgs:
    data: str
    tokenizer: str
    out: str
    preset: str = "small"
    steps: int = 3000
    batch: int = 4  # clips per step
    frames: int = 0  # clip length F; 0 = sink + window + 1 (every offset the model will see)
    lr: float = 3e-4
    held_out: int = 4  # episodes
    max_gap: int = 300  # frames between the sink and the window, when there is a gap
    target_prob: float = 0.6
    context_sigma: float = 0.05  # the level inference writes context at (stored in the config)
    context_sigma_max: float = 0.15  # context frames in training: sigma ~ U(0, this)
    teacher_steps: int = 16  # Euler steps of the exported teacher
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 250
    ema: float = 0.995  # short CPU runs: a long EMA would average in early, poor weights
    action_weight: float = 1.0  # loss weight of targets at most ACTION_LAG frames after an action change
    init: str | None = None  # start from this checkpoint's weights (a fine-tune; resume still wins)
    copy_prior: bool = False  # predecessor as input + copy-last preconditioning (see module doc)
    copy_tau: float = 0.5
    copy_denoised: bool = False  # copy prior: copy the predecessor's posterior mean (engine/model/copy_prior.py)
    # copy prior: pan the predecessor by the action (model.copy_shift, one whole-cell shift per button) in the
    # top copy_shift_rows rows; copy_shift_auto measures both from the training latents (train/world_pan.py)
    copy_shift: tuple[int, ...] = ()
    copy_shift_rows: int = 0
    copy_shift_auto: bool = False
    window: int = 0  # frames attended besides sinks; 0 = the preset's
    target_one: float = 0.0  # share of targets at sigma = 1 exactly
    self_prob: float = 0.0  # share of clips whose last history frames are the model's own 1-step samples
    self_frames: int = 3  # how many history frames are self-generated in such a clip
    bf16: bool = False  # autocast in bfloat16: slower here (4.2 vs 3.1 s/step fp32 on a 2-core AVX-512-BF16 Xeon)
    max_minutes: float = 0.0  # wall-clock budget of the training (0 = none): stops, checkpoints, LR ends at its floor
    # copy prior: "l2" (the posterior mean: blurs where motion is uncertain), "l1" (the median), "energy" (the
    # energy score of two samples per target: a proper score of the distribution, whose optimum samples) or "crps"
    # (the same score per latent value)
    loss: str = "l2"
    gdl: float = 0.0  # copy prior: weight of the gradient-difference loss (Mathieu et al. 2016): blur costs
    # copy prior: weight of the frame-statistics loss (train/world_losses.py): each channel's mean, spread and
    # neighbour differences against the truth's, wherever the content is; a faded frame pays for fading
    stats: float = 0.0
    # the engine's statistics anchor (engine/anchor.py, model.stats_anchor), written into the config and applied to
    # the self-forced history frames as a rollout applies it: the model learns to continue from anchored frames
    anchor: float = 0.0
    # the engine's detail carry (engine/carry.py, model.detail_carry), written into the config and applied to the
    # self-forced history frames as a rollout applies it (after the anchor): texture moves with the view
    carry: float = 0.0
    conv_head: int = 0  # model.conv_head: channels of the CNN that corrects the DiT's output (0 = none)
    # "head": only the conv head learns; "output": only the DiT's output layers (the linear control of "head");
    # the rest stays as --init made it
    train_only: str = "all"
    # the adversarial term on 1-step frames (train/world_critic.py), relative to the reconstruction's pull at the
    # output layer (adaptive_weight); 0 = no critic
    adv: float = 0.0
    critic_lr: float = 2e-4
    critic_steps: int = 1  # critic updates per model step (on that step's frames)
    # the critic judges (frame, predecessor) pairs, not frames alone: is this a plausible *next* frame of that one
    critic_cond: bool = False
    # the critic judges frames decoded to pixels by the (frozen) tokenizer, not latents: what a player sees
    critic_pixels: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.target_prob <= 1:
            raise ValueError("--target-prob must be in (0, 1]")
        if not 0 <= self.context_sigma <= self.context_sigma_max < 1:
            raise ValueError("need 0 <= --context-sigma <= --context-sigma-max < 1")
        if self.action_weight < 1:
            raise ValueError("--action-weight must be >= 1")
        if not 0 <= self.self_prob <= 1 or self.self_frames < 1:
            raise ValueError("need --self-prob in [0, 1] and --self-frames >= 1")
        if not 0 <= self.target_one <= 1:
            raise ValueError("--target-one must be in [0, 1]")
        if self.copy_denoised and not self.copy_prior:
            raise ValueError("--copy-denoised applies to --copy-prior models")
        object.__setattr__(self, "copy_shift", tuple(int(d) for d in self.copy_shift))  # a JSON list is welcome too
        if (self.copy_shift or self.copy_shift_auto) and not (self.copy_prior or self.carry > 0):
            raise ValueError("--copy-shift applies to --copy-prior models and to --carry")
        if self.copy_shift and self.copy_shift_auto:
            raise ValueError("--copy-shift: give the shifts or 'auto', not both")
        if self.window < 0 or self.copy_tau <= 0:
            raise ValueError("need --window >= 0 and --copy-tau > 0")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not 0 <= self.anchor <= 1:
            raise ValueError("--anchor must be in [0, 1]")
        if not 0 <= self.carry <= 1:
            raise ValueError("--carry must be in [0, 1]")
        if self.gdl < 0 or self.stats < 0:
            raise ValueError("--gdl and --stats must be >= 0")
        if (self.loss != "l2" or self.gdl > 0 or self.stats > 0) and not self.copy_prior:
            raise ValueError("--loss l1/energy/crps, --gdl and --stats apply to --copy-prior models")
        if self.adv < 0 or self.critic_lr <= 0 or self.critic_steps < 1:
            raise ValueError("need --adv >= 0, --critic-lr > 0 and --critic-steps >= 1")
        if (self.critic_cond or self.critic_pixels) and self.adv == 0:
            raise ValueError("--critic-cond and --critic-pixels need --adv > 0")
        if self.critic_cond and not self.copy_prior:
            raise ValueError("--critic-cond needs --copy-prior: the predecessor a frame is judged beside")
        if self.adv > 0 and self.target_one == 0:
            raise ValueError("--adv needs --target-one > 0: the critic judges 1-step frames, made from sigma 1")
        if self.conv_head < 0:
            raise ValueError("--conv-head must be >= 0 (0: none)")
        if self.train_only not in TRAIN_ONLY:
            raise ValueError(f"--train-only must be one of {', '.join(TRAIN_ONLY)}, got {self.train_only!r}")
        if self.train_only == "head" and (self.conv_head == 0 or self.init is None):
            raise ValueError("--train-only head needs --conv-head > 0 and --init (the DiT it corrects)")
        if self.train_only == "output" and self.init is None:
            raise ValueError("--train-only output needs --init (the DiT whose output layers it trains)")
        if self.max_minutes < 0:
            raise ValueError("--max-minutes must be >= 0 (0: no time budget)")
        if self.init is not None and not Path(self.init).is_dir():
            raise ValueError(f"--init: checkpoint folder {self.init} does not exist")


# Frames whose content the action just changed: a change at t shows at t (turning) and keeps
# changing the motion for a few frames (moving has momentum). History cannot predict them.
ACTION_LAG = 3


def action_change_weights(actions: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, F, A) clip actions -> (B, F) loss weights: ``weight`` for frames within ACTION_LAG
    frames after an action change, 1 elsewhere. Position 0 (the sink) and 1 (after a possible
    gap) have no known predecessor and never count as a change."""
    b, f, _ = actions.shape
    change = torch.zeros(b, f, dtype=torch.bool, device=actions.device)
    change[:, 2:] = (actions[:, 2:] != actions[:, 1:-1]).any(dim=-1)
    recent = change.clone()
    for k in range(1, ACTION_LAG):
        recent[:, k:] |= change[:, :-k]
    return 1.0 + (weight - 1.0) * recent.float()


def clip_frames(args: WorldArgs, config: EngineConfig) -> int:
    m = config.model
    return args.frames or (m.sink_frames + m.window_frames + 1)


def randn(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on ``device``, determined by ``g`` (the step's CPU generator).
    On an accelerator a generator there is seeded from ``g``: drawing millions of values on the
    CPU and copying them over was most of a GPU step (measured: 20 ms per batch-128 clip tensor,
    ~0.25 s of CPU work per self-forced step, against a model step of a few ms)."""
    if device.type == "cpu":
        return torch.randn(shape, generator=g)
    dev_gen = torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
    return torch.randn(shape, generator=dev_gen, device=device)


class WorldTask(CriticTask):
    def __init__(self, args: WorldArgs, config: EngineConfig, train: list[LatentEpisode],
                 held_out: list[LatentEpisode], tokenizer_dir: Path, device: torch.device,
                 tokenizer: Tokenizer | None = None) -> None:
        self.args, self.config, self.device = args, config, device
        self.frames = clip_frames(args, config)
        self.train = ClipBank(train, self.frames, device)
        if not len(self.train):
            raise ValueError(f"no training episode has {self.frames} frames")
        self.held_out = ClipBank(held_out, self.frames, device)
        self.tokenizer_dir = tokenizer_dir
        m = config.model
        self.n, self.sinks, self.window = m.tokens_per_frame, m.sink_frames, m.window_frames
        self.decoder: Tokenizer | None = None  # --critic-pixels: latents -> pixels, frozen, differentiable
        if args.adv > 0 and args.critic_pixels:  # ``tokenizer``: that of tokenizer_dir, already loaded
            net = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_dir)[0]
            self.decoder = net.to(device).eval().requires_grad_(False)
        per_frame = 3 if args.critic_pixels else m.latent_channels
        channels = per_frame * (2 if args.critic_cond else 1)  # + the predecessor, stacked on channels
        self.init_critic(Critic(channels, args.critic_lr, device, args.seed, args.critic_pixels) if args.adv > 0
                         else None, args.critic_steps)

    # ------------------------------------------------------------------ batches
    def sample_clips(self, bank: ClipBank, batch: int,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents (B, F, C, h, w), actions (B, F, A), frame_index (B, F), before (B, C, h, w)),
        on the bank's device: ``before`` is the latent just before frame 1 (the sink itself
        without a gap). Clip b starts at frame s of episode e and reads rows s, s+g+1 .. s+g+F-1."""
        f = self.frames
        e = torch.multinomial(bank.weights, batch, replacement=True, generator=g)
        t_len = bank.lengths[e]
        use_gap = torch.rand(batch, generator=g) < 0.5
        gap = torch.randint(0, self.args.max_gap + 1, (batch,), generator=g)
        gap = torch.where(use_gap, torch.minimum(gap, t_len - f), 0)
        room = t_len - f - gap  # the last start that fits
        s = torch.minimum((torch.rand(batch, generator=g) * (room + 1)).long(), room)
        index = torch.cat([torch.zeros(batch, 1, dtype=torch.long), gap[:, None] + torch.arange(1, f)[None]], dim=1)
        rows = bank.offsets[e, None] + s[:, None] + index
        dev = bank.latents.device
        lat = bank.latents[rows.to(dev)].float()
        act = bank.actions[rows.to(dev)].clone()
        act[:, 0] = 0  # the sink: a rollout's first frame has no action
        before = bank.latents[(bank.offsets[e] + s + gap).to(dev)].float()
        return lat, act, index.to(dev), before

    def noise_levels(self, shape: tuple[int, int], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma (B, F), target mask (B, F) bool): targets logit-normal, context light."""
        target = torch.rand(shape, generator=g) < self.args.target_prob
        target[:, -1] |= ~target.any(dim=1)  # every clip has at least one target
        sig_t = torch.sigmoid(torch.randn(shape, generator=g))
        if self.args.target_one > 0:
            sig_t = torch.where(torch.rand(shape, generator=g) < self.args.target_one, 1.0, sig_t)
        sig_c = torch.rand(shape, generator=g) * self.args.context_sigma_max
        return torch.where(target, sig_t, sig_c), target

    def predecessors(self, x0: torch.Tensor, xt: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor,
                     before: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's predecessor as context, (B, F, C, h, w), and its level (B, F).

        frame 0 (the sink): zeros at level 1 (a rollout's first frame has none); frame 1:
        ``before`` (the sink when there is no gap); frame i >= 2: frame i-1. A context
        predecessor is passed exactly as the clip shows it; a target one is re-drawn at a
        context level, as inference always has it."""
        b, f = sigma.shape
        dev = x0.device
        full = torch.cat([before[:, None], x0[:, 1:-1]], dim=1)  # clean predecessors of frames 1..F-1
        shown = torch.cat([xt[:, :1], xt[:, 1:-1]], dim=1)  # as the clip shows them (frame 1: the sink)
        shown_sigma = torch.cat([sigma[:, :1], sigma[:, 1:-1]], dim=1)
        usable = torch.cat([~target[:, :1], ~target[:, 1:-1]], dim=1)  # (B, F-1)
        no_gap = (before == x0[:, 0]).flatten(1).all(dim=1)  # frame 1's predecessor is the sink
        usable[:, 0] &= no_gap
        c = (torch.rand((b, f - 1), generator=g) * self.args.context_sigma_max).to(dev)
        eps = randn(full.shape, g, dev)
        ce = c[:, :, None, None, None]
        fresh = (1 - ce) * full + ce * eps
        keep = usable[:, :, None, None, None]
        prev = torch.where(keep, shown, fresh)
        prev_sigma = torch.where(usable, shown_sigma, c)
        prev = torch.cat([torch.zeros_like(x0[:, :1]), prev], dim=1)
        prev_sigma = torch.cat([torch.ones_like(sigma[:, :1]), prev_sigma], dim=1)
        return prev, prev_sigma

    def flow_loss(self, model: nn.Module, x0: torch.Tensor, actions: torch.Tensor, index: torch.Tensor,
                  before: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, g: torch.Generator,
                  weight: torch.Tensor | None = None, x0_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        dev = self.device
        x0, actions, index, before, sigma, target = (
            t.to(dev) for t in (x0, actions, index, before, sigma, target))
        eps = randn(tuple(x0.shape), g, dev)
        s = sigma[:, :, None, None, None]
        xt = (1 - s) * x0 + s * eps
        ctx = FullContext(index, self.n, self.sinks, self.window)
        m = self.config.model
        if m.copy_prior:
            prev, prev_sigma = self.predecessors(x0, xt, sigma, target, before, g)
            scale = copy_scale(sigma, m.copy_tau).clamp(min=1e-3)[:, :, None, None, None]
            if self.args.loss in ("energy", "crps"):  # a second sample of every target, same history
                xt2 = torch.where(target[:, :, None, None, None], (1 - s) * x0 + s * randn(tuple(x0.shape), g, dev), xt)
                both, sigma2 = torch.cat([xt, xt2]), sigma.repeat(2, 1)
                two = FullContext(index.repeat(2, 1), self.n, self.sinks, self.window)
                v = model(both, sigma2, actions.repeat(2, 1, 1), two, prev.repeat(2, 1, 1, 1, 1),
                          prev_sigma.repeat(2, 1)).float()
                x0_a, x0_b = x0_from_velocity(both, v, sigma2).chunk(2)
                x0_hat = x0_a
                score = energy_score if self.args.loss == "energy" else marginal_crps
                err = score(x0_a / scale, x0_b / scale, x0 / scale)
            else:
                v = model(xt, sigma, actions, ctx, prev, prev_sigma).float()  # (B, F, C, h, w)
                x0_hat = x0_from_velocity(xt, v, sigma)
                diff = (x0_hat - x0) / scale
                err = absolute_error(diff) if self.args.loss == "l1" else squared_error(diff)  # (B, F)
            if x0_out is not None:
                x0_out += [x0_hat, prev]
            if self.args.gdl > 0:
                err = err + self.args.gdl * gradient_difference(x0_hat, x0)
            if self.args.stats > 0:
                err = err + self.args.stats * statistics_difference(x0_hat, x0)
        else:
            v = model(xt, sigma, actions, ctx).float()  # (B, F, C, h, w)
            if x0_out is not None:
                x0_out += [xt - s * v, torch.zeros_like(x0)]
            err = (v - (eps - x0)).pow(2).mean(dim=(2, 3, 4))  # (B, F)
        w = target.float() if weight is None else target.float() * weight.to(dev)
        return (err * w).sum() / w.sum()

    def loss(self, model: nn.Module, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x0, actions, index, before = self.sample_clips(self.train, self.args.batch, g)
        sigma, target = self.noise_levels(tuple(index.shape), g)
        weight = action_change_weights(actions, self.args.action_weight) if self.args.action_weight != 1 else None
        mine = torch.rand(len(x0), generator=g) < self.args.self_prob
        if mine.any():
            x0, sigma, target = self.self_forced(model, x0, actions, index, before, sigma, target, mine, g)
        preds: list[torch.Tensor] = []
        loss = self.flow_loss(model, x0, actions, index, before, sigma, target, g, weight,
                              x0_out=preds if self.critic is not None else None)
        info = {"self": float(mine.float().mean())}
        if self.critic is not None:
            one = (target & (sigma == 1)).to(self.device)  # the frames a 1-step rollout shows
            if one.any():
                fake, real = preds[0][one], x0.to(self.device)[one]
                cond = None
                if self.args.critic_cond:  # the same predecessor beside both: a pair is judged, not a frame
                    m = self.config.model
                    cond = pan(preds[1], actions.to(self.device), getattr(model, "shift", None), m.copy_shift_rows)
                    cond = cond[one].detach()  # panned by the action as the model pans it: aligned with the truth
                if self.decoder is not None:  # judged as a player sees them; --batch random frames (decoding costs)
                    pick = torch.randperm(len(fake), generator=g)[: self.args.batch].to(self.device)
                    fake, real = self._pixels(fake[pick]), self._pixels(real[pick]).detach()
                    cond = None if cond is None else self._pixels(cond[pick]).detach()
                if cond is not None:
                    fake, real = torch.cat([fake, cond], dim=1), torch.cat([real, cond], dim=1)
                adv = self.critic.generator_loss(fake)
                w = adaptive_weight(loss, adv, model)
                loss = loss + self.args.adv * w * adv
                self._judged = (real.detach(), fake.detach())
            # every step logs the same columns
            info["adv_g"], info["adv_w"] = (float(adv.detach()), float(w)) if one.any() else (0.0, 0.0)
            info.update(self._critic_log)
        return loss, info

    def _pixels(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) normalised latents -> (N, 3, H, W) decoded frames, ~[-1, 1] (gradients flow)."""
        assert self.decoder is not None
        return self.decoder.decode_raw(self.decoder.denormalise(latent))

    @torch.no_grad()
    def self_forced(self, model: nn.Module, x0: torch.Tensor, actions: torch.Tensor, index: torch.Tensor,
                    before: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, mine: torch.Tensor,
                    g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self forcing: in the clips ``mine``, history frames F-1-k..F-2 become the model's own
        1-step samples (from sigma 1, each given the ones before it, at a context level), every
        frame but the last is context, and the last (true) frame is the only target. The model
        so learns to continue from its own imperfect frames, as it must in a rollout."""
        f = x0.shape[1]
        k = min(self.args.self_frames, f - 2)
        x0, sigma, target = x0.clone(), sigma.clone(), target.clone()
        sigma[mine] = torch.rand(sigma[mine].shape, generator=g) * self.args.context_sigma_max
        target[mine] = False
        target[mine, -1] = True
        sigma[mine, -1] = torch.where(torch.rand(int(mine.sum()), generator=g) < self.args.target_one, 1.0,
                                      torch.sigmoid(torch.randn(int(mine.sum()), generator=g)))
        sub = mine.nonzero().flatten()
        refs = None
        if self.args.anchor > 0:  # each clip's true history frames are its anchor, as a rollout's context is
            true = x0[sub, : f - 1 - k].float()
            refs = anchor.statistics(true.flatten(0, 1)).view(len(sub), f - 1 - k, -1, 3).mean(1).to(self.device)
        was_training = model.training
        model.eval()
        for j in range(f - 1 - k, f - 1):
            sig = sigma[sub, :j + 1].clone()  # frames after j are never seen by j (causal): left out
            sig[:, j] = 1.0
            tgt = torch.zeros_like(target[sub, :j + 1])
            tgt[:, j] = True
            preds: list[torch.Tensor] = []
            self.flow_loss(model, x0[sub, :j + 1], actions[sub, :j + 1], index[sub, :j + 1], before[sub], sig, tgt,
                           g, x0_out=preds)
            made = preds[0][:, j]
            if refs is not None:
                made = anchor.pull(made.float(), refs, self.args.anchor)
            if self.args.carry > 0:  # the frame before is true or self-made, clean: as the engine carries
                last = before[sub] if j == 1 else x0[sub, j - 1]  # frame 1's predecessor: the frame before a gap
                made = carry.carry(made.float(), last.to(made.device, torch.float32),
                                   actions[sub, j].to(made.device, torch.float32),
                                   getattr(model, "shift", None), self.config.model.copy_shift_rows, self.args.carry)
            x0[sub, j] = made.to(x0.dtype)
        model.train(was_training)
        return x0, sigma, target

    @torch.no_grad()
    def evaluate(self, ema: nn.Module) -> dict[str, float]:
        """Held-out flow loss of the *last* frame of 16 fixed clips at sigma 0.25 / 0.5 / 0.75,
        history at the inference context level (what the teacher faces when it samples); and
        the 1-step prediction from sigma 1 against copying the last frame (latent MSE)."""
        if not self.held_out:
            return {}
        ema.eval()
        g = torch.Generator().manual_seed(1234)
        x0, actions, index, before = self.sample_clips(self.held_out, 16, g)
        out = {}
        target = torch.zeros(index.shape, dtype=torch.bool)
        target[:, -1] = True
        for level in (0.25, 0.5, 0.75, 1.0):
            sigma = torch.full(index.shape, self.args.context_sigma)
            sigma[:, -1] = level
            preds: list[torch.Tensor] = []
            losses = [self.flow_loss(ema, x0[i:i + 8], actions[i:i + 8], index[i:i + 8], before[i:i + 8],
                                     sigma[i:i + 8], target[i:i + 8], g, x0_out=preds) for i in range(0, 16, 8)]
            if level < 1:
                out[f"loss_s{int(level * 100)}"] = float(torch.stack(losses).mean())
                continue
            x0_hat = torch.cat(preds[0::2])[:, -1]
            out["mse_1step"] = float((x0_hat - x0[:, -1]).pow(2).mean())
            out["mse_copy"] = float((x0[:, -2] - x0[:, -1]).pow(2).mean())
            out["sharp_1step"] = float(sharpness(x0_hat, x0[:, -1]))
        out["loss"] = (out["loss_s25"] + out["loss_s50"] + out["loss_s75"]) / 3
        return out

    def export(self, ema: nn.Module, folder: Path, meta: dict[str, Any]) -> None:
        step = int(meta.get("step", 0))
        meta = {**meta, "clips_seen": step * self.args.batch, "frames_seen": step * self.args.batch * self.frames}
        save_checkpoint(folder, self.config, ema.state_dict(), meta=meta, dtype=torch.bfloat16)
        for name in (TOK_WEIGHTS, TOK_CONFIG):
            if (self.tokenizer_dir / name).resolve() != (folder / name).resolve():
                shutil.copyfile(self.tokenizer_dir / name, folder / name)


def train_world(args: WorldArgs, progress: bool = True) -> dict[str, float]:
    device = torch.device(args.device)
    config = teacher_config(args)
    tok_dir = Path(args.tokenizer)
    tokenizer, _ = load_tokenizer(tok_dir)
    if (tokenizer.cfg.latent_channels != config.model.latent_channels
            or tokenizer.cfg.height // tokenizer.cfg.stride != config.model.latent_height
            or tokenizer.cfg.width // tokenizer.cfg.stride != config.model.latent_width):
        raise ValueError(f"tokenizer {tok_dir} makes {tokenizer.cfg.latent_channels}x"
                         f"{tokenizer.cfg.height // tokenizer.cfg.stride}x{tokenizer.cfg.width // tokenizer.cfg.stride}"
                         f" latents; preset {args.preset} needs {config.model.latent_channels}x"
                         f"{config.model.latent_height}x{config.model.latent_width}")
    train_eps, eval_eps, data_meta = load_latent_data(args.data, tok_dir, args.held_out, device, progress)
    if args.copy_shift_auto:
        shift, rows, errors = measure_pan(train_eps)
        print(f"copy shift (measured): {list(shift)} in the top {rows or config.model.latent_height} rows")
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, copy_shift=shift,
                                                                       copy_shift_rows=rows))
        data_meta["copy_shift_errors"] = errors
    torch.manual_seed(args.seed)
    model = DiT(config.model)
    model.init_weights(torch.Generator().manual_seed(args.seed), adaln_zero=True)
    if args.init is not None:
        init_from(model, args.init)
    freeze_except(model, args.train_only)
    model.to(device)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup=200, ema=args.ema, checkpoint_every=args.checkpoint_every,
                      seed=args.seed, bf16=args.bf16, max_seconds=args.max_minutes * 60)
    meta = {"kind": "teacher (flow matching)", **data_meta, "args": dataclasses.asdict(args),
            "hardware": hardware(device)}
    task = WorldTask(args, config, train_eps, eval_eps, tok_dir, device, tokenizer)
    return Trainer(model, task, loop, args.out, meta=meta, progress=progress).run()
