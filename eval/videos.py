"""``worldstream eval-videos DIR``: score any folder of MP4s (this model's recordings, another
model's outputs, as LV-Bench is used) with the metrics that need no ground truth.

Each video's result is one JSON line, appended and flushed when that video is done: a crash
loses nothing, a video that cannot be read is a line with ``"ok": false`` and its error (the
others go on), and a re-run skips the videos already scored (failed ones are tried again).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from engine.files import read_json_lines
from eval.vde import WEIGHTS, chunk_means, vde
from eval.video_metrics import Features, score_frames

MAX_FRAMES = 20_000  # ~19 minutes at 17.5 FPS: a longer file is cut there (and says so)


@dataclass(frozen=True)
class VideoArgs:
    folder: str
    out: str | None = None  # JSON lines (default: FOLDER/eval-videos.jsonl)
    chunks: int = 10
    weights: str = "linear"
    tokenizer: str | None = None  # folder with a tokenizer for the consistency features; None: bundled
    no_features: bool = False  # skip the consistency metrics (no tokenizer needed)
    size: str = "160x120"  # analysis size WxH every video is resized to (area); "native": as stored

    def __post_init__(self) -> None:
        analysis_size(self.size)
        if self.chunks < 2:
            raise ValueError("--chunks must be >= 2")
        if self.weights not in WEIGHTS:
            raise ValueError(f"--weights must be one of {WEIGHTS}")


def analysis_size(text: str) -> tuple[int, int] | None:
    """"WxH" -> (W, H); "native" -> None."""
    if text == "native":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be WxH (e.g. 160x120) or native, got {text!r}") from None
    if not (8 <= w <= 4096 and 8 <= h <= 4096):
        raise ValueError(f"--size {text}: width and height must be in 8..4096")
    return w, h


def read_video(path: Path, size: tuple[int, int] | None = None, limit: int = MAX_FRAMES
               ) -> tuple[np.ndarray, float, bool]:
    """(frames (T, H, W, 3) uint8, fps, cut) of a video file, resized to ``size`` (W, H) by area
    averaging: metrics like clarity depend on resolution, so videos are compared at one size.
    ``cut``: longer than ``limit`` frames."""
    frames: list[np.ndarray] = []
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        stream = c.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        for frame in c.decode(video=0):
            if len(frames) == limit:
                return np.stack(frames), fps, True
            if size is not None and (frame.width, frame.height) != size:
                frame = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError("no frames")
    return np.stack(frames), fps, False


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no inf: null, and "vde_inf" names it


def score_video(path: Path, chunks: int, kind: str, features: Features | None,
                size: tuple[int, int] | None = (160, 120)) -> dict[str, Any]:
    frames, fps, cut = read_video(path, size)
    if len(frames) < chunks:
        raise ValueError(f"{len(frames)} frames: fewer than the {chunks} chunks VDE needs")
    per_frame = score_frames(frames, features)
    row: dict[str, Any] = {"frames": len(frames), "fps": fps, "cut": cut, "size": list(frames.shape[1:3][::-1]),
                           "mean": {}, "chunks": {}, "vde": {}}
    infinite = []
    for name, scores in per_frame.items():
        m = chunk_means(scores, chunks)
        value = vde(m, kind)
        row["mean"][name] = float(scores.mean())
        row["chunks"][name] = [float(v) for v in m]
        row["vde"][name] = _finite(value)
        if not math.isfinite(value):
            infinite.append(name)
    if infinite:
        row["vde_inf"] = infinite
    return row


def done_videos(out: Path) -> set[str]:
    """Videos with a successful line in ``out`` (a torn last line from a crash is ignored)."""
    return {str(row.get("video")) for row in read_json_lines(out) if row.get("ok")}


def run_eval_videos(args: VideoArgs, features: Features | None = None) -> list[dict[str, Any]]:
    """Score every .mp4 under ``args.folder`` not yet in the results file; returns all rows of
    the file (latest per video)."""
    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    videos = sorted(p for p in folder.rglob("*.mp4") if p.is_file())
    if not videos:
        raise ValueError(f"{folder}: no .mp4 files")
    out = Path(args.out) if args.out else folder / "eval-videos.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    if features is None and not args.no_features:
        from eval.video_metrics import TokenizerFeatures

        features = TokenizerFeatures(args.tokenizer or default_tokenizer())
    done = done_videos(out)
    todo = [v for v in videos if str(v.relative_to(folder)) not in done]
    with open(out, "a", encoding="utf-8") as f:
        for path in tqdm(todo, desc="eval-videos", unit="video", file=sys.stderr, disable=None):
            name = str(path.relative_to(folder))
            t0 = time.perf_counter()
            try:
                row = {"video": name, "ok": True,
                       **score_video(path, args.chunks, args.weights, features, analysis_size(args.size))}
            except Exception as e:  # a bad video is that video's failure, not the run's
                row = {"video": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
            row.update(seconds=round(time.perf_counter() - t0, 3), chunks_n=args.chunks, weights=args.weights)
            f.write(json.dumps(row) + "\n")
            f.flush()
    return latest_rows(out)


def latest_rows(out: Path) -> list[dict[str, Any]]:
    rows = {str(row["video"]): row for row in read_json_lines(out) if "video" in row}
    return [rows[k] for k in sorted(rows)]


def default_tokenizer() -> str:
    from engine.tokenizer import has_tokenizer

    path = Path(__file__).resolve().parents[1] / "assets" / "models" / "doom-small"
    if not path.is_dir() or not has_tokenizer(path):
        raise ValueError(f"no tokenizer at {path}; pass --tokenizer PATH or --no-features")
    return str(path)


def plot_videos(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Each metric's chunk means against time (share of the video), one line per video: where
    a video drifts, and which way. None when no video was scored."""
    ok = [r for r in rows if r.get("ok")]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ok[0]["chunks"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for r in ok:
            m = r["chunks"][name]
            vde = "inf" if r["vde"][name] is None else f"{r['vde'][name]:.2f}"
            ax.plot([(i + 0.5) / len(m) for i in range(len(m))], m, marker="o", ms=3, label=f"{r['video']} ({vde})")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xlabel("position in video (chunk centre)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, title="video (VDE)", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_videos(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r.get("ok")]
    names = list(ok[0]["vde"]) if ok else []
    lines = [f"eval-videos: {len(ok)} scored, {len(rows) - len(ok)} failed "
             f"(VDE: lower is better, 0 = no drift; mean: the per-video score)", ""]
    if ok:
        lines.append("| video | frames | " + " | ".join(f"VDE {n}" for n in names) + " | "
                     + " | ".join(f"mean {n}" for n in names) + " |")
        lines.append("|---|---|" + "---|" * (2 * len(names)))
        for r in ok:
            v = ["inf" if r["vde"][n] is None else f"{r['vde'][n]:.3f}" for n in names]
            m = [f"{r['mean'][n]:.3f}" for n in names]
            lines.append(f"| {r['video']} | {r['frames']} | " + " | ".join(v) + " | " + " | ".join(m) + " |")
    for r in rows:
        if not r.get("ok"):
            lines.append(f"FAILED {r['video']}: {r.get('error')}")
    return "\n".join(lines)
