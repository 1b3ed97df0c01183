"""``worldstream eval``: open-loop rollouts on an eval suite, scored against ground truth.

For each episode: render the ground truth, give the predictor the context frames, feed it the
true actions, and score every predicted frame (PSNR, SSIM). The value at horizon h is the mean
over the second that ends h seconds after the last context frame (single frames are too noisy
to compare models by). Outputs in ``--out``:

    episodes.jsonl   one row per episode, with the full per-frame curves (resumable: episodes
                     already scored by the same predictor are skipped on a rerun)
    episodes.csv     the same rows without curves
    summary.md       mean over scored episodes per horizon, overall and per split
    psnr.png         PSNR over time, every episode and the mean

One failing episode is recorded with its error and the others go on.
"""

from __future__ import annotations

import csv
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.predictors import BASELINES, EnginePredictor, Predictor
from engine.world.metrics import psnr, ssim
from engine.world.suite import EvalEpisode, episode_row, load_suite

HORIZONS_S = (1, 5, 10, 30, 60)
METRICS = ("psnr", "ssim")


@dataclass(frozen=True)
class EvalArgs:
    suite: str
    out: str
    predictor: str | None = None  # a baseline name
    model: str | None = None  # a checkpoint folder
    preset: str | None = None  # random weights of a preset (plumbing checks, not quality)
    episodes: int | None = None  # first N episodes
    seconds: float | None = None  # score only the first S seconds after the context
    seed: int = 0
    device: str = "cpu"
    steps: int | None = None  # override the model's sampling steps
    sampler: str | None = None  # override the model's sampler kind (euler | consistency)
    dtype: str = "fp32"  # model weights: fp32 | bf16

    def __post_init__(self) -> None:
        chosen = [x for x in (self.predictor, self.model, self.preset) if x is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of --predictor NAME, --model PATH, --preset NAME")
        if self.predictor is not None and self.predictor not in BASELINES:
            raise ValueError(f"--predictor must be one of {sorted(BASELINES)}")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError("--episodes must be >= 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("--seconds must be > 0")
        if self.predictor is not None and (self.steps, self.sampler) != (None, None):
            raise ValueError("--steps/--sampler apply to --model or --preset, not to a baseline")
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise ValueError("--steps must be in 1..1000")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError("--dtype must be fp32 or bf16")


def make_predictor(args: EvalArgs) -> Predictor:
    if args.predictor is not None:
        return BASELINES[args.predictor]()
    from app.engine_spec import EngineSpec

    spec = EngineSpec(model=args.model, preset=str(args.preset), steps=args.steps, sampler=args.sampler,
                      dtype=args.dtype, device=args.device)
    sampler = spec.config().sampler
    # The name carries the sampler: a resumed run never mixes rows of different settings.
    tag = f"{sampler.kind}x{sampler.steps}" + ("-bf16" if args.dtype == "bf16" else "")
    what = f"model:{args.model}" if args.model is not None else f"preset:{args.preset}"
    return EnginePredictor(spec.build(), f"{what}:{tag}")


def score_episode(ep: EvalEpisode, predictor: Predictor, fps: float, seconds: float | None,
                  seed: int) -> dict[str, Any]:
    truth = ep.render()
    k = ep.context_frames
    horizon = len(truth) - k if seconds is None else min(len(truth) - k, round(seconds * fps))
    actions = ep.action_list()  # actions[t - 1] = a_t
    start = time.perf_counter()
    predictor.reset(seed, truth[:k], actions[: k - 1])
    steps = tqdm(range(k, k + horizon), desc=ep.name, unit="frame", leave=False, file=sys.stderr, disable=None)
    pred = np.stack([predictor.step(actions[t - 1]) for t in steps])
    wall = time.perf_counter() - start
    target = truth[k : k + horizon]
    curves = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
    row: dict[str, Any] = {**episode_row(ep), "predictor": predictor.name, "status": "ok",
                           "frames": horizon, "predict_fps": horizon / wall}
    for h in HORIZONS_S:
        start, end = round((h - 1) * fps), round(h * fps)  # predicted frames in (h - 1 s, h s]
        for m in METRICS:
            row[f"{m}@{h}s"] = float(curves[m][start:end].mean()) if end <= horizon else None
    for m in METRICS:
        row[f"{m}_mean"] = float(curves[m].mean())
        row[f"{m}_curve"] = [round(float(v), 4) for v in curves[m]]
    return row


def run_eval(args: EvalArgs) -> dict[str, Any]:
    suite = load_suite(args.suite)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create ({e.strerror or e})") from None
    predictor = make_predictor(args)
    episodes = suite.episodes[: args.episodes] if args.episodes else suite.episodes
    rows_path = out / "episodes.jsonl"
    previous = _read_rows(rows_path, predictor.name, args.seconds)
    rows = []
    for ep in tqdm(episodes, desc="eval", unit="episode", file=sys.stderr, disable=None):
        if ep.name in previous:
            rows.append(previous[ep.name])
            continue
        try:
            row = score_episode(ep, predictor, suite.fps, args.seconds, args.seed)
        except Exception as e:  # one bad episode must not lose the others
            row = {**episode_row(ep), "predictor": predictor.name, "status": "failed",
                   "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
        row["seconds_limit"] = args.seconds
        rows.append(row)
        _write_rows(out, rows)
    _write_rows(out, rows)
    summary = aggregate(rows)
    summary.update(suite=suite.name, predictor=predictor.name, out=str(out))
    (out / "summary.md").write_text(markdown(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, suite.fps, out / "psnr.png", f"{suite.name}: {predictor.name}")
    return summary


def _read_rows(path: Path, predictor: str, seconds: float | None) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    kept = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("status") == "ok" and row.get("predictor") == predictor and row.get("seconds_limit") == seconds:
            kept[row["name"]] = row
    return kept


def _write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    tmp = out / "episodes.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out / "episodes.jsonl")
    columns = ["name", "split", "map", "seed", "predictor", "status", "frames", "predict_fps",
               *[f"{m}@{h}s" for m in METRICS for h in HORIZONS_S], "psnr_mean", "ssim_mean", "error"]
    with open(out / "episodes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    groups = {"all": ok, **{s: [r for r in ok if r["split"] == s] for s in sorted({r["split"] for r in ok})}}
    table: dict[str, dict[str, float | None]] = {}
    for name, group in groups.items():
        table[name] = {}
        for key in [f"{m}@{h}s" for m in METRICS for h in HORIZONS_S] + ["psnr_mean", "ssim_mean"]:
            values = [r[key] for r in group if r.get(key) is not None]
            table[name][key] = float(np.mean(values)) if values else None
        table[name]["episodes"] = len(group)
    return {"episodes": len(rows), "ok": len(ok), "failed": [r["name"] for r in rows if r["status"] != "ok"],
            "mean": table}


def markdown(summary: dict[str, Any]) -> str:
    head = ["split", "episodes", *[f"PSNR@{h}s" for h in HORIZONS_S], *[f"SSIM@{h}s" for h in HORIZONS_S]]
    lines = [f"# {summary['suite']}: {summary['predictor']}", "",
             f"{summary['ok']} of {summary['episodes']} episodes scored; failed: {summary['failed'] or 'none'}.",
             "Mean over episodes of each episode's mean over the second ending h seconds after the "
             "last context frame (PSNR in dB).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split, values in summary["mean"].items():
        cells = [split, str(values["episodes"])]
        for m in METRICS:
            for h in HORIZONS_S:
                v = values[f"{m}@{h}s"]
                cells.append("-" if v is None else f"{v:.2f}" if m == "psnr" else f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], fps: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for r in ok:
        t = (np.arange(len(r["psnr_curve"])) + 1) / fps
        ax.plot(t, r["psnr_curve"], lw=0.8, alpha=0.5, label=r["name"])
    if ok:
        n = min(len(r["psnr_curve"]) for r in ok)
        mean = np.mean([r["psnr_curve"][:n] for r in ok], axis=0)
        ax.plot((np.arange(n) + 1) / fps, mean, color="black", lw=2, label="mean")
    ax.set(xlabel="seconds after the context", ylabel="PSNR (dB)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
