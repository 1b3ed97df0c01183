"""Probe: does a small convolutional next-latent predictor (DIAMOND-style frame stacking) move
texture better than our token DiT? A measurement for choosing the next GPU run's architecture,
not a model to ship.

A U-Net reads the last 4 latents (stacked on channels, written at the engine's context noise
level) and the action, and predicts the next latent as the last one plus a change (zero-init
head: it starts as copy-last), trained with the squared error of that change, like the copy
prior's 1-step prediction from sigma 1. Reported on held-out episodes of the same data: latent
MSE against copy-last's, and, decoded by the tokenizer, PSNR and the sharpness ratio that
`worldstream eval --mode next-frame` reports (the GPU copy-prior DiT: 0.30; copy-last 0.99).

    python scripts/probe_conv_predictor.py --data /work/data/doom64 --tokenizer assets/models/doom-small-teacher \\
        --minutes 20 --out runs/probe-conv.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.tokenizer import TokenizerDecoder, load_tokenizer
from eval.metrics import psnr, sharpness
from train.data import ClipBank, load_latent_data

STACK = 4
CONTEXT_SIGMA = 0.1


class Block(nn.Module):
    def __init__(self, ch: int, cond: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(cond, 2 * ch)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = self.c1(F.silu(self.n1(x)))
        h = self.n2(h) * (1 + scale) + shift
        return x + self.c2(F.silu(h))


class UNet(nn.Module):
    COND = 128  # width of the FiLM condition

    def __init__(self, latent: int = 8, actions: int = 8, ch: int = 96, inputs: int = STACK) -> None:
        super().__init__()
        cond = self.COND
        self.act = nn.Sequential(nn.Linear(actions, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.inp = nn.Conv2d(latent * inputs, ch, 3, padding=1)
        self.down1 = nn.ModuleList([Block(ch, cond), Block(ch, cond)])
        self.pool = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([Block(2 * ch, cond), Block(2 * ch, cond), Block(2 * ch, cond)])
        self.up = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.up1 = nn.ModuleList([Block(ch, cond), Block(ch, cond)])
        self.out = nn.Conv2d(ch, latent, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def trunk(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B, inputs * C, h, w) latents stacked on channels, (B, COND) -> (B, C, h, w)."""
        h, w = x.shape[-2:]
        x = self.inp(x)
        for blk in self.down1:
            x = blk(x, cond)
        skip = x
        x = self.pool(x)
        for blk in self.mid:
            x = blk(x, cond)
        x = self.up(F.interpolate(x, size=(h, w), mode="nearest")) + skip
        for blk in self.up1:
            x = blk(x, cond)
        return self.out(F.silu(x))

    def forward(self, stack: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """stack (B, STACK, C, h, w) oldest first, action (B, A) -> next latent (B, C, h, w)."""
        return stack[:, -1] + self.trunk(stack.flatten(1, 2), self.act(action))


def pick(bank: ClipBank, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(episode (n,), rows (n, STACK + 1)): the last STACK + 1 frames up to a random target row."""
    e = torch.multinomial(bank.weights, n, replacement=True, generator=g)
    t = STACK + (torch.rand(n, generator=g) * (bank.lengths[e] - STACK)).long()
    return e, bank.offsets[e, None] + t[:, None] + torch.arange(-STACK, 1)[None]


def batch(bank: ClipBank, n: int,
          g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(stack (n, STACK, C, h, w) at the context level, action of the next frame (n, A), next
    latent, clean last latent (copy-last))."""
    _, rows = pick(bank, n, g)
    lat = bank.latents[rows].float()
    stack = (1 - CONTEXT_SIGMA) * lat[:, :-1] + CONTEXT_SIGMA * torch.randn(lat[:, :-1].shape, generator=g)
    return stack, bank.actions[rows[:, -1]].float(), lat[:, -1], lat[:, -2]


def dit_predictions(model: str, bank: ClipBank, picked: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A checkpoint's 1-step prediction of each sample's next latent from the true latents before
    it (as many as its window holds, within the episode), through the engine."""
    from app.engine_spec import EngineSpec
    from engine.action import Action

    engine = EngineSpec(model=model, preset="small", steps=1, dtype="fp32", device="cpu").build()
    window = engine.config.model.window_frames + engine.config.model.sink_frames
    e, rows = picked
    out = []
    for i in range(len(e)):
        first = int(bank.offsets[e[i]])
        end = int(rows[i, -1])  # the target row
        start = max(first, end - window)
        ctx = bank.latents[start:end].float()
        acts = [Action.from_multi_hot(a.int().tolist()) for a in bank.actions[start + 1:end + 1]]
        engine.reset(0, context=ctx, context_actions=acts[:-1])
        out.append(engine.step(acts[-1]).latent.reshape(ctx.shape[1:]))
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compare", default=None, metavar="MODEL",
                   help="also score this checkpoint's 1-step prediction on the same held-out samples")
    args = p.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    train_eps, held_eps, _ = load_latent_data(args.data, Path(args.tokenizer), 4, cpu, progress=False)
    train, held = ClipBank(train_eps, STACK + 1, cpu), ClipBank(held_eps, STACK + 1, cpu)
    net = UNet()
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    start, step, log = time.time(), 0, []
    while time.time() - start < args.minutes * 60:
        stack, action, target, _ = batch(train, args.batch, g)
        loss = (net(stack, action) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log.append((step, float(loss)))
            print(f"step {step} loss {float(loss):.4f} ({time.time() - start:.0f} s)", flush=True)
    net.eval()
    gh = torch.Generator().manual_seed(1234)
    stack, action, target, copy = batch(held, 256, gh)
    with torch.no_grad():
        pred = torch.cat([net(stack[i:i + 64], action[i:i + 64]) for i in range(0, 256, 64)])
    tok, _ = load_tokenizer(Path(args.tokenizer))
    dec = TokenizerDecoder(tok, device=cpu, dtype=torch.float32)
    lat = {"pred": pred, "truth": target, "copy": copy}
    if args.compare:
        held_rows = pick(held, 256, torch.Generator().manual_seed(1234))  # the samples batch() drew above
        lat["compare"] = dit_predictions(args.compare, held, held_rows)
    rgb = {k: dec.decode(v).numpy() for k, v in lat.items()}
    result = {
        "params": params, "steps": step, "clips_seen": step * args.batch, "minutes": args.minutes,
        "latent_mse": float((pred - target).pow(2).mean()), "latent_mse_copy": float((copy - target).pow(2).mean()),
        "psnr_vs_tokenizer_truth": float(np.mean(psnr(rgb["pred"], rgb["truth"]))),
        "psnr_copy_vs_tokenizer_truth": float(np.mean(psnr(rgb["copy"], rgb["truth"]))),
        "sharpness_ratio": float(np.mean(sharpness(rgb["pred"])) / np.mean(sharpness(rgb["truth"]))),
        "sharpness_ratio_copy": float(np.mean(sharpness(rgb["copy"])) / np.mean(sharpness(rgb["truth"]))),
        "log": log,
    }
    if args.compare:
        result |= {"compare": args.compare, "compare_latent_mse": float((lat["compare"] - target).pow(2).mean()),
                   "compare_psnr_vs_tokenizer_truth": float(np.mean(psnr(rgb["compare"], rgb["truth"]))),
                   "compare_sharpness_ratio": float(np.mean(sharpness(rgb["compare"]))
                                                    / np.mean(sharpness(rgb["truth"])))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
