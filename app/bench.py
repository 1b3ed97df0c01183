"""``worldstream bench``: speed of the engine loop, cached vs. recomputing the window, in one run.

Both runs step the same engine code; only the KV cache is switched off in the second. Frames are
timed after a warm-up long enough to fill the window (and to compile, with --compile), so both
modes attend the same number of frames. A frame is timed end to end as play serves it: model,
decode, and JPEG encoding (the ``jpeg`` stage). ``--sweep 1,2,4,euler:16`` also times the same
weights at other sampler settings in the same run: the steps-vs-FPS table (speed depends on the
number of forwards, not on the weights, so ``euler:16`` is the teacher's cost).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from app.bench_scheduler import (
    DEFAULT_TRACE,
    bench_sessions,
    bench_speculation,
    format_scheduler,
    load_trace,
    percentile,
)
from app.engine_spec import default_model
from app.play.session import jpeg_bytes
from engine.action import BUTTONS, Action
from engine.config import ConfigError, EngineConfig, SamplerConfig, get_preset
from engine.engine import Engine
from engine.precision import hardware, resolve_dtype, resolve_int8, set_threads

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class BenchArgs:
    preset: str | None = None  # random weights of a preset
    model: str | None = None  # checkpoint folder; overrides preset; neither: the bundled model
    frames: int = 100
    warmup: int | None = None  # default: sink + window + 2 frames
    steps: int | None = None  # override the sampler's steps
    sampler: str | None = None  # override the sampler's kind
    device: str = "cpu"
    dtype: str = "auto"  # auto: bf16 where the hardware has native bf16 matrix math, else fp32
    threads: int | None = None  # torch threads (None: torch's default)
    attention: str = "auto"
    compile: bool = False
    recompute: bool = True  # also measure the no-cache baseline (for cache_speedup)
    recompute_frames: int | None = None  # default: min(frames, 30)
    seed: int = 0
    sweep: tuple[str, ...] = ()  # other sampler settings to time: "STEPS" or "KIND:STEPS"
    sessions: int = 1  # > 1: also N rollouts in one batched forward vs one (app/bench_scheduler.py)
    speculate: int = 0  # > 0: a trace in real time with k drafts ahead vs none
    hold: int = 1  # ticks an action is held before drafting
    trace: str | None = None  # actions for --speculate: suite .json (episode 0) or .actions.jsonl
    batch_invariant: bool = True  # False: batched GEMMs/decode (faster, frames depend on the batch)
    int8: str = "off"  # block linears in int8: auto | on | off (engine/precision.py)


def _actions(n: int, seed: int) -> list[Action]:
    """A held-keys action stream: each action lasts 4-12 frames."""
    g = torch.Generator().manual_seed(seed)
    out: list[Action] = []
    while len(out) < n:
        buttons = torch.rand(len(BUTTONS), generator=g) < 0.25
        hold = int(torch.randint(4, 13, (1,), generator=g))
        out += [Action(tuple(bool(b) for b in buttons))] * hold
    return out[:n]


def parse_sweep(items: tuple[str, ...], default: SamplerConfig) -> list[SamplerConfig]:
    """"2" -> the config's sampler at 2 steps; "euler:16" -> Euler at 16 steps."""
    out = []
    for item in items:
        kind, _, steps = item.rpartition(":")
        try:
            out.append(dataclasses.replace(default, kind=kind or default.kind, steps=int(steps)))
        except (ValueError, ConfigError) as e:
            raise ValueError(f"--sweep {item!r}: expected STEPS or KIND:STEPS, KIND euler|consistency ({e})") from None
    return out


def _config(args: BenchArgs) -> tuple[EngineConfig, str]:
    if args.model is not None:
        from engine.checkpoint import load_config

        config, _ = load_config(args.model)
        name = args.model
    else:
        name = str(args.preset)
        config = get_preset(name)
    sampler = config.sampler
    if args.steps is not None:
        sampler = dataclasses.replace(sampler, steps=args.steps)
    if args.sampler is not None:
        sampler = dataclasses.replace(sampler, kind=args.sampler)
    return dataclasses.replace(config, sampler=sampler), name


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), None where unknown."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _run(engine: Engine, warmup: int, frames: int, seed: int, desc: str) -> dict[str, Any]:
    actions = _actions(warmup + frames, seed)
    engine.reset(seed)
    first_frame_at = process_age_s()  # launch (process start) to the first frame made
    for _ in engine.stream(actions[:warmup]):
        pass
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    stages: dict[str, list[float]] = {}
    start = time.perf_counter()
    bar = tqdm(engine.stream(actions[warmup:]), total=frames, desc=desc, unit="frame",
               file=sys.stderr, disable=None, leave=False)
    for frame in bar:
        t0 = time.perf_counter()
        jpeg_bytes(frame.rgb)
        jpeg_ms = (time.perf_counter() - t0) * 1e3
        for stage, ms in {**frame.timings_ms, "jpeg": jpeg_ms}.items():
            stages.setdefault(stage, []).append(ms)
    wall = time.perf_counter() - start
    return {
        "fps": frames / wall,
        "ms_per_frame": {k: statistics.fmean(v) for k, v in stages.items()},
        "ms_p50": {k: statistics.median(v) for k, v in stages.items()},
        "ms_p95": {k: percentile(v, 0.95) for k, v in stages.items()},
        "first_frame_at_s": first_frame_at,
    }


def run_bench(args: BenchArgs) -> dict[str, Any]:
    if args.frames < 1:
        raise ValueError("--frames must be >= 1")
    if args.dtype != "auto" and args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be auto or one of {sorted(DTYPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available on this machine")
    requested = args.dtype
    set_threads(args.threads)
    args = dataclasses.replace(args, dtype=resolve_dtype(args.dtype, args.device) if args.dtype == "auto"
                               else args.dtype)
    args = dataclasses.replace(args, model=default_model(args.model, args.preset),
                               int8=resolve_int8(args.int8, args.device, args.dtype))
    config, name = _config(args)
    sweep = parse_sweep(args.sweep, config.sampler)
    m = config.model
    warmup = args.warmup if args.warmup is not None else m.sink_frames + m.window_frames + 2
    if args.sessions < 1 or args.speculate < 0 or args.hold < 1:
        raise ValueError("--sessions and --hold must be >= 1, --speculate >= 0")
    trace = load_trace(args.trace or DEFAULT_TRACE) if args.speculate else []
    opts: dict[str, Any] = dict(device=args.device, dtype=DTYPES[args.dtype], seed=args.seed,
                                attention=args.attention, compile=args.compile, slots=args.sessions,
                                spare_frames=max(2, args.speculate + 1),
                                batch_invariant=None if args.batch_invariant else False, int8=args.int8 == "on")

    def build(sampler: SamplerConfig) -> Engine:
        if args.model is not None:
            return Engine.from_checkpoint(args.model, sampler=sampler, **opts)
        return Engine.build(config, sampler=sampler, **opts)

    engine = build(config.sampler)
    cached = _run(engine, warmup, args.frames, args.seed, "cached")
    on_cuda = args.device.startswith("cuda")
    hw = hardware(args.device)
    result: dict[str, Any] = {
        "preset": name,
        "device": args.device,
        "device_name": hw.get("gpu", hw["cpu"]),
        "threads": hw["threads"],
        "cpu_capability": hw["cpu_capability"],
        "bf16_native": hw["bf16_native"],
        "dtype": args.dtype,
        "dtype_requested": requested,
        "attention": engine.runner.attention,
        "compile": args.compile,
        "int8": args.int8,
        "sampler": config.sampler.kind,
        "frames": args.frames,
        "steps": config.sampler.steps,
        "resolution": f"{config.frame.width}x{config.frame.height}",
        "tokens_per_frame": m.tokens_per_frame,
        "window_frames": m.window_frames,
        "sink_frames": m.sink_frames,
        "fps": cached["fps"],
        "model_fps": 1000.0 / cached["ms_per_frame"]["model"],
        "ms_per_frame": cached["ms_per_frame"],
        "ms_p50": cached["ms_p50"],
        "ms_p95": cached["ms_p95"],
        "launch_to_first_frame_s": cached["first_frame_at_s"],
        "params": engine.runner.model.num_params(),
        "cache_mb": engine.runner.cache.memory_bytes() / 2**20,
        "decoder": engine.decoder.name,
    }
    if args.recompute:
        baseline = Engine(engine.runner, engine.decoder, recompute=True)
        n = args.recompute_frames or min(args.frames, 30)
        slow = _run(baseline, warmup, n, args.seed, "recompute")
        result["recompute_fps"] = slow["fps"]
        result["recompute_ms_per_frame"] = slow["ms_per_frame"]
        result["cache_speedup"] = cached["fps"] / slow["fps"]
    if sweep:
        result["sweep"] = []
        for sampler in sweep:
            run = _run(build(sampler), warmup, args.frames, args.seed, f"{sampler.kind} x {sampler.steps}")
            result["sweep"].append({"sampler": sampler.kind, "steps": sampler.steps, "fps": run["fps"],
                                    "ms_per_frame": run["ms_per_frame"]})
    if args.sessions > 1:
        result["sessions"] = bench_sessions(engine, args.sessions, warmup, args.frames, args.seed, _actions)
    if args.speculate:
        if len(trace) < warmup + 10:
            raise ValueError(f"--trace has {len(trace)} actions; --speculate needs at least {warmup + 10}")
        trace = trace[: warmup + args.frames]
        result["speculation"] = bench_speculation(engine, args.speculate, trace, config.frame.fps, args.seed,
                                                  warmup, args.hold)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if on_cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def format_table(r: dict[str, Any]) -> str:
    ms = r["ms_per_frame"]
    lines = [
        f"worldstream bench: {r['preset']} on {r['device']} ({r['device_name']}, {r['threads']} threads, "
        f"torch CPU capability {r['cpu_capability']}, native bf16: {'yes' if r['bf16_native'] else 'no'}), "
        f"{r['dtype']}" + (" (auto)" if r["dtype_requested"] == "auto" else "")
        + f", int8={r['int8']}, attention={r['attention']}, compile={r['compile']}",
        f"  {r['resolution']}, {r['tokens_per_frame']} tokens/frame, window {r['window_frames']} + "
        f"{r['sink_frames']} sink, {r['sampler']} x {r['steps']} step(s), {r['params'] / 1e6:.1f}M params",
        f"  FPS end to end (model + decode + JPEG): {r['fps']:.1f}    model-only FPS: {r['model_fps']:.1f}",
        "  ms/frame mean: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()),
        "  ms/frame p50 / p95: " + ", ".join(f"{k} {r['ms_p50'][k]:.1f} / {r['ms_p95'][k]:.1f}" for k in ms),
    ]
    if r.get("launch_to_first_frame_s") is not None:
        lines.append(f"  launch to first frame: {r['launch_to_first_frame_s']:.1f} s (process start to x_0, "
                     f"model load{' and compile' if r['compile'] else ''} included)")
    if "cache_speedup" in r:
        lines.append(f"  no-cache (recompute window) FPS: {r['recompute_fps']:.1f}    "
                     f"cache speed-up: {r['cache_speedup']:.1f}x")
    if r.get("sweep"):
        lines.append("  | sampler | steps | model ms | decode ms | JPEG ms | FPS end to end |")
        lines.append("  |---|---|---|---|---|---|")
        for row in [{"sampler": r["sampler"], "steps": r["steps"], "fps": r["fps"], "ms_per_frame": ms}, *r["sweep"]]:
            t = row["ms_per_frame"]
            lines.append(f"  | {row['sampler']} | {row['steps']} | {t.get('model', 0):.1f} | {t.get('decode', 0):.1f}"
                         f" | {t.get('jpeg', 0):.1f} | {row['fps']:.1f} |")
    lines += format_scheduler(r)
    lines.append(f"  KV cache {r['cache_mb']:.1f} MiB, peak RSS {r['peak_rss_mb']:.0f} MiB")
    return "\n".join(lines)
