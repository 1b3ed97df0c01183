"""``worldstream train tokenizer``: the frame <-> latent autoencoder (engine/tokenizer.py).

Objective: MSE between frames and reconstructions in [-1, 1] (what PSNR measures), plus a small
L1 term that keeps edges crisp, and with ``--edge W`` W times the gradient difference (Mathieu et al.
2016: | |d rec| - |d x| | over neighbouring pixels), which makes a soft edge cost where squared error
would settle for the blur. With ``--adv W`` a pixel PatchGAN (train/world_critic.py, hinge loss,
spectral norm) judges the reconstructions against the frames, and the decoder is also trained to
fool it at W times the reconstruction's pull on its last layer (VQGAN's adaptive weight): a
decoder allowed to draw plausible texture the latent does not pin down.

After training, the per-channel latent mean/std over training frames is measured and stored in
the weights, so the exported tokenizer emits unit-scale latents. Held-out PSNR is evaluated on
whole episodes the tokenizer never saw.

``--decoder-only --init DIR`` fine-tunes just the decoder of an existing tokenizer (GameNGen
fine-tuned its decoder on game frames too): the encoder and the latent statistics stay frozen,
so every latent a world model was trained on, and every model using them, stays valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer, to_uint8, to_unit
from eval.metrics import psnr, sharpness
from train.data import episodes, load_frames, split
from train.loop import LoopConfig, Trainer, hardware, train_autocast
from train.world_critic import Critic, CriticTask, adaptive_weight
from train.world_losses import gradient_difference

DECODER = ("dec_in", "dec", "dec_out")  # the Tokenizer's decoder modules


@dataclass(frozen=True)
class TokenizerArgs:
    data: str
    out: str
    steps: int = 3000
    batch: int = 16
    lr: float = 1e-3
    held_out: int = 4  # episodes
    every: int = 3  # use every n-th training frame (neighbours are near duplicates)
    device: str = "cpu"
    latent_channels: int = 8
    seed: int = 0
    checkpoint_every: int = 250
    init: str | None = None  # start from this tokenizer folder
    decoder_only: bool = False  # train the decoder alone (needs --init): latents stay exactly the same
    max_minutes: float = 0.0  # wall-clock budget (0 = none), as train world's
    edge: float = 0.0  # weight of the gradient-difference term (0 = off)
    adv: float = 0.0  # the adversarial term, relative to the reconstruction's pull (0 = no critic)
    critic_lr: float = 2e-4

    def __post_init__(self) -> None:
        if self.every < 1 or self.max_minutes < 0 or self.edge < 0:
            raise ValueError("need --every >= 1, --max-minutes >= 0 (0: no budget) and --edge >= 0")
        if self.adv < 0 or self.critic_lr <= 0:
            raise ValueError("need --adv >= 0 and --critic-lr > 0")
        if self.decoder_only and self.init is None:
            raise ValueError("--decoder-only needs --init DIR (the tokenizer whose decoder to fine-tune)")


class TokenizerTask(CriticTask):
    def __init__(self, train_frames: torch.Tensor, eval_frames: torch.Tensor, batch: int,
                 device: torch.device, keep_stats: bool = False, edge: float = 0.0, adv: float = 0.0,
                 critic_lr: float = 2e-4, seed: int = 0) -> None:
        self.frames = train_frames  # (T, H, W, 3) uint8, CPU
        self.edge, self.adv = edge, adv
        self.init_critic(Critic(3, critic_lr, device, seed, pixels=True) if adv > 0 else None)
        self.eval_frames = eval_frames
        self.batch = batch
        self.device = device
        self.keep_stats = keep_stats  # decoder-only: the latent normalisation must not move

    def loss(self, model: nn.Module, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.randint(len(self.frames), (self.batch,), generator=generator)
        x = to_unit(self.frames[idx].to(self.device))
        rec = model(x).float()
        mse = F.mse_loss(rec, x)
        l1 = F.l1_loss(rec, x)
        mse_v = float(mse.detach())
        loss = mse + 0.1 * l1
        if self.edge > 0:
            loss = loss + self.edge * gradient_difference(rec[:, None], x[:, None]).mean()
        info = {"mse": mse_v, "psnr": 10 * math.log10(4 / max(mse_v, 1e-10))}
        if self.critic is not None:
            adv = self.critic.generator_loss(rec)
            assert isinstance(model, Tokenizer)
            w = adaptive_weight(loss, adv, model, last=model.dec_out[-1].weight)
            loss = loss + self.adv * w * adv
            self._judged = (x.detach(), rec.detach())
            info.update(adv_g=float(adv.detach()), adv_w=float(w), **self._critic_log)
        return loss, info

    @torch.no_grad()
    def evaluate(self, ema: nn.Module) -> dict[str, float]:
        ema.eval()
        scores, sharp_rec, sharp_true = [], [], []
        for i in range(0, len(self.eval_frames), 32):
            truth = self.eval_frames[i:i + 32]
            rec = to_uint8(ema(to_unit(truth.to(self.device)))).cpu()
            scores.append(psnr(rec.numpy(), truth.numpy()))
            sharp_rec.append(sharpness(rec.numpy()))
            sharp_true.append(sharpness(truth.numpy()))
        # the sharpness ratio of eval (eval/metrics.py): the round trip's edges against the truth's
        ratio = np.concatenate(sharp_rec).mean() / max(np.concatenate(sharp_true).mean(), 1e-8)
        return {"psnr": float(np.concatenate(scores).mean()), "sharp": float(ratio)}

    def export(self, ema: nn.Module, folder: Path, meta: dict[str, Any]) -> None:
        assert isinstance(ema, Tokenizer)
        if not self.keep_stats:
            set_latent_stats(ema, self.frames, self.device)
        save_tokenizer(folder, ema, meta)


@torch.no_grad()
def set_latent_stats(net: Tokenizer, frames: torch.Tensor, device: torch.device, n: int = 1024) -> None:
    """Per-channel mean/std of the raw latents of ``n`` evenly spaced frames -> net's buffers."""
    net.eval()
    pick = frames[torch.linspace(0, len(frames) - 1, min(n, len(frames))).long()]
    z = torch.cat([net.encode_raw(to_unit(pick[i:i + 64].to(device))).float() for i in range(0, len(pick), 64)])
    net.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
    net.latent_std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-4))


def train_tokenizer(args: TokenizerArgs, progress: bool = True) -> dict[str, float]:
    device = torch.device(args.device)
    rows = episodes(args.data)
    train_rows, eval_rows = split(rows, args.held_out)
    frames = load_frames(args.data, train_rows, every=args.every, progress=progress)
    eval_frames = load_frames(args.data, eval_rows, every=25, progress=progress)[:512]
    h, w = frames.shape[1:3]
    torch.manual_seed(args.seed)
    if args.init is not None:
        net, init_meta = load_tokenizer(args.init)
        if (net.cfg.height, net.cfg.width) != (int(h), int(w)):
            raise ValueError(f"--init {args.init} makes {net.cfg.width}x{net.cfg.height} frames, the data has {w}x{h}")
        net = net.to(device)
    else:
        cfg = TokenizerConfig(latent_channels=args.latent_channels, height=int(h), width=int(w))
        net, init_meta = Tokenizer(cfg).to(device), {}
    if args.decoder_only:
        for name, param in net.named_parameters():
            param.requires_grad_(name.split(".")[0] in DECODER)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup=100, weight_decay=0.0, ema=0.995,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, bf16=train_autocast(device),
                      max_seconds=60 * args.max_minutes)
    meta = {"data": str(args.data), "train_episodes": len(train_rows), "train_frames": len(frames),
            "held_out_episodes": [r["episode"] for r in eval_rows], "batch": args.batch,
            "hardware": hardware(device)}
    if args.init is not None:
        meta.update(init=args.init, decoder_only=args.decoder_only, init_meta=init_meta)
    meta.update(edge=args.edge, adv=args.adv)
    task = TokenizerTask(frames, eval_frames, args.batch, device, keep_stats=args.decoder_only, edge=args.edge,
                         adv=args.adv, critic_lr=args.critic_lr, seed=args.seed)
    return Trainer(net, task, loop, args.out, meta=meta, progress=progress).run()

