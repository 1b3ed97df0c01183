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

It needs no model. Ground truth is rendered from the suite (ViZDoom), as eval does. With ``--fd``
(default: the bundled model's tokenizer, as eval) it also gives each predictor eval's Fréchet
distance per horizon bucket (eval/fd.py): a score that asks whether the frames look like the
game's frames of that stretch, not whether each one is its own moment. The oracles show true
frames, so their features are the truth's, encoded once per episode.

    python scripts/oracle_lag.py --suite assets/eval/doom-minute.json --out runs/oracle-lag

Writes ``oracle.json`` (per split and horizon) and ``oracle.png`` (PSNR at each horizon against the
lag, with issue #17's target-2 bar at each horizon as a dashed line; with FD, a second row: FD
against the lag, copy-last and the mean frame as dashed lines).
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

from app.eval import _curves, _scores, load_eval_features
from app.eval_summary import HORIZONS_S
from app.predictors import BASELINES
from eval.fd import aggregate_fd, episode_fd_stats
from world.suite import load_suite

ELSEWHERE_MIN_S = 10.0


def oracle_sources(n: int, k: int, horizon: int, fps: float, name: str, rng: np.random.Generator) -> np.ndarray:
    """Which true frame (an index into an episode of ``n`` frames) an oracle shows at each
    t = k .. k + horizon - 1."""
    t = np.arange(k, k + horizon)
    if name.startswith("lag:"):
        return np.maximum(t - round(float(name[4:]) * fps), k - 1)  # started with the context
    if name == "elsewhere":
        gap = round(ELSEWHERE_MIN_S * fps)
        src = []
        for ti in t:
            allowed = np.r_[0 : max(ti - gap, 0), min(ti + gap + 1, n) : n]
            src.append(rng.choice(allowed) if len(allowed) else ti)
        return np.array(src)
    raise ValueError(f"unknown oracle {name!r}")


def constant_aware(features: Any, frames: np.ndarray) -> np.ndarray:
    """``features(frames)``, encoding one frame where all are the same (the baselines)."""
    if np.array_equal(frames, np.broadcast_to(frames[:1], frames.shape)):
        return np.repeat(features(frames[:1]), len(frames), axis=0)
    return features(frames)


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
    p.add_argument("--fd", default="auto", help="Fréchet distance features as eval's --fd: auto (the bundled "
                   "model's tokenizer), a tokenizer folder, or none")
    args = p.parse_args(argv)
    lags = [float(v) for v in args.lags.split(",")]
    if any(v <= 0 for v in lags):
        p.error("--lags must be > 0")
    suite = load_suite(args.suite)
    features, _ = load_eval_features(args.fd)
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
        truth_features = features(truth) if features is not None else None
        for name in names:
            if name in BASELINES:
                pred_model = BASELINES[name]()
                pred_model.reset(args.seed, truth[:k], actions[: k - 1])
                pred = np.stack([pred_model.step(actions[t - 1]) for t in range(k, k + horizon)])
                pred_features = constant_aware(features, pred) if truth_features is not None else None
            else:
                src = oracle_sources(len(truth), k, horizon, fps, name, rng)
                pred = truth[src]
                pred_features = truth_features[src] if truth_features is not None else None
            row = {"episode": ep.name, "split": ep.split, "predictor": name,
                   **score(_curves(pred, target), fps, horizon)}
            if truth_features is not None:
                row["fd_stats"] = episode_fd_stats(pred_features, truth_features[k:], fps, HORIZONS_S)
            rows.append(row)
    out = summarise(rows, names)
    out["suite"] = args.suite
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oracle.json").write_text(json.dumps(out, indent=1))
    plot(out, lags, args.out / "oracle.png")
    for split, table in out["splits"].items():
        print(f"\n{split}: PSNR / sharpness / FD @ " + " / ".join(f"{h}s" for h in HORIZONS_S))
        for name, v in table.items():
            cells = [f"{v.get(f'psnr@{h}s', np.nan):.2f}/{v.get(f'sharp@{h}s', np.nan):.2f}"
                     f"/{v.get(f'fd@{h}s', np.nan):.2f}" for h in HORIZONS_S]
            print(f"  {name:12s} " + "  ".join(cells))


def summarise(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per split ("all" and each split) and predictor: the mean of each per-episode score, and
    the Fréchet distance of the pooled episodes per bucket (``fd@{h}s``) where rows carry it."""
    out: dict[str, Any] = {"predictors": names, "splits": {}}
    for split in ("all", *sorted({r["split"] for r in rows})):
        sel = [r for r in rows if split == "all" or r["split"] == split]
        table: dict[str, dict[str, float]] = {}
        for name in names:
            mine = [r for r in sel if r["predictor"] == name]
            table[name] = {key: float(np.mean([r[key] for r in mine if r.get(key) is not None]))
                           for key in mine[0] if "@" in key}
            if any(r.get("fd_stats") for r in mine):
                for bucket, value in aggregate_fd(mine, resamples=0)["fd"].items():
                    if value is not None:
                        table[name][f"fd{bucket}"] = value
        out["splits"][split] = table
    return out


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
    has_fd = any("fd@1s" in v for v in out["splits"]["all"].values())
    fig, axes = plt.subplots(2 if has_fd else 1, len(splits), figsize=(5 * len(splits), 8 if has_fd else 4),
                             sharey="row", squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(HORIZONS_S)))
    for col, split in enumerate(splits):
        table = out["splits"][split]
        ax = axes[0, col]
        for h, colour in zip(HORIZONS_S, colours, strict=True):
            ys = [table[f"lag:{v:g}"].get(f"psnr@{h}s", np.nan) for v in lags]
            ax.plot(lags, ys, "o-", color=colour, label=f"lagged truth @{h}s")
            ax.axhline(target_bar(table, h), color=colour, ls="--", lw=1)
        ax.set_title(f"{split}\n(dashed: issue #17's target 2 bar at that horizon)", fontsize=10)
        if has_fd:
            ax = axes[1, col]
            for h, colour in zip(HORIZONS_S, colours, strict=True):
                ys = [table[f"lag:{v:g}"].get(f"fd@{h}s", np.nan) for v in lags]
                ax.plot(lags, ys, "o-", color=colour, label=f"lagged truth @{h}s")
            for name, style in (("copy-last", "--"), ("mean-frame", ":")):
                ax.axhline(np.nanmean([table[name].get(f"fd@{h}s", np.nan) for h in HORIZONS_S]),
                           color="grey", ls=style, lw=1.2, label=f"{name} (mean over horizons)")
            ax.set_title(f"{split}: Fréchet distance (tokenizer features), lower = closer", fontsize=10)
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xlabel("lag of a perfect world (s)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("PSNR (dB)")
    axes[0, 0].legend(fontsize=8)
    if has_fd:
        axes[1, 0].set_ylabel("FD")
        axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
