"""``python -m engine.warm_compile CHECKPOINT ...``: compile a runner's step in this process and
exit, leaving inductor's on-disk cache warm for the parent (``Runner.compile_in_background``).

The parent passes everything its graph depends on (cache slots and spare frames, dtype, int8,
batch invariance, threads, the forwards to trace); a graph that differs only misses the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.warm_compile", description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--spare-frames", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", default="0", help="slot sets to trace, ';' between sets: 0;0,1")
    p.add_argument("--frames", default="2,1", help="frames per forward to trace")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--batch-invariant", action="store_true")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (tests: eager)")
    args = p.parse_args(argv)
    with contextlib.suppress(AttributeError, OSError):
        os.nice(3)  # the parent is serving frames on the same cores (at 10 a busy parent starved it for minutes)

    from engine.engine import Engine
    from engine.precision import separate_compile_cache

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    separate_compile_cache()
    engine = Engine.from_checkpoint(args.checkpoint, dtype=getattr(torch, args.dtype), slots=args.slots,
                                    spare_frames=args.spare_frames, int8=args.int8,
                                    batch_invariant=args.batch_invariant)
    rows = [[int(x) for x in r.split(",")] for r in args.rows.split(";")]
    engine.runner.compile_now(rows, [int(f) for f in args.frames.split(",")], args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
