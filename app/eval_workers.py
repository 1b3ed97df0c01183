"""``worldstream eval --workers N``: episodes scored in N local processes; ``--ray-address ADDR``:
in N Ray actors of an existing cluster ("local": a Ray instance started here; Ray is the optional
extra ``ray``; every node needs this package installed, as the driver has it).

Each process builds its own predictor (and IDM) once and scores whole episodes; the parent
writes every row the moment it comes back (the same files, rows in suite order), so a crash
loses nothing and a re-run resumes, as in a serial run. Results equal a serial run's with the
same ``--threads`` (float sums on CPU depend on the thread count: a serial run uses all cores
unless told, a worker ``cores // N``). Processes are spawned, not forked: torch's thread pools
do not survive a fork.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm

_state: dict[str, Any] = {}


def _init(args: Any, threads: int) -> None:
    from app.eval import load_eval_features, load_eval_idm, make_predictor
    from engine.precision import set_threads
    from world.suite import load_suite

    set_threads(threads)
    suite = load_suite(args.suite)
    _state.update(args=args, fps=suite.fps, episodes={ep.name: ep for ep in suite.episodes},
                  predictor=make_predictor(args),
                  idm=load_eval_idm(args.idm)[0] if args.mode == "open-loop" else None,
                  features=load_eval_features(args.fd)[0] if args.mode == "open-loop" else None)


def _score(name: str, strip: Any = None) -> dict[str, Any]:
    from app.eval import score_item

    s = _state
    return score_item(s["episodes"][name], s["predictor"], s["idm"], s["args"], s["fps"], s["features"], strip)


def score_in_workers(args: Any, names: list[str], threads: int, finished: Callable[[dict[str, Any]], None],
                     strip: tuple[str, Any] | None = None) -> None:
    """Score episodes ``names`` in ``args.workers`` processes; ``finished(row)`` as each ends;
    ``strip`` (episode, path): that episode also draws its frame strip there."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(args.workers, len(names)), mp_context=ctx,
                             initializer=_init, initargs=(args, threads)) as pool:
        futures = {pool.submit(_score, name, strip[1] if strip and strip[0] == name else None): name
                   for name in names}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"eval x{args.workers}", unit="episode",
                           file=sys.stderr, disable=None):
            finished(future.result())


class _RayScorer:
    """A Ray actor: one predictor, many episodes (the same code as a local worker)."""

    def __init__(self, args: Any, threads: int) -> None:
        _init(args, threads)

    def score(self, name: str, strip: Any = None) -> dict[str, Any]:
        return _score(name, strip)


def score_in_ray(args: Any, names: list[str], threads: int, finished: Callable[[dict[str, Any]], None],
                 address: str, strip: tuple[str, Any] | None = None) -> None:
    """Score episodes ``names`` in ``args.workers`` Ray actors (``threads`` CPUs each)."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ValueError("--ray-address needs Ray: pip install 'worldstream[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(1, args.workers * threads), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=threads)(_RayScorer)
        pool = ActorPool([actor.remote(args, threads) for _ in range(min(args.workers, len(names)))])
        results = pool.map_unordered(
            lambda a, name: a.score.remote(name, strip[1] if strip and strip[0] == name else None), names)
        for row in tqdm(results, total=len(names), desc=f"eval ray x{args.workers}", unit="episode",
                        file=sys.stderr, disable=None):
            finished(row)
    finally:
        if started:
            ray.shutdown()
