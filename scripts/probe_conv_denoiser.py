"""Probe: does a DIAMOND-style convolutional *denoiser* hold a rollout open loop, where our token
DiTs fade to a brown field within a second? A measurement for the next GPU run's architecture
(issue #17), not a model to ship.

The network is scripts/probe_conv_predictor.py's U-Net with the noisy next latent stacked on
the channels next to the last 4 latents, EDM preconditioning (c_skip/c_out: at low noise the
output is its input) and three conditions through FiLM: the action, the noise level, and the
context's augmentation level. Context augmentation follows GameNGen: each sample's context gets
Gaussian noise at a level drawn uniformly up to ``--ctx-max`` (0.7), the level given to the
network; at inference the level is ``--ctx-level`` (0). Sampling: Euler on the EDM (Karras)
schedule, sigma 5 -> 0.002; 1 step is the conditional mean (what our 1-step students make), 3 is
a sample (DIAMOND's setting).

Open loop on the held-out episodes of the data: from 4 true latents, roll out ``--seconds`` with
the true actions, decode with the tokenizer and score against the decoded true latents (so the
tokenizer's own error is not counted): PSNR and the sharpness ratio (predicted / true mean
image gradient; eval's ``sharpness``) at +1 frame, 1 s, 5 s, 10 s, with copy-last on the same
starts. Writes a JSON and a strip picture (rows: truth, copy-last, 1 step, 3 steps).

    python scripts/probe_conv_denoiser.py --data /work/data/doom64 --tokenizer assets/models/doom-small-teacher \\
        --minutes 40 --out runs/probe-denoiser/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.tokenizer import TokenizerDecoder, load_tokenizer
from eval.metrics import psnr, sharpness
from scripts.probe_conv_predictor import STACK, UNet, pick
from train.data import ClipBank, load_latent_data

FPS = 17.5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 5.0, 7.0


def embed(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) scalars -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = x.float()[:, None] * freqs[None] * 100
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class Denoiser(UNet):
    """The predictor's U-Net reading the noisy next latent beside the stack, EDM-preconditioned,
    conditioned on the action, the noise level and the context level."""

    def __init__(self, latent: int = 8, actions: int = 8, ch: int = 96, sigma_data: float = 1.0) -> None:
        super().__init__(latent, actions, ch, inputs=STACK + 1)
        cond = self.COND
        self.sigma_data = sigma_data
        self.noise = nn.Sequential(nn.Linear(64, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.ctx = nn.Sequential(nn.Linear(64, cond), nn.SiLU(), nn.Linear(cond, cond))

    def precond(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd = self.sigma_data
        s = sigma[:, None, None, None]
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        return c_skip, c_out, c_in

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, stack: torch.Tensor, action: torch.Tensor,
                ctx_level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(denoised D(x), raw output F); x (B, C, h, w) at noise ``sigma`` (B,)."""
        c_skip, c_out, c_in = self.precond(sigma)
        c = self.act(action) + self.noise(embed(sigma.log() / 4, 64)) + self.ctx(embed(ctx_level, 64))
        raw = self.trunk(torch.cat([stack.flatten(1, 2), c_in * x], dim=1), c)
        return c_skip * x + c_out * raw, raw


def sigmas(steps: int) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps)
    s = (SIGMA_MAX ** (1 / RHO) + ramp * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    return torch.cat([s, torch.zeros(1)])


@torch.no_grad()
def sample(net: Denoiser, stack: torch.Tensor, action: torch.Tensor, steps: int, ctx_level: float,
           g: torch.Generator) -> torch.Tensor:
    b = stack.shape[0]
    sig = sigmas(steps)
    x = torch.randn(stack[:, -1].shape, generator=g) * sig[0]
    lvl = torch.full((b,), ctx_level)
    for i in range(steps):
        d, _ = net(x, sig[i].expand(b), stack, action, lvl)
        x = d if sig[i + 1] == 0 else x + (x - d) / sig[i] * (sig[i + 1] - sig[i])
    return x


def train(net: Denoiser, bank: ClipBank, args: argparse.Namespace, log: list) -> int:
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    start, step = time.time(), 0
    while time.time() - start < args.minutes * 60:
        _, rows = pick(bank, args.batch, g)
        lat = bank.latents[rows].float()  # (B, STACK + 1, C, h, w)
        ctx_level = torch.rand(args.batch, generator=g) * args.ctx_max
        stack = lat[:, :-1] + ctx_level[:, None, None, None, None] * torch.randn(lat[:, :-1].shape, generator=g)
        x0 = lat[:, -1]
        sigma = (torch.randn(args.batch, generator=g) * 1.2 - 0.4).exp()  # EDM's training levels
        x = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g)
        c_skip, c_out, _ = net.precond(sigma)
        _, raw = net(x, sigma, stack, bank.actions[rows[:, -1]].float(), ctx_level)
        loss = (raw - (x0 - c_skip * x) / c_out).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log.append((step, round(float(loss), 4), round(time.time() - start)))
            print(f"step {step} loss {float(loss):.4f} ({time.time() - start:.0f} s)", flush=True)
    return step


def rollouts(net: Denoiser, bank: ClipBank, frames: int, starts_per_episode: int, steps: int, ctx_level: float,
             copy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) latents (R, frames, C, h, w) of open-loop rollouts with the true actions."""
    rows = []
    for e in range(len(bank)):
        n = int(bank.lengths[e])
        for j in range(starts_per_episode):
            t0 = STACK + j * (n - STACK - frames) // max(1, starts_per_episode)
            rows.append(int(bank.offsets[e]) + t0)
    first = torch.tensor(rows)
    lat, act = bank.latents.float(), bank.actions.float()
    stack = torch.stack([lat[r - STACK : r] for r in rows])
    truth = torch.stack([lat[r : r + frames] for r in rows])
    g = torch.Generator().manual_seed(7)
    out = []
    for t in range(frames):
        nxt = stack[:, -1] if copy else sample(net, stack, act[first + t], steps, ctx_level, g)
        out.append(nxt)
        stack = torch.cat([stack[:, 1:], nxt[:, None]], dim=1)
    return torch.stack(out, dim=1), truth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--minutes", type=float, default=40)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ctx-max", type=float, default=0.7, help="context augmentation levels drawn up to this")
    p.add_argument("--ctx-level", type=float, default=0.0, help="context level at inference")
    p.add_argument("--seconds", type=float, default=10.0, help="open-loop length")
    p.add_argument("--starts", type=int, default=2, help="rollout starts per held-out episode")
    p.add_argument("--init", type=Path, default=None, help="resume from OUT/denoiser.pt of an earlier run")
    p.add_argument("--out", type=Path, required=True, help="folder: result.json, strip.png, denoiser.pt")
    args = p.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    train_eps, held_eps, _ = load_latent_data(args.data, Path(args.tokenizer), 4, cpu, progress=False)
    frames = round(args.seconds * FPS)
    bank, held = ClipBank(train_eps, STACK + 1, cpu), ClipBank(held_eps, STACK + frames, cpu)
    sd = float(bank.latents.float().std())
    net = Denoiser(sigma_data=sd)
    if args.init is not None:
        net.load_state_dict(torch.load(args.init, weights_only=True))
    log: list = []
    t0 = time.time()
    steps = train(net, bank, args, log)
    train_s = time.time() - t0
    net.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out / "denoiser.pt")  # tensors only: weights_only loads it
    tok, _ = load_tokenizer(Path(args.tokenizer))
    dec = TokenizerDecoder(tok, device=cpu, dtype=torch.float32)
    marks = {k: t for k, t in {"+1 frame": 0, "1 s": int(FPS) - 1, "5 s": int(5 * FPS) - 1,
                               f"{args.seconds:g} s": frames - 1}.items() if t < frames}
    runs = {"copy-last": rollouts(net, held, frames, args.starts, 0, 0.0, copy=True)}
    for n in (1, 3):
        t1 = time.time()
        runs[f"{n} step(s)"] = rollouts(net, held, frames, args.starts, n, args.ctx_level)
        print(f"{n}-step rollouts: {time.time() - t1:.0f} s", flush=True)
    result: dict = {"params": sum(q.numel() for q in net.parameters()), "steps": steps,
                    "samples": steps * args.batch, "train_s": round(train_s), "sigma_data": sd,
                    "ctx_max": args.ctx_max, "ctx_level": args.ctx_level, "rollouts": 0, "metrics": {}, "log": log}
    strip_rows = []
    for name, (pred, truth) in runs.items():
        result["rollouts"] = pred.shape[0]
        m: dict = {}
        for label, t in marks.items():
            rp, rt = dec.decode(pred[:, t]).numpy(), dec.decode(truth[:, t]).numpy()
            m[label] = {"psnr": round(float(np.mean(psnr(rp, rt))), 2),
                        "sharpness_ratio": round(float(np.mean(sharpness(rp)) / np.mean(sharpness(rt))), 3)}
            if name == "copy-last":
                strip_rows.append(("truth", label, rt[0]))
            strip_rows.append((name, label, rp[0]))
        result["metrics"][name] = m
        print(name, json.dumps(m), flush=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    names = ["truth", *runs]
    cols = list(marks)
    h, w = strip_rows[0][2].shape[:2]
    img = np.zeros((len(names) * h, len(cols) * w, 3), np.uint8)
    for name, label, rgb in strip_rows:
        r, c = names.index(name), cols.index(label)
        img[r * h : (r + 1) * h, c * w : (c + 1) * w] = rgb
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(args.out / "strip.png")


if __name__ == "__main__":
    main()
