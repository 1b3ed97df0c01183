"""The training loop both trainers share: AdamW, warmup + cosine LR, EMA, gradient clipping,
optional bf16 autocast, checkpoints with optimizer state, resume, progress bar, CSV log, PNG curve.

A trainer supplies a ``Task``: ``loss(model, step)`` returns the scalar to minimise (plus extra
numbers to log), ``evaluate(ema)`` returns held-out numbers, ``export(ema, folder)`` writes the
shippable model. The loop owns everything else. Layout of ``out``::

    out/<the exported model files>    written at every checkpoint from the EMA weights
    out/train/state.safetensors       model, EMA, optimizer and task (StatefulTask) tensors (never pickled)
    out/train/state.json              step, optimizer hyperparameters, the loop config
    out/train/log.csv                 one row per logged step (+ eval columns at checkpoints)
    out/train/loss.png                the curves

Every batch is drawn from a generator seeded by (seed, step), so a resumed run draws exactly the
batches the uninterrupted run would have: resume = load state, continue at ``step``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from engine.config import from_dict
from engine.precision import native_bf16

STATE = "state.safetensors"
STATE_JSON = "state.json"
LOG = "log.csv"
PLOT = "loss.png"


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 2000  # optimizer steps in total
    lr: float = 3e-4
    warmup: int = 100  # linear warmup steps, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema: float = 0.999  # EMA decay (warmed up: min(ema, (1 + step) / (10 + step)))
    bf16: bool = True  # autocast the forward in bfloat16 (trainers pass train_autocast(device))
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0
    # A wall-clock budget (0 = none): training stops, evaluates and checkpoints once its wall time
    # (over all resumed sessions) reaches this, and the cosine schedule runs on whichever of
    # steps or time is further along, so a budgeted run still ends at the LR floor.
    max_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps, checkpoint_every and log_every must be >= 1")
        if self.max_seconds < 0:
            raise ValueError("max_seconds must be >= 0 (0: no time budget)")
        if not 0 <= self.ema < 1 or self.lr <= 0:
            raise ValueError("need lr > 0 and 0 <= ema < 1")


class Task(Protocol):
    def loss(self, model: nn.Module, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """One batch drawn with ``generator``: (loss to minimise, extra numbers to log)."""
        ...

    def evaluate(self, ema: nn.Module) -> dict[str, float]:
        """Held-out numbers for the log (called at every checkpoint)."""
        ...

    def export(self, ema: nn.Module, folder: Path, meta: dict[str, Any]) -> None:
        """Write the shippable model (EMA weights) into ``folder``."""
        ...


@runtime_checkable
class StatefulTask(Task, Protocol):
    """A task with its own training state (distillation's target network): updated after each
    optimizer step, saved in the checkpoint and restored on resume."""

    def after_step(self, model: nn.Module) -> None:
        ...

    def state(self) -> dict[str, torch.Tensor]:
        ...

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        ...


def train_autocast(device: torch.device | str) -> bool:
    """Autocast training in bfloat16 only where the hardware multiplies bf16 natively (CUDA; CPUs
    with AVX-512 BF16 or AMX). Elsewhere bf16 is emulated: a tokenizer step (batch 16, 160x120)
    took 24.7-25.0 s in bf16 against 1.8-2.2 s in fp32 on a 2-core Zen 3 with AVX2 only."""
    return native_bf16(str(device))


def lr_at(cfg: LoopConfig, step: int, wall_s: float = 0.0) -> float:
    """Linear warmup, then cosine to the floor over the steps, or over the time budget when
    that is further along (``wall_s``: training time so far)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    if cfg.max_seconds > 0:
        progress = max(progress, min(1.0, wall_s / cfg.max_seconds))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, model: nn.Module, task: Task, cfg: LoopConfig, out: str | Path,
                 meta: dict[str, Any] | None = None, progress: bool = True) -> None:
        self.model, self.task, self.cfg = model, task, cfg
        self.out = Path(out)
        self.dir = self.out / "train"
        self.meta = dict(meta or {})
        self.progress = progress
        self.ema = _copy(model)
        decay, no_decay = [], []
        for p in model.parameters():
            (decay if p.ndim >= 2 else no_decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]))
        self.step = 0
        self.wall_s = 0.0  # training wall time over all sessions (resumed runs add up)

    # ------------------------------------------------------------------ run
    def run(self, stop_after: int | None = None) -> dict[str, float]:
        """Train until ``cfg.steps`` (or ``stop_after`` more steps); resumes from ``out/train``
        if a checkpoint is there. Returns the last evaluation."""
        self.dir.mkdir(parents=True, exist_ok=True)
        resumed = self._resume()
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, self.step + stop_after)
        if self._out_of_time():
            end = self.step  # the time budget is spent already: nothing to do
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="train", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        if resumed:
            bar.write(f"resumed from {self.dir / STATE} at step {self.step}")
        gen = torch.Generator()
        last_eval: dict[str, float] = {}
        window: list[dict[str, float]] = []
        t_log = time.perf_counter()
        while self.step < end:
            t0 = time.perf_counter()
            gen.manual_seed(self.cfg.seed * 1_000_003 + self.step)
            lr = lr_at(self.cfg, self.step, self.wall_s)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.model.train()
            with torch.autocast("cpu" if _device(self.model).type == "cpu" else "cuda",
                                dtype=torch.bfloat16, enabled=self.cfg.bf16):
                loss, extra = self.task.loss(self.model, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower --lr or check the data")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
            self.opt.step()
            self._update_ema()
            if isinstance(self.task, StatefulTask):
                self.task.after_step(self.model)
            self.step += 1
            self.wall_s += time.perf_counter() - t0
            window.append({"loss": float(loss.detach()), "grad_norm": grad_norm, **extra})
            bar.update(1)
            if self._out_of_time() and self.step < end:
                bar.write(f"time budget of {self.cfg.max_seconds:.0f} s reached at step {self.step}")
                end = self.step  # evaluate, checkpoint and stop below
            if self.step % self.cfg.log_every == 0 or self.step == end:
                row = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                now = time.perf_counter()
                row.update(step=self.step, lr=lr, steps_per_s=len(window) / (now - t_log), wall_s=self.wall_s)
                t_log, window = now, []
                if self.step % self.cfg.checkpoint_every == 0 or self.step == end:
                    last_eval = self.task.evaluate(self.ema)
                    row.update({f"eval_{k}": v for k, v in last_eval.items()})
                    self._log(row)
                    self._checkpoint()
                    t_log = time.perf_counter()  # throughput excludes evaluation + checkpoint
                else:
                    self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['steps_per_s']:.2f}")
        bar.close()
        return last_eval

    # ------------------------------------------------------------------ pieces
    def _out_of_time(self) -> bool:
        return self.cfg.max_seconds > 0 and self.wall_s >= self.cfg.max_seconds

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    def _checkpoint(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        if isinstance(self.task, StatefulTask):
            tensors |= {f"task.{k}": v for k, v in self.task.state().items()}
        opt = self.opt.state_dict()
        scalars: dict[str, dict[str, float]] = {}
        for idx, st in opt["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v) and v.ndim > 0:
                    tensors[f"opt.{idx}.{k}"] = v
                else:
                    scalars.setdefault(str(idx), {})[k] = float(v)
        tmp = self.dir / (STATE + ".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        doc = {"step": self.step, "wall_s": self.wall_s, "loop": dataclasses.asdict(self.cfg),
               "param_groups": opt["param_groups"], "opt_scalars": scalars}
        tmp_json = self.dir / (STATE_JSON + ".tmp")
        tmp_json.write_text(json.dumps(doc, indent=1) + "\n")
        # The exported model first, state.json last: a run killed in between resumes from the
        # previous state and redoes those steps, so the export is never older than the state.
        meta = {**self.meta, "step": self.step, "train_wall_s": round(self.wall_s, 1)}
        self.task.export(self.ema, self.out, meta)
        _plot(self.dir / LOG, self.dir / PLOT)
        tmp.replace(self.dir / STATE)
        tmp_json.replace(self.dir / STATE_JSON)  # last: state.json names a complete checkpoint

    def _resume(self) -> bool:
        path = self.dir / STATE_JSON
        if not path.is_file():
            return False
        doc = json.loads(path.read_text())
        saved = from_dict(LoopConfig, doc["loop"], "loop")
        budget = {"steps": self.cfg.steps, "max_seconds": self.cfg.max_seconds}
        if dataclasses.replace(saved, **budget) != dataclasses.replace(self.cfg, **budget):
            raise ValueError(f"{path}: this run was started with other settings ({saved}); "
                             f"use the same ones (only --steps and the time budget may change) or a new --out")
        tensors = load_file(str(self.dir / STATE))
        dev = _device(self.model)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        if isinstance(self.task, StatefulTask):
            self.task.load_state({k[5:]: v.to(dev) for k, v in tensors.items() if k.startswith("task.")})
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v.to(dev)
        for idx, sc in doc["opt_scalars"].items():
            for name, v in sc.items():
                state.setdefault(int(idx), {})[name] = torch.tensor(v)
        self.opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
        self.step, self.wall_s = int(doc["step"]), float(doc.get("wall_s", 0.0))
        _truncate_log(self.dir / LOG, self.step)
        return True

    def _log(self, row: dict[str, float]) -> None:
        path = self.dir / LOG
        rows = _read_log(path)
        fields = list(dict.fromkeys([*(rows[0].keys() if rows else []), *row.keys()]))
        if rows and list(rows[0].keys()) != fields:  # a new column (eval_*): rewrite with it
            _write_log(path, [*rows, {k: str(v) for k, v in row.items()}], fields)
            return
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            if new:
                w.writeheader()
            w.writerow(row)


def hardware(device: torch.device) -> str:
    """What trained a checkpoint, for its metadata."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def _copy(model: nn.Module) -> nn.Module:
    import copy

    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _read_log(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_log(path: Path, rows: list[dict[str, str]], fields: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    rows = _read_log(path)
    if rows:
        keep = [r for r in rows if int(float(r["step"])) <= step]
        _write_log(path, keep, list(rows[0].keys()))


def _plot(log: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_log(log)
    if not rows:
        return
    steps = [float(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [float(r["loss"]) for r in rows], lw=1, alpha=0.8, label="train loss")
    for key in rows[0]:
        if key.startswith("eval_") and "loss" in key:
            pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", ms=3, label=key.replace("_", " "))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
