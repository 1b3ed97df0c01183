"""What one eval run writes for people: summary.md (tables per horizon with 95% intervals,
Fréchet distance, action accuracy) and psnr.png (every episode's PSNR curve and their mean)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HORIZONS_S = (1, 5, 10, 30, 60)
METRICS = ("psnr", "ssim", "sharp", "hist")  # sharp: predicted / true sharpness; hist: colour distance


LABELS = {"psnr": "PSNR", "ssim": "SSIM", "sharp": "sharpness ratio", "hist": "colour-histogram distance"}


def markdown(summary: dict[str, Any]) -> str:
    mode = summary.get("mode", "open-loop")
    lines = [f"# {summary['suite']}: {summary['predictor']} ({mode})", "",
             f"{summary['ok']} of {summary['episodes']} episodes scored; failed: {summary['failed'] or 'none'}."]
    if mode in ("next-frame", "round-trip"):
        what = ("Teacher forced: true context, one predicted frame" if mode == "next-frame" else
                "The tokenizer's encode -> decode of the true frame (no prediction: the ceiling of a latent model)")
        lines += [f"{what}, at start points spread over each "
                  "episode; mean over episodes (PSNR in dB; sharpness = predicted / true).", "",
                  "| split | episodes | " + " | ".join(LABELS[m] for m in METRICS) + " |",
                  "|" + "---|" * (len(METRICS) + 2)]
        for split, values in summary["mean"].items():
            cells = [split, str(values["episodes"]), *(_cell(m, values[f"{m}@next"]) for m in METRICS)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    lines.append("Mean over episodes of each episode's mean over the second ending h seconds after the "
                 "last context frame (PSNR in dB; sharpness = predicted / true).")
    for m in METRICS:
        head = ["split", "episodes", *[f"{LABELS[m]} @{h}s" for h in HORIZONS_S]]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for split, values in summary["mean"].items():
            cells = [split, str(values["episodes"]), *(_cell(m, values[f"{m}@{h}s"]) for h in HORIZONS_S)]
            lines.append("| " + " | ".join(cells) + " |")
        ci = summary.get("ci95", {})
        lines.append("| 95% interval (all, bootstrap over episodes) | | "
                     + " | ".join(_interval(m, ci.get(f"{m}@{h}s")) for h in HORIZONS_S) + " |")
    fd = summary.get("frechet")
    if fd:
        lines += ["", f"Fréchet distance between generated and true frames per horizon bucket (tokenizer features; "
                  f"{fd['episodes']} episodes; lower is better), 95% bootstrap interval:", "",
                  "| " + " | ".join(f"@{h}s" for h in HORIZONS_S) + " |", "|" + "---|" * len(HORIZONS_S),
                  "| " + " | ".join(_fd_cell(fd, f"@{h}s") for h in HORIZONS_S) + " |"]
    vde = summary.get("vde")
    if vde:
        lines += ["", "Drift of the predicted video on its own: VDE (10 chunks, linear weights; lower is better; "
                  "docs/eval.md), mean over episodes with its 95% interval:", "",
                  "| " + " | ".join(vde) + " |", "|" + "---|" * len(vde),
                  "| " + " | ".join(_vde_cell(v) for v in vde.values()) + " |"]
    acc = summary.get("action_accuracy")
    if acc:
        lines += ["", f"Action accuracy: an inverse-dynamics model reads each pair of consecutive frames "
                  f"({acc['episodes']} episodes); on the true frames it gives the ceiling, on copy-last "
                  "(no motion) the floor. Balanced accuracy = mean of the hit rate and the correct-"
                  "rejection rate (0.5 = chance).", "",
                  "| button | pressed | accuracy, truth | accuracy, predictor | balanced, truth "
                  "| balanced, predictor |",
                  "|---|---|---|---|---|---|"]
        for b, t in acc["truth"].items():
            p = acc["predictor"][b]
            lines.append(f"| {b} | {_pct(t['pressed'])} | {_pct(t['accuracy'])} | {_pct(p['accuracy'])} "
                         f"| {_pct(t['balanced'])} | {_pct(p['balanced'])} |")
    return "\n".join(lines) + "\n"


def _fd_cell(fd: dict[str, Any], key: str) -> str:
    value, ci = fd["fd"].get(key), fd["ci95"].get(key)
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _vde_cell(v: dict[str, Any]) -> str:
    if v["mean"] is None:
        return "-"
    return f"{v['mean']:.2f}" + (f" [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]" if v.get("ci95") else "")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _interval(metric: str, ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{_cell(metric, ci[0])}, {_cell(metric, ci[1])}]"


def _cell(metric: str, value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if metric == "psnr" else f"{value:.3f}"


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
