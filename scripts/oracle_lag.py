"""How exact must a sharp world be to beat the mean frame? Oracle predictors on an eval suite.

A perfect world model that runs late by a lag d shows, at time t, the true frame of t - d: a real
Doom frame, as sharp and as coloured as the truth, only not of the right moment. This script scores
such oracles open loop exactly as ``worldstream eval`` scores a model (the same horizons, windows
and metrics), next to the mean frame and copy-last:

- ``lag:d``      the true frame at t - d (d in seconds), never older than the last context frame:
                 a perfect world that started with the context and runs d late (copy-last while
                 t - d is still inside the context).
- ``elsewhere``  a true frame of the same episode at least 10 s away from t (fixed random draw):
                 the right map, the wrong place.
- ``copy-last``, ``mean-frame``  the suite's baselines (app/predictors.py).

It needs no model. Ground truth is rendered from the suite (ViZDoom), as eval does.

    python scripts/oracle_lag.py --suite assets/eval/doom-minute.json --out runs/oracle-lag

Writes ``oracle.json`` (per split and horizon) and ``oracle.png`` (PSNR at each horizon against the
lag, with issue #17's target-2 bar at each horizon as a dashed line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.eval import _curves, _scores
from app.eval_summary import HORIZONS_S
from app.predictors import BASELINES
from world.suite import load_suite

ELSEWHERE_MIN_S = 10.0


def oracle_frames(truth: np.ndarray, k: int, horizon: int, fps: float, name: str,
                  rng: np.random.Generator) -> np.ndarray:
    """The frames an oracle shows for t = k .. k + horizon - 1."""
    t = np.arange(k, k + horizon)
    if name.startswith("lag:"):
        return truth[np.maximum(t - round(float(name[4:]) * fps), k - 1)]  # started with the context
    if name == "elsewhere":
        gap = round(ELSEWHERE_MIN_S * fps)
        src = []
        for ti in t:
            allowed = np.r_[0 : max(ti - gap, 0), min(ti + gap + 1, len(truth)) : len(truth)]
            src.append(rng.choice(allowed) if len(allowed) else ti)
        return truth[np.array(src)]
    raise ValueError(f"unknown oracle {name!r}")


def score(curves: dict[str, np.ndarray], fps: float, horizon: int) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    for h in HORIZONS_S:
        start, end = round((h - 1) * fps), round(h * fps)
        if end <= horizon:
            row.update(_scores(curves, slice(start, end), f"@{h}s"))
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="assets/eval/doom-minute.json")
    p.add_argument("--lags", default="0.057,0.25,0.5,1,2,5", help="seconds, comma separated")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lags = [float(v) for v in args.lags.split(",")]
    if any(v <= 0 for v in lags):
        p.error("--lags must be > 0")
    suite = load_suite(args.suite)
    fps = float(suite.fps)
    oracles = [f"lag:{v:g}" for v in lags] + ["elsewhere"]
    names = ["copy-last", "mean-frame", *oracles]
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(args.seed)
    for ep in tqdm(suite.episodes, desc="episodes", unit="ep"):
        truth = ep.render()
        k = ep.context_frames
        horizon = len(truth) - k
        target = truth[k:]
        actions = ep.action_list()
        for name in names:
            if name in BASELINES:
                pred_model = BASELINES[name]()
                pred_model.reset(args.seed, truth[:k], actions[: k - 1])
                pred = np.stack([pred_model.step(actions[t - 1]) for t in range(k, k + horizon)])
            else:
                pred = oracle_frames(truth, k, horizon, fps, name, rng)
            row = {"episode": ep.name, "split": ep.split, "predictor": name,
                   **score(_curves(pred, target), fps, horizon)}
            rows.append(row)
    out: dict[str, Any] = {"suite": args.suite, "predictors": names, "splits": {}}
    for split in ("all", *sorted({r["split"] for r in rows})):
        sel = [r for r in rows if split == "all" or r["split"] == split]
        out["splits"][split] = {
            name: {key: float(np.mean([r[key] for r in sel if r["predictor"] == name and r.get(key) is not None]))
                   for key in sel[0] if "@" in key}
            for name in names}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oracle.json").write_text(json.dumps(out, indent=1))
    plot(out, lags, args.out / "oracle.png")
    for split, table in out["splits"].items():
        print(f"\n{split}: PSNR / sharpness @ " + " / ".join(f"{h}s" for h in HORIZONS_S))
        for name, v in table.items():
            cells = [f"{v.get(f'psnr@{h}s', np.nan):.2f}/{v.get(f'sharp@{h}s', np.nan):.2f}" for h in HORIZONS_S]
            print(f"  {name:12s} " + "  ".join(cells))


def target_bar(table: dict[str, dict[str, float]], h: int) -> float:
    """Issue #17's target 2: copy-last + 1 dB at 1, 5 and 10 s; the mean frame at 30 and 60 s."""
    if h <= 10:
        return table["copy-last"].get(f"psnr@{h}s", np.nan) + 1.0
    return table["mean-frame"].get(f"psnr@{h}s", np.nan)


def plot(out: dict[str, Any], lags: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(out["splits"])
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), sharey=True)
    for ax, split in zip(np.atleast_1d(axes), splits, strict=True):
        table = out["splits"][split]
        for h, colour in zip(HORIZONS_S, plt.cm.viridis(np.linspace(0, 0.9, len(HORIZONS_S))), strict=True):
            ys = [table[f"lag:{v:g}"].get(f"psnr@{h}s", np.nan) for v in lags]
            ax.plot(lags, ys, "o-", color=colour, label=f"lagged truth @{h}s")
            ax.axhline(target_bar(table, h), color=colour, ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("lag of a perfect world (s)")
        ax.set_title(f"{split}\n(dashed: issue #17's target 2 bar at that horizon)", fontsize=10)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("PSNR (dB)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
