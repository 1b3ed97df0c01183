"""``worldstream eval-report DIR``: one report over every eval run stored under DIR (each a
folder with summary.json + episodes.jsonl, as ``worldstream eval`` writes them; several
``--model``/``--predictor``/``--suite`` in one ``eval`` write one folder per pair and this report).

report.md: per suite, a model x horizon table of each metric with its 95% interval, and action
accuracy per button; report_psnr.png / report_ssim.png: each predictor's mean curve against time
with a band (the 2.5-97.5 percentile of its per-time mean over bootstrap resamples of episodes).
Rebuilt from the stored results alone: nothing is re-run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.eval_summary import HORIZONS_S, LABELS, METRICS, _cell, _fd_cell, _interval, _pct, _vde_cell
from engine.files import read_json_lines
from eval.bootstrap import mean_interval

FPS = 17.5


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (itself included), sorted."""
    return sorted({p.parent for p in root.rglob("summary.json") if (p.parent / "episodes.jsonl").is_file()})


def _rows(run: Path) -> list[dict[str, Any]]:
    return [row for row in read_json_lines(run / "episodes.jsonl") if row.get("status") == "ok"]


def _band(curves: list[list[float]], seed: int = 0, resamples: int = 300) -> tuple[np.ndarray, ...]:
    n = min(len(c) for c in curves)
    x = np.array([c[:n] for c in curves], dtype=np.float64)  # (episodes, T)
    mean = x.mean(0)
    if len(x) < 2:
        return mean, mean, mean
    return (mean, *mean_interval(x, resamples, seed))


def _plot(runs: list[tuple[dict[str, Any], list[dict[str, Any]]]], metric: str, path: Path) -> Path | None:
    key = f"{metric}_curve"
    series = [(s, [r[key] for r in rows if key in r]) for s, rows in runs]
    series = [(s, c) for s, c in series if c]
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for summary, curves in series:
        mean, lo, hi = _band(curves)
        t = (np.arange(len(mean)) + 1) / FPS
        line = ax.plot(t, mean, lw=1.5, label=f"{summary['predictor']} ({summary['suite']}, {len(curves)} ep.)")[0]
        ax.fill_between(t, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="seconds after the context", ylabel=LABELS.get(metric, metric),
           title=f"{LABELS.get(metric, metric)} over time: mean over episodes, 95% band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def build_report(root: str | Path) -> Path:
    """Write ``root``/report.md (+ plots) from the runs stored under ``root``; returns its path."""
    root = Path(root)
    runs_all = [(json.loads((r / "summary.json").read_text()), _rows(r)) for r in find_runs(root)]
    runs = [(s, rows) for s, rows in runs_all if s.get("mode", "open-loop") == "open-loop"]
    if not runs:
        raise ValueError(f"{root}: no open-loop eval results (summary.json + episodes.jsonl) under it")
    lines = [f"# Evaluation report: {len(runs)} run(s) under {root}", "",
             "Open-loop rollouts from ground-truth context with ground-truth actions; each cell is the mean "
             "over episodes of the second ending h seconds after the context, with its 95% bootstrap "
             "interval over episodes (PSNR in dB; sharpness = predicted / true; colour-histogram distance: "
             "lower is better)."]
    for suite in sorted({s["suite"] for s, _ in runs}):
        group = [(s, rows) for s, rows in runs if s["suite"] == suite]
        lines += ["", f"## {suite}"]
        for m in METRICS:
            head = ["predictor", "episodes", *[f"@{h}s" for h in HORIZONS_S]]
            lines += ["", f"**{LABELS[m]}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for s, _ in group:
                mean, ci = s["mean"]["all"], s.get("ci95", {})
                cells = [f"{_cell(m, mean[f'{m}@{h}s'])} {_interval(m, ci.get(f'{m}@{h}s'))}"
                         if mean.get(f"{m}@{h}s") is not None else "-" for h in HORIZONS_S]
                lines.append(f"| {s['predictor']} | {mean['episodes']} | " + " | ".join(cells) + " |")
        fds = [(s, s["frechet"]) for s, _ in group if s.get("frechet")]
        if fds:
            lines += ["", "**Fréchet distance** (generated vs true frames per horizon bucket, tokenizer features; "
                      "lower is better)", "", "| predictor | " + " | ".join(f"@{h}s" for h in HORIZONS_S) + " |",
                      "|" + "---|" * (len(HORIZONS_S) + 1)]
            for s, fd in fds:
                lines.append(f"| {s['predictor']} | " + " | ".join(_fd_cell(fd, f"@{h}s") for h in HORIZONS_S) + " |")
        vdes = [(s, s["vde"]) for s, _ in group if s.get("vde")]
        if vdes:
            names = list(vdes[0][1])
            lines += ["", "**Drift (VDE per metric of the predicted video; lower is better)**", "",
                      "| predictor | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
            for s, v in vdes:
                lines.append(f"| {s['predictor']} | " + " | ".join(_vde_cell(v[n]) if n in v else "-" for n in names)
                             + " |")
        accs = [(s, s["action_accuracy"]) for s, _ in group if s.get("action_accuracy")]
        if accs:
            buttons = list(accs[0][1]["truth"])
            lines += ["", "**Action accuracy** (inverse-dynamics model; balanced accuracy per button, 50% = "
                      "chance; the true frames are the ceiling)", "",
                      "| frames | " + " | ".join(buttons) + " |", "|" + "---|" * (len(buttons) + 1),
                      "| true frames | " + " | ".join(_pct(accs[0][1]["truth"][b]["balanced"]) for b in buttons) + " |"]
            for s, acc in accs:
                lines.append(f"| {s['predictor']} | "
                             + " | ".join(_pct(acc["predictor"][b]["balanced"]) for b in buttons) + " |")
    for metric in ("psnr", "ssim", "hist"):
        plot = _plot(runs, metric, root / f"report_{metric}.png")
        if plot is not None:
            lines += ["", f"![{LABELS[metric]} over time]({plot.name})"]
    strips = [(run, s) for run, (s, _) in zip(find_runs(root), runs_all, strict=True) if (run / "strip.png").is_file()]
    if strips:
        lines += ["", "## Frames at each horizon (each run's first episode: true above, predicted below)"]
        for run, s in strips:
            image = (run / "strip.png").relative_to(root)
            lines += ["", f"{s['predictor']} ({s['suite']}):", "", f"![{s['predictor']}]({image})"]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
