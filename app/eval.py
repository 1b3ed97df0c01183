"""``worldstream eval``: rollouts on an eval suite, scored against ground truth.

``--mode open-loop`` (default): for each episode, render the ground truth, give the predictor the
context frames, feed it the true actions, and score every predicted frame: PSNR, SSIM, the
sharpness ratio (mean image-gradient magnitude of predicted / true frames: < 1 is blur, ~0 a
flat collapse) and the colour-histogram distance (0 = the true frame's colours). The value at
horizon h is the mean over the second that ends h seconds after the last context frame (single
frames are too noisy to compare models by).

``--mode next-frame`` (teacher forced): at ``--starts`` start points spread over each episode, the
predictor gets the true context frames just before t and predicts x_t alone; the same metrics
at "next". Copy-last's next-frame score is what a model must beat before anything else matters.

``--mode round-trip`` (needs ``--model``): the same frames as next-frame, each encoded and decoded by
the model's tokenizer and scored against itself. Not a prediction: the ceiling of every model that
predicts latents, and the way to compare two decoders on the suite.

Outputs in ``--out``:

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
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.eval_summary import HORIZONS_S, METRICS, markdown, plot
from app.predictors import BASELINES, EnginePredictor, Predictor, RoundTrip
from engine.action import Action
from engine.files import read_json_lines
from engine.precision import resolve_dtype, set_threads
from eval.bootstrap import mean_interval
from eval.fd import aggregate_fd, episode_fd_stats
from eval.idm import BUNDLED as BUNDLED_IDM
from eval.idm import InverseDynamics, accuracy, add_confusion, confusion, load_idm
from eval.idm import predict as idm_predict
from eval.metrics import color_hist_distance, psnr, sharpness, ssim
from eval.vde import video_vde
from eval.video_metrics import score_frames
from world.suite import EvalEpisode, episode_row, load_suite

MODES = ("open-loop", "next-frame", "round-trip")
TEACHER_FORCED = ("next-frame", "round-trip")  # scored at "next": one frame per start point


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
    dtype: str = "auto"  # model and decoder: auto (bf16 where native, else fp32) | fp32 | bf16
    int8: str = "off"  # block linears in int8: auto | on | off (engine/precision.py)
    mode: str = "open-loop"  # | "next-frame" (teacher forced, see module doc)
    starts: int = 24  # next-frame: start points per episode
    idm: str = "auto"  # action accuracy: an IDM folder; auto: the bundled one if present; none: off
    workers: int = 1  # local processes scoring episodes in parallel (app/eval_workers.py)
    threads: int | None = None  # torch threads per process (results are identical for equal threads)
    ray_address: str | None = None  # score in Ray actors: a cluster address, or "local"
    fd: str = "auto"  # Fréchet distance features: a tokenizer folder; auto: the bundled model's; none: off

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}")
        if not 1 <= self.starts <= 1000:
            raise ValueError("--starts must be in 1..1000")
        chosen = [x for x in (self.predictor, self.model, self.preset) if x is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of --predictor NAME, --model PATH, --preset NAME")
        if self.mode == "round-trip" and self.model is None:
            raise ValueError("--mode round-trip needs --model (the checkpoint whose tokenizer to score)")
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
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError("--dtype must be auto, fp32 or bf16")
        if not 1 <= self.workers <= 64:
            raise ValueError("--workers must be in 1..64")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be >= 1")


def make_predictor(args: EvalArgs) -> Predictor | RoundTrip:
    if args.mode == "round-trip":
        assert args.model is not None
        return RoundTrip(args.model)
    if args.predictor is not None:
        return BASELINES[args.predictor]()
    from app.engine_spec import EngineSpec

    spec = EngineSpec(model=args.model, preset=str(args.preset), steps=args.steps, sampler=args.sampler,
                      dtype=args.dtype, device=args.device, int8=args.int8)
    sampler = spec.config().sampler
    # The name carries the sampler: a resumed run never mixes rows of different settings.
    tag = f"{sampler.kind}x{sampler.steps}" + ("-bf16" if spec.dtype == "bf16" else "") + (
        "-int8" if spec.int8 == "on" else "")
    what = f"model:{args.model}" if args.model is not None else f"preset:{args.preset}"
    return EnginePredictor(spec.build(), f"{what}:{tag}")


def load_eval_idm(choice: str) -> tuple[InverseDynamics | None, str | None]:
    """(IDM, its name) for --idm: a folder, "auto" (the bundled one if shipped) or "none"."""
    if choice == "none" or (choice == "auto" and not (BUNDLED_IDM / "idm.json").is_file()):
        return None, None
    path = BUNDLED_IDM if choice == "auto" else Path(choice)
    return load_idm(path), str(path.resolve())


def load_eval_features(choice: str) -> tuple[Any, str | None]:
    """(feature extractor, its name) for --fd: a tokenizer folder, "auto" or "none"."""
    from eval.video_metrics import TokenizerFeatures
    from eval.videos import default_tokenizer

    if choice == "none":
        return None, None
    if choice == "auto":
        try:
            choice = default_tokenizer()
        except ValueError:
            return None, None
    return TokenizerFeatures(choice), str(Path(choice).resolve())


def _action_scores(idm: InverseDynamics, truth: np.ndarray, pred: np.ndarray, k: int,
                   actions: list[Action]) -> dict[str, Any]:
    """Per-button confusion of the IDM on the predicted frames (after the last context frame)
    and, the ceiling, on the true frames of the same span."""
    given = np.array([a.to_multi_hot() for a in actions[k - 1 : k - 1 + len(pred)]], dtype=bool)
    return {"idm": confusion(idm_predict(idm, np.concatenate([truth[k - 1 : k], pred])), given),
            "idm_truth": confusion(idm_predict(idm, truth[k - 1 : k + len(pred)]), given)}


def _vde_scores(pred: np.ndarray, latents: np.ndarray | None) -> dict[str, float | None]:
    """VDE (eval/vde.py, 10 chunks, linear weights) of each no-ground-truth metric of the
    predicted video; None where it is infinite (a first chunk at 0)."""
    if len(pred) < 10:
        return {}
    scores = score_frames(pred, (lambda _: latents) if latents is not None else None)
    out: dict[str, float | None] = {}
    for name, per_frame in scores.items():
        value = video_vde(per_frame)
        out[name] = value if np.isfinite(value) else None
    return out


def write_strip(path: Path, truth: np.ndarray, pred: np.ndarray, fps: float) -> None:
    """One picture: the true and the predicted frame at the end of each horizon."""
    from PIL import Image, ImageDraw

    ends = [(h, round(h * fps)) for h in HORIZONS_S if round(h * fps) <= len(pred)]
    if not ends:
        return
    h, w = pred.shape[1:3]
    sheet = Image.new("RGB", (60 + w * len(ends), 14 + 2 * h), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, frames) in enumerate((("true", truth), ("predicted", pred))):
        draw.text((4, 14 + row * h + h // 2 - 5), label, fill="black")
        for col, (sec, end) in enumerate(ends):
            if row == 0:
                draw.text((60 + col * w + 4, 1), f"{sec} s", fill="black")
            sheet.paste(Image.fromarray(frames[end - 1]), (60 + col * w, 14 + row * h))
    sheet.save(path)


def score_episode(ep: EvalEpisode, predictor: Predictor, fps: float, seconds: float | None,
                  seed: int, idm: InverseDynamics | None = None, features: Any = None,
                  strip: Path | None = None) -> dict[str, Any]:
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
    curves = _curves(pred, target)
    row: dict[str, Any] = {**episode_row(ep), "predictor": predictor.name, "status": "ok", "mode": "open-loop",
                           "frames": horizon, "predict_fps": horizon / wall}
    for h in HORIZONS_S:
        start, end = round((h - 1) * fps), round(h * fps)  # predicted frames in (h - 1 s, h s]
        row.update(_scores(curves, slice(start, end), f"@{h}s") if end <= horizon
                   else {f"{m}@{h}s": None for m in METRICS})
    row.update(_scores(curves, slice(None), "_mean"))
    for m in ("psnr", "ssim", "hist"):
        row[f"{m}_curve"] = [round(float(v), 4) for v in curves[m]]
    if idm is not None:
        row.update(_action_scores(idm, truth, pred, k, actions))
    latents = features(pred) if features is not None else None
    if latents is not None:
        row["fd_stats"] = episode_fd_stats(latents, features(target), fps, HORIZONS_S)
    row["vde"] = _vde_scores(pred, latents)
    if strip is not None:
        write_strip(strip, target, pred, fps)
    return row


def _start_points(n: int, k: int, starts: int) -> np.ndarray:
    """The frames t that next-frame and round-trip score: ``starts`` spread evenly over k..n-1."""
    return np.unique(np.linspace(k, n - 1, starts).round().astype(int))


def _start_points_row(ep: EvalEpisode, name: str, mode: str, pred: np.ndarray, target: np.ndarray,
                      wall: float) -> dict[str, Any]:
    """An episode's row for a mode scored at start points (next-frame, round-trip): one frame each."""
    curves = _curves(pred, target)
    return {**episode_row(ep), "predictor": name, "status": "ok", "mode": mode,
            "frames": len(target), "predict_fps": len(target) / wall, **_scores(curves, slice(None), "@next"),
            "psnr_curve": [round(float(v), 4) for v in curves["psnr"]]}


def score_round_trip(ep: EvalEpisode, round_trip: RoundTrip, starts: int) -> dict[str, Any]:
    """The tokenizer's round trip of the frames next-frame mode predicts."""
    truth = ep.render()
    times = _start_points(len(truth), ep.context_frames, starts)
    start = time.perf_counter()
    pred = round_trip.frames(truth[times])
    return _start_points_row(ep, round_trip.name, "round-trip", pred, truth[times], time.perf_counter() - start)


def score_next_frame(ep: EvalEpisode, predictor: Predictor, starts: int, seed: int) -> dict[str, Any]:
    """Teacher forced: from the K true frames before t (and their actions), predict x_t alone,
    at ``starts`` values of t spread evenly over the episode."""
    truth = ep.render()
    k = ep.context_frames
    actions = ep.action_list()  # actions[t - 1] = a_t
    times = _start_points(len(truth), k, starts)
    start = time.perf_counter()
    pred = []
    for t in tqdm(times, desc=ep.name, unit="start", leave=False, file=sys.stderr, disable=None):
        predictor.reset(seed, truth[t - k : t], actions[t - k : t - 1])
        pred.append(predictor.step(actions[t - 1]))
    wall = time.perf_counter() - start
    return _start_points_row(ep, predictor.name, "next-frame", np.stack(pred), truth[times], wall)


def _curves(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame metrics; "sharp_pred"/"sharp_true" are kept apart so that a window's ratio is
    a ratio of means (one flat true frame cannot blow it up)."""
    return {"psnr": psnr(pred, target), "ssim": ssim(pred, target), "hist": color_hist_distance(pred, target),
            "sharp_pred": sharpness(pred), "sharp_true": sharpness(target)}


def _scores(curves: dict[str, np.ndarray], window: slice, suffix: str) -> dict[str, float]:
    out = {f"{m}{suffix}": float(curves[m][window].mean()) for m in ("psnr", "ssim", "hist")}
    true = float(curves["sharp_true"][window].mean())
    out[f"sharp{suffix}"] = float(curves["sharp_pred"][window].mean()) / true if true > 0 else float("nan")
    return out


def score_item(ep: EvalEpisode, predictor: Predictor | RoundTrip, idm: InverseDynamics | None, args: EvalArgs,
               fps: float, features: Any = None, strip: Path | None = None) -> dict[str, Any]:
    """One episode's row; a failure is that episode's row (status "failed"), never a raise."""
    try:
        if isinstance(predictor, RoundTrip):
            return score_round_trip(ep, predictor, args.starts)
        if args.mode == "next-frame":
            return score_next_frame(ep, predictor, args.starts, args.seed)
        return score_episode(ep, predictor, fps, args.seconds, args.seed, idm, features, strip)
    except Exception as e:  # one bad episode must not lose the others
        return {**episode_row(ep), "predictor": predictor.name, "status": "failed",
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}


def run_eval(args: EvalArgs) -> dict[str, Any]:
    suite = load_suite(args.suite)
    if args.predictor is None:
        # "auto" times bf16 against fp32: every worker deciding for itself under load could score
        # some episodes in another format than the rest. Decided once here, for all of them.
        args = replace(args, dtype=resolve_dtype(args.dtype, args.device))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create ({e.strerror or e})") from None
    parallel = args.workers > 1 or args.ray_address is not None
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers) if parallel else set_threads(args.threads)
    predictor = make_predictor(args)
    idm, idm_name = load_eval_idm(args.idm) if args.mode == "open-loop" else (None, None)
    features, fd_name = load_eval_features(args.fd) if args.mode == "open-loop" else (None, None)
    episodes = suite.episodes[: args.episodes] if args.episodes else suite.episodes
    rows_path = out / "episodes.jsonl"
    previous = _read_rows(rows_path, predictor.name, args.seconds, args.mode, idm_name, fd_name)
    done: dict[str, dict[str, Any]] = {ep.name: previous[ep.name] for ep in episodes if ep.name in previous}
    todo = [ep for ep in episodes if ep.name not in done]

    def finished(row: dict[str, Any]) -> None:  # rows are rewritten in suite order as each one ends
        row.update(seconds_limit=args.seconds, idm_model=idm_name, fd_features=fd_name, threads=threads)
        done[row["name"]] = row
        _write_rows(out, [done[ep.name] for ep in episodes if ep.name in done])

    strip = (episodes[0].name, out / "strip.png")  # the first episode also draws the frame strip
    if args.ray_address is not None and todo:
        from app.eval_workers import score_in_ray

        score_in_ray(args, [ep.name for ep in todo], threads, finished, args.ray_address, strip)
    elif args.workers > 1 and todo:
        from app.eval_workers import score_in_workers

        score_in_workers(args, [ep.name for ep in todo], threads, finished, strip)
    else:
        for ep in tqdm(todo, desc="eval", unit="episode", file=sys.stderr, disable=None):
            finished(score_item(ep, predictor, idm, args, suite.fps, features,
                                strip[1] if ep.name == strip[0] else None))
    rows = [done[ep.name] for ep in episodes if ep.name in done]
    _write_rows(out, rows)
    summary = aggregate(rows, args.mode)
    summary.update(suite=suite.name, predictor=predictor.name, out=str(out), mode=args.mode)
    (out / "summary.md").write_text(markdown(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.mode == "open-loop":
        plot(rows, suite.fps, out / "psnr.png", f"{suite.name}: {predictor.name}")
    return summary


def _keys(mode: str) -> list[str]:
    if mode in TEACHER_FORCED:
        return [f"{m}@next" for m in METRICS]
    return [f"{m}@{h}s" for m in METRICS for h in HORIZONS_S] + [f"{m}_mean" for m in METRICS]


def _read_rows(path: Path, predictor: str, seconds: float | None, mode: str,
               idm: str | None = None, fd: str | None = None) -> dict[str, dict[str, Any]]:
    kept = {}
    for row in read_json_lines(path):
        if (row.get("status") == "ok" and row.get("predictor") == predictor and row.get("seconds_limit") == seconds
                and row.get("mode", "open-loop") == mode and row.get("idm_model") == idm
                and row.get("fd_features") == fd):
            kept[row["name"]] = row
    return kept


def _write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    tmp = out / "episodes.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out / "episodes.jsonl")
    mode = rows[0].get("mode", "open-loop") if rows else "open-loop"
    columns = ["name", "split", "map", "seed", "predictor", "status", "mode", "frames", "predict_fps",
               *_keys(mode), "error"]
    with open(out / "episodes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def aggregate(rows: list[dict[str, Any]], mode: str = "open-loop") -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    groups = {"all": ok, **{s: [r for r in ok if r["split"] == s] for s in sorted({r["split"] for r in ok})}}
    table: dict[str, dict[str, float | None]] = {}
    for name, group in groups.items():
        table[name] = {}
        for key in _keys(mode):
            values = [r[key] for r in group if r.get(key) is not None]
            table[name][key] = float(np.mean(values)) if values else None
        table[name]["episodes"] = len(group)
    ci = {key: bootstrap_ci([r[key] for r in ok if r.get(key) is not None]) for key in _keys(mode)}
    out: dict[str, Any] = {"episodes": len(rows), "ok": len(ok),
                           "failed": [r["name"] for r in rows if r["status"] != "ok"], "mean": table, "ci95": ci}
    scored = [r for r in ok if "idm" in r]
    if scored:
        pred: dict[str, list[int]] = {}
        truth: dict[str, list[int]] = {}
        for r in scored:
            add_confusion(pred, r["idm"])
            add_confusion(truth, r["idm_truth"])
        out["action_accuracy"] = {"episodes": len(scored), "predictor": accuracy(pred), "truth": accuracy(truth)}
    if any(r.get("fd_stats") for r in ok):
        out["frechet"] = aggregate_fd(ok)
    names = sorted({n for r in ok for n in r.get("vde", {})})
    if names:
        values = {n: [r["vde"][n] for r in ok if r.get("vde", {}).get(n) is not None] for n in names}
        out["vde"] = {n: {"mean": float(np.mean(v)) if v else None, "ci95": bootstrap_ci(v), "episodes": len(v)}
                      for n, v in values.items()}
    return out


BOOTSTRAP = 1000


def bootstrap_ci(values: list[float], seed: int = 0) -> list[float] | None:
    """95% interval of the mean over episodes: percentiles of 1000 resamples (with replacement)."""
    if len(values) < 2:
        return None
    lo, hi = mean_interval(np.asarray(values), BOOTSTRAP, seed)
    return [float(lo), float(hi)]
