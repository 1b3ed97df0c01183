"""KV cache invariants: cached == full recompute, exact rollback, fork, constant memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.cache import CacheShape, FullContext, KVCache
from engine.config import EngineConfig
from tests.conftest import make_engine, make_model

# Cached and full passes do the same math in a different order; fp32 rounding stays far below
# the ~1e-2 differences a wrong key, mask or position produces (see the sensitivity test).
ATOL = 2e-5


def _inputs(cfg: EngineConfig, frames: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    m = cfg.model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, frames, m.latent_channels, m.latent_height, m.latent_width, generator=g)
    sigma = torch.rand(1, frames, generator=g)
    action = (torch.rand(1, frames, m.num_actions, generator=g) > 0.5).float()
    return x, sigma, action


def _cache(cfg: EngineConfig, slots: int = 1, spare: int = 3) -> KVCache:
    m = cfg.model
    return KVCache(CacheShape(m.depth, slots, m.heads, m.head_dim, m.tokens_per_frame,
                              m.sink_frames, m.window_frames, spare))


def _full(model: torch.nn.Module, cfg: EngineConfig, x: torch.Tensor, sigma: torch.Tensor,
          action: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    m = cfg.model
    return model(x, sigma, action, FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames))


@pytest.mark.parametrize("chunks", [[1] * 20, [2, 1, 3, 2, 2, 1, 3, 1, 2, 3]])
def test_cached_equals_full_recompute_after_wrap(tiny: EngineConfig, chunks: list[int]) -> None:
    """Frames fed in chunks through the ring cache == one pass over the whole history with the
    block-causal sink + sliding-window mask. 20 frames wrap the ring (1 sink + 3 + 3 spare) 3x."""
    model = make_model(tiny)
    total = sum(chunks)
    x, sigma, action = _inputs(tiny, total)
    with torch.no_grad():
        reference = _full(model, tiny, x, sigma, action, torch.arange(total)[None])
        cache, outs, t = _cache(tiny), [], 0
        for n in chunks:
            outs.append(model(x[:, t:t + n], sigma[:, t:t + n], action[:, t:t + n], cache.context(0, n)))
            cache.commit(0, n)
            t += n
    torch.testing.assert_close(torch.cat(outs, 1), reference, atol=ATOL, rtol=0)


def test_reference_is_sensitive_to_window_and_sinks(tiny: EngineConfig) -> None:
    """The test above can fail: dropping the sink, or widening the window, changes the output."""
    model = make_model(tiny)
    x, sigma, action = _inputs(tiny, 10)
    m = tiny.model
    idx = torch.arange(10)[None]
    with torch.no_grad():
        base = _full(model, tiny, x, sigma, action, idx)
        no_sink = model(x, sigma, action, FullContext(idx, m.tokens_per_frame, 0, m.window_frames))
        wide = model(x, sigma, action, FullContext(idx, m.tokens_per_frame, m.sink_frames, m.window_frames + 2))
    assert (no_sink[:, -1] - base[:, -1]).abs().max() > 100 * ATOL
    assert (wide[:, -1] - base[:, -1]).abs().max() > 100 * ATOL


def test_engine_cached_equals_recompute_while_window_holds_everything(tiny: EngineConfig) -> None:
    """Until the window drops a frame, the engine with the cache and the no-cache baseline
    (which recomputes sinks + window every denoising step) agree frame by frame."""
    from tests.conftest import action_script

    m = tiny.model
    horizon = m.sink_frames + m.window_frames  # frames 0..horizon see everything before them
    cached, plain = make_engine(tiny), make_engine(tiny, recompute=True)
    a = [cached.reset(5), *cached.stream(action_script(horizon))]
    b = [plain.reset(5), *plain.stream(action_script(horizon))]
    for fa, fb in zip(a, b, strict=True):
        torch.testing.assert_close(fa.latent, fb.latent, atol=ATOL, rtol=0)


def test_rollback_restores_exactly(tiny: EngineConfig) -> None:
    """Commit k frames, roll them back: the next forward is bit-identical to one run from a
    snapshot taken before them, also after the ring wrapped."""
    model = make_model(tiny)
    x, sigma, action = _inputs(tiny, 16)
    cache = _cache(tiny, slots=2, spare=3)
    with torch.no_grad():
        for t in range(10):  # wraps the 6-frame ring
            model(x[:, t:t + 1], sigma[:, t:t + 1], action[:, t:t + 1], cache.context(0, 1))
            cache.commit(0, 1)
        cache.fork(0, 1)  # snapshot
        for k in (1, 2, 3):
            model(x[:, 10:10 + k], sigma[:, 10:10 + k], action[:, 10:10 + k], cache.context(0, k))
            cache.commit(0, k)
            cache.rollback(0, k)
            assert cache.length(0) == 10
            probe = (x[:, 13:14], sigma[:, 13:14], action[:, 13:14])
            after = model(*probe, cache.context(0, 1))
            snapshot = model(*probe, cache.context(1, 1))
            assert torch.equal(after, snapshot)
            assert torch.equal(cache.lengths, torch.tensor([10, 10]))


def test_rollback_beyond_restorable_is_refused(tiny: EngineConfig) -> None:
    cache = _cache(tiny, spare=2)
    k = torch.zeros(1, tiny.model.heads, tiny.model.tokens_per_frame, tiny.model.head_dim)
    for _ in range(12):
        ctx = cache.context(0, 1)
        for layer in range(tiny.model.depth):
            ctx.append(layer, k, k)
        cache.commit(0, 1)
    assert cache.restorable(0) == 2  # ring = window 3 + 2 spare; the window must stay intact
    with pytest.raises(ValueError, match="2 are restorable"):
        cache.rollback(0, 3)
    cache.rollback(0, 2)
    with pytest.raises(ValueError, match="0 are restorable"):
        cache.rollback(0, 1)
    with pytest.raises(ValueError, match="outside"):
        cache.context(0, 3)  # more frames at once than spare slots
    with pytest.raises(ValueError, match="only 0 appended"):
        cache.commit(0, 1)  # nothing written since the rollback
    cache.context(0, 2)
    cache.commit(0, 1)
    with pytest.raises(ValueError, match="only 1 appended"):
        cache.commit(0, 2)
    with pytest.raises(IndexError):
        cache.reset(5)


def test_fork_gives_independent_rollouts(tiny: EngineConfig) -> None:
    """Fork at t=6, step the two branches interleaved with different actions: each equals a solo
    run of its own action sequence, and both agree with the parent up to the fork."""
    from tests.conftest import action_script

    prefix, left, right = action_script(6), action_script(12)[6:], list(reversed(action_script(6)))
    parent = make_engine(tiny, slots=2)
    head = [parent.reset(3), *parent.stream(prefix)]
    child = parent.fork(slot=1)
    a, b = [], []
    for al, ar in zip(left, right, strict=True):
        a.append(parent.step(al))
        b.append(child.step(ar))

    for actions, got in ((left, a), (right, b)):
        solo = make_engine(tiny)
        solo_head = [solo.reset(3), *solo.stream(prefix)]
        solo_tail = list(solo.stream(actions))
        for x, y in zip(head, solo_head, strict=True):
            assert torch.equal(x.latent, y.latent)
        for x, y in zip(got, solo_tail, strict=True):
            assert torch.equal(x.latent, y.latent)
    assert not torch.equal(a[-1].latent, b[-1].latent)


@pytest.mark.slow
def test_ten_thousand_frames_constant_memory_and_offsets(tiny: EngineConfig) -> None:
    """10,000 frames of the tiny preset: no cache buffer is reallocated or grows, and every
    attended key is a sink or within the window of its query (temporal offset in [0, W]).
    One denoising step (every forward is the steady 2-frame one; the 1-frame forward of further
    steps attends the same keys): half the suite time of two."""
    engine = make_engine(dataclasses.replace(tiny, sampler=dataclasses.replace(tiny.sampler, steps=1)))
    cache = engine.runner.cache
    pointers = [t.data_ptr() for t in (*cache.k, *cache.v)]
    memory = cache.memory_bytes()
    m = tiny.model
    worst = {"offset": 0, "frames": 0}
    original = cache.context

    def checked_context(slots: int | list[int], frames: int, batch: int = 1):
        ctx = original(slots, frames, batch)
        slot = ctx.slots[0]
        n = m.tokens_per_frame
        frame_mask = ctx.mask[0, 0, ::n, ::n]  # (F, S+R) frames attended by each new frame
        k_frame = torch.cat([torch.arange(m.sink_frames), _ring_frames(cache, slot, frames)])
        for q, row in zip(ctx.frame_index[0].tolist(), frame_mask, strict=True):
            seen = k_frame[row]
            window = seen[seen >= m.sink_frames]
            assert bool(((q - window) >= 0).all()) and bool(((q - window) <= m.window_frames).all())
            if window.numel():
                worst["offset"] = max(worst["offset"], int((q - window).max()))
            worst["frames"] = max(worst["frames"], int(row.sum()))
        return ctx

    cache.context = checked_context  # type: ignore[method-assign]
    engine.reset(0)
    for i, _ in enumerate(engine.stream(_held(10_000))):
        if i % 1000 == 0:
            assert cache.memory_bytes() == memory
    assert engine.frame_index == 10_000
    assert [t.data_ptr() for t in (*cache.k, *cache.v)] == pointers
    assert cache.memory_bytes() == memory
    assert worst["offset"] == m.window_frames  # the window is used in full, never exceeded
    assert worst["frames"] == m.sink_frames + m.window_frames + 1


def _ring_frames(cache: KVCache, slot: int, new: int) -> torch.Tensor:
    s, r = cache.shape.sink_frames, cache.shape.ring_frames
    last = cache.length(slot) + new - 1 - s
    return s + last - torch.remainder(last - torch.arange(r), r)


def _held(n: int) -> list:
    from tests.conftest import action_script

    return [action_script(64)[(i // 7) % 64] for i in range(n)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cached_step_never_syncs_with_the_host(tiny: EngineConfig) -> None:
    """The hot step (context + forward + commit + rollback) must run with CUDA's sync debug
    mode set to error: no .item(), no device-to-host copy, nothing that waits for the GPU."""
    from engine.runner import Runner

    runner = Runner(tiny, make_model(tiny), device="cuda", attention="sdpa")
    x, sigma, action = (t.cuda() for t in _inputs(tiny, 2))
    runner.forward(0, x[:, :1], sigma[:, :1], action[:, :1])  # first call: lazy init outside
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8):
            runner.forward(0, x, sigma, action)
            runner.cache.commit(0, 1)
        runner.cache.rollback(0, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
