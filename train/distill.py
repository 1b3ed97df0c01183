"""``worldstream train distill``: a few-step consistency student of the flow-matching teacher.

Consistency distillation (Song et al. 2023), block-causal. The consistency function is the
velocity model read as an x0 predictor, f(x, sigma) = x - sigma * v(x, sigma): f(x, 0) = x
holds by construction (the boundary condition), and the engine's ``consistency`` sampler uses
exactly this f. The schedule is the teacher's own grid, sigma_n = n / N (N = its Euler steps)::

    sigma:   0 = s_0 < s_1 < ... < s_{n-1} < s_n < ... < s_N = 1
    x_n   = (1 - s_n) x_0 + s_n eps                      the target frame, noised
    x_n-1 = x_n + (s_{n-1} - s_n) v_teacher(x_n, s_n)    one teacher Euler step (its ODE)
    loss  = d( f_student(x_n, s_n), f_target(x_n-1, s_{n-1}) )   target = EMA of the student

d is the pseudo-Huber distance on the latent frame. The student starts as a copy of the teacher.

One example is a clip laid out as in teacher training (sink, gap, window; ``WorldTask``), but
only its LAST frame is a target, so that every target sees what it sees at inference: all
history written at the model's context level. For a share of the clips the last few history
frames are the student's own output (sampled with its shipped number of steps, no gradient),
so that it learns from contexts that have drifted the way its own rollouts do. Targets are
drawn at the student's sampling levels (sigma 1, and 0.5 for two steps) part of the time and
anywhere on the grid otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.cache import FullContext
from engine.checkpoint import WEIGHTS, load_config, load_weights
from engine.config import EngineConfig, SamplerConfig
from engine.model.dit import DiT
from engine.sampler import Denoiser, linear_schedule, sample_consistency, sample_euler
from train.data import LatentEpisode, file_sha, load_latent_data
from train.loop import LoopConfig, Trainer, hardware, train_autocast
from train.world import WorldArgs, WorldTask, randn


@dataclass(frozen=True)
class DistillArgs:
    teacher: str  # checkpoint folder of the teacher (its tokenizer comes with it)
    data: str
    out: str
    student_steps: int = 2  # sampling steps the student ships with (1 or 2)
    steps: int = 3000
    batch: int = 16  # clips per step (one target frame each)
    lr: float = 5e-5
    target_ema: float = 0.95  # decay of the target network (EMA of the student)
    ema: float = 0.999  # decay of the exported weights' EMA
    anchor_prob: float = 0.5  # share of targets at the student's own sampling levels
    self_context: float = 0.5  # share of clips whose last history frames the student generated
    self_frames: int = 4  # at most this many generated history frames
    huber_c: float = 0.01  # pseudo-Huber constant, in RMS latent units: ~L2 below it, ~L1 above
    held_out: int = 4
    eval_clips: int = 16  # fixed held-out clips of the check at every checkpoint
    max_gap: int = 300
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        if self.student_steps not in (1, 2):
            raise ValueError("--student-steps must be 1 or 2")
        if not Path(self.teacher).is_dir():
            raise ValueError(f"--teacher: checkpoint folder {self.teacher} does not exist")
        if not 0 <= self.target_ema < 1 or not 0 <= self.ema < 1:
            raise ValueError("--target-ema and --ema must be in [0, 1)")
        for name in ("anchor_prob", "self_context"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if self.self_frames < 0 or self.batch < 1 or self.eval_clips < 1 or self.huber_c <= 0:
            raise ValueError("need --self-frames >= 0, --batch >= 1, --eval-clips >= 1, --huber-c > 0")


def student_config(teacher: EngineConfig, student_steps: int) -> EngineConfig:
    return dataclasses.replace(teacher, sampler=SamplerConfig(kind="consistency", steps=student_steps,
                                                              schedule="linear"))


class DistillTask:
    """Loss, held-out check and export of consistency distillation (a ``StatefulTask``: the
    target network is its state)."""

    def __init__(self, args: DistillArgs, config: EngineConfig, teacher: nn.Module, grid_steps: int,
                 student: nn.Module, train: list[LatentEpisode], held_out: list[LatentEpisode],
                 tokenizer_dir: Path, device: torch.device) -> None:
        self.args, self.config, self.device = args, config, device
        clip_args = WorldArgs(data=args.data, tokenizer=str(tokenizer_dir), out=args.out, batch=args.batch,
                              held_out=args.held_out, max_gap=args.max_gap)
        self.clips = WorldTask(clip_args, config, train, held_out, tokenizer_dir, device)
        self.teacher = teacher.eval().requires_grad_(False)
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        m = config.model
        self.ctx_sigma = m.context_sigma
        self.grid = linear_schedule(grid_steps)  # (N + 1,): the teacher's Euler grid, 1 down to 0
        self.n = len(self.grid) - 1
        # Grid positions (counted from sigma 0) of the student's own sampling levels.
        own = linear_schedule(args.student_steps)[:-1]
        self.anchors = torch.tensor(sorted({round(float(s) * self.n) for s in own}))
        self._teacher_eval: dict[str, Any] | None = None  # fixed held-out clips + the teacher's samples

    # ------------------------------------------------------------------ the target network
    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for t, p in zip(self.target.parameters(), model.parameters(), strict=True):
            t.lerp_(p.detach(), 1 - self.args.target_ema)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"target.{k}": v for k, v in self.target.state_dict().items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.target.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("target.")})

    # ------------------------------------------------------------------ batches
    def _context(self, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """History written at the context level, as the engine writes it: (B, F, C, h, w)."""
        c = self.ctx_sigma
        return (1 - c) * x0 + c * randn(tuple(x0.shape), g, self.device)

    def _levels(self, b: int, g: torch.Generator) -> torch.Tensor:
        """Grid positions n in 1..N of the targets: (B,) long."""
        anywhere = torch.randint(1, self.n + 1, (b,), generator=g)
        anchored = self.anchors[torch.randint(0, len(self.anchors), (b,), generator=g)]
        return torch.where(torch.rand(b, generator=g) < self.args.anchor_prob, anchored, anywhere)

    @torch.no_grad()
    def _self_generate(self, model: nn.Module, x: torch.Tensor, actions: torch.Tensor, index: torch.Tensor,
                       k: int, g: torch.Generator) -> torch.Tensor:
        """History frames F-1-k .. F-2 replaced by the student's own samples, one frame at a time,
        each conditioned on the (partly generated) frames before it, written at the context level."""
        m = self.config.model
        ctx = FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames)
        f = x.shape[1]
        x = x.clone()
        sigmas = linear_schedule(self.args.student_steps).to(self.device)
        dev_gen = torch.Generator(self.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        c = self.ctx_sigma
        for j in range(f - 1 - k, f - 1):
            noise = randn(tuple(x[:, j].shape), g, self.device)
            x0j = sample_consistency(self._denoiser(model, x, actions, ctx, j), noise, sigmas, dev_gen)
            x[:, j] = (1 - c) * x0j + c * randn(tuple(x0j.shape), g, self.device)
        return x

    def loss(self, model: nn.Module, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        a = self.args
        dev = self.device
        x0, actions, index, _ = self.clips.sample_clips(self.clips.train, a.batch, g)  # on the device
        b, f = index.shape
        m = self.config.model
        ctx = FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames)
        x = self._context(x0, g)
        which = (torch.rand(b, generator=g) < a.self_context).nonzero().flatten().to(dev)
        k = min(int(torch.randint(1, a.self_frames + 1, (), generator=g)) if a.self_frames else 0, f - 2)
        if k > 0 and len(which) > 0:
            was_training = model.training
            model.eval()
            x[which] = self._self_generate(model, x[which], actions[which], index[which], k, g)
            model.train(was_training)
        n = self._levels(b, g)
        s_n = (n.float() / self.n).to(dev)
        s_m = ((n - 1).float() / self.n).to(dev)
        eps = randn(tuple(x0[:, -1].shape), g, dev)
        x_n = (1 - s_n[:, None, None, None]) * x0[:, -1] + s_n[:, None, None, None] * eps
        teacher, target, student = (self._denoiser(net, x, actions, ctx) for net in (self.teacher, self.target, model))
        with torch.no_grad():
            x_m = x_n + (s_m - s_n)[:, None, None, None] * teacher(x_n, s_n)  # one Euler step of the teacher's ODE
            goal = x_m - s_m[:, None, None, None] * target(x_m, s_m)  # at s_m = 0: x_m itself (boundary condition)
        pred = x_n - s_n[:, None, None, None] * student(x_n, s_n)
        d2 = (pred - goal).pow(2).mean(dim=(1, 2, 3))  # (B,)
        c = a.huber_c
        loss = ((d2 + c * c).sqrt() - c).mean()
        return loss, {"self_frames": k * len(which) / b, "mse": float(d2.mean().detach())}

    # ------------------------------------------------------------------ held out
    @torch.no_grad()
    def evaluate(self, ema: nn.Module) -> dict[str, float]:
        """On ``eval_clips`` fixed held-out clips (history at the context level), the last frame
        sampled from fixed noise. ``loss_1step``: MSE of the student's one jump from sigma 1 to the teacher's
        N-step Euler sample of the same noise; ``loss_mid``: the same from the point sigma 0.5 of
        the teacher's own path (the second step of a 2-step sample); ``truth_mse_*``: MSE of the
        student's 1- and 2-step samples and of the teacher's sample to the true frame."""
        if not self.clips.held_out:
            return {}
        ema.eval()
        fx = self._fixed_eval()
        denoise = self._denoiser(ema, fx["x"], fx["actions"], fx["ctx"])
        out: dict[str, float] = {}
        one = fx["noise"] - denoise(fx["noise"], torch.tensor(1.0, device=self.device))
        out["loss_1step"] = float((one - fx["teacher"]).pow(2).mean())
        s_mid = fx["mid_sigma"]
        mid = fx["mid"] - s_mid * denoise(fx["mid"], torch.tensor(s_mid, device=self.device))
        out["loss_mid"] = float((mid - fx["teacher"]).pow(2).mean())
        for steps in (1, 2):
            gen = torch.Generator(self.device).manual_seed(99)
            sample = sample_consistency(denoise, fx["noise"], linear_schedule(steps).to(self.device), gen)
            out[f"truth_mse_{steps}step"] = float((sample - fx["truth"]).pow(2).mean())
        out["teacher_truth_mse"] = float((fx["teacher"] - fx["truth"]).pow(2).mean())
        return out

    def _denoiser(self, net: nn.Module, x: torch.Tensor, actions: torch.Tensor, ctx: FullContext,
                  pos: int = -1) -> Denoiser:
        """The velocity of clip frame ``pos`` given the frames before it as they are in ``x`` (at
        the context level): the samplers' ``denoise``. Later frames cannot affect it (causal)."""
        sigma = torch.full(x.shape[:2], self.ctx_sigma, device=self.device)

        def denoise(frame: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            xin, sig = x.clone(), sigma.clone()
            xin[:, pos], sig[:, pos] = frame, s
            return net(xin, sig, actions, ctx)[:, pos].float()

        return denoise

    def _fixed_eval(self) -> dict[str, Any]:
        if self._teacher_eval is None:
            g = torch.Generator().manual_seed(1234)
            held = self.clips.held_out
            x0, actions, index, _ = self.clips.sample_clips(held, self.args.eval_clips, g)  # on the device
            m = self.config.model
            ctx = FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames)
            x = self._context(x0, g)
            noise = randn(tuple(x0[:, -1].shape), g, self.device)
            denoise = self._denoiser(self.teacher, x, actions, ctx)
            grid, half = self.grid.to(self.device), self.n // 2
            mid = sample_euler(denoise, noise, grid[: self.n - half + 1])  # at sigma grid[N - half] ~ 0.5
            teacher = sample_euler(denoise, mid, grid[self.n - half:])
            self._teacher_eval = {"x": x, "actions": actions, "ctx": ctx, "noise": noise, "truth": x0[:, -1],
                                  "mid": mid, "mid_sigma": float(grid[self.n - half]), "teacher": teacher}
        return self._teacher_eval

    def export(self, ema: nn.Module, folder: Path, meta: dict[str, Any]) -> None:
        self.clips.export(ema, folder, meta)


def load_teacher(path: str, device: torch.device) -> tuple[DiT, EngineConfig, dict[str, Any]]:
    """(model, config, meta) of a flow-matching teacher checkpoint."""
    config, meta = load_config(path)
    if config.sampler.kind != "euler":
        raise ValueError(f"--teacher {path} samples with {config.sampler.kind!r}; distillation needs an Euler "
                         "(flow-matching) teacher")
    if config.model.copy_prior:
        raise ValueError(f"--teacher {path} is a copy-prior model: distilling one is not supported (it reads "
                         "its predecessor frame, which this loss does not feed); sample it with 1-2 Euler steps")
    model = DiT(config.model)
    model.load_state_dict(load_weights(path, model.state_dict()))
    return model.to(device), config, meta


def train_distill(args: DistillArgs, progress: bool = True) -> dict[str, float]:
    device = torch.device(args.device)
    teacher, t_config, t_meta = load_teacher(args.teacher, device)
    config = student_config(t_config, args.student_steps)
    tok_dir = Path(args.teacher)
    train_eps, eval_eps, data_meta = load_latent_data(args.data, tok_dir, args.held_out, device, progress)
    student = DiT(config.model)
    student.load_state_dict(teacher.state_dict())  # the student starts as the teacher
    student.to(device)
    task = DistillTask(args, config, teacher, t_config.sampler.steps, student, train_eps, eval_eps, tok_dir, device)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup=100, ema=args.ema, checkpoint_every=args.checkpoint_every,
                      seed=args.seed, bf16=train_autocast(device))
    meta = {"kind": "student (consistency distillation)", "teacher": str(args.teacher),
            "teacher_sha256": file_sha(Path(args.teacher) / WEIGHTS),
            "teacher_sampler": dataclasses.asdict(t_config.sampler),
            "teacher_meta": {k: t_meta.get(k) for k in ("kind", "step", "train_wall_s", "hardware")},
            **data_meta, "args": dataclasses.asdict(args), "hardware": hardware(device)}
    return Trainer(student, task, loop, args.out, meta=meta, progress=progress).run()
