"""``worldstream`` command line: parses arguments at the edge and calls the front ends."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from engine.checkpoint import CheckpointError
from engine.config import PRESETS, ConfigError

# Subcommands that later issues fill in; until then they say so instead of pretending.
PLANNED = {
    "play": "serve the model in the browser (websocket + Gradio page)",
    "record": "record a rollout to MP4",
    "collect": "collect ViZDoom training data",
    "train": "train the tokenizer, teacher and student",
    "eval": "evaluate a model on an eval suite",
}


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure engine speed (FPS, per-stage ms, cache speed-up)",
                       description="Measure the engine loop: FPS and per-stage milliseconds with "
                       "the KV cache, and the speed-up over recomputing the window each frame.")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS),
                   help="model shape with random weights (default: small)")
    p.add_argument("--model", default=None, metavar="PATH", help="checkpoint folder (overrides --preset)")
    p.add_argument("--frames", type=int, default=100, help="timed frames (default: 100)")
    p.add_argument("--warmup", type=int, default=None, help="untimed frames first (default: sink+window+2)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps per frame (default: the config's)")
    p.add_argument("--sampler", choices=["euler", "consistency"], default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--attention", choices=["auto", "sdpa", "flex", "xformers", "reference"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model step")
    p.add_argument("--no-recompute", dest="recompute", action="store_false",
                   help="skip the no-cache baseline (no cache_speedup)")
    p.add_argument("--recompute-frames", type=int, default=None,
                   help="timed frames of the no-cache baseline (default: min(frames, 30))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldstream", description="An interactive, streaming world model of Doom.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _bench_parser(sub)
    for name, what in PLANNED.items():
        sub.add_parser(name, help=f"{what} (not available yet)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in PLANNED:
        print(f"worldstream {args.command}: not available yet ({PLANNED[args.command]}); "
              "it is planned in the issue tracker. Available now: worldstream bench.", file=sys.stderr)
        return 2
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "bench":
        from app.bench import BenchArgs, format_table, run_bench

        fields = {k: v for k, v in vars(args).items() if k not in ("command", "json")}
        try:
            result = run_bench(BenchArgs(**fields))
        except (ValueError, ConfigError, CheckpointError) as e:
            print(f"worldstream bench: {e}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2) if args.json else format_table(result))
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
