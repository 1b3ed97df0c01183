"""Every attention backend equals the float32 reference on block-causal cache-shaped masks."""

from __future__ import annotations

import pytest
import torch

from engine.cache import CacheShape, KVCache
from kernels.attention import BACKENDS, ReferenceAttention, get_backend, xformers_available

CUDA = torch.cuda.is_available()


def _case(device: str, dtype: torch.dtype, frames: int = 2) -> tuple[torch.Tensor, ...]:
    """q/k/v and the mask a real cache step would use: 1 sink, window 4, after a wrap."""
    cache = KVCache(CacheShape(layers=1, slots=2, heads=3, head_dim=16, tokens_per_frame=5,
                               sink_frames=1, window_frames=4, spare_frames=2), device=device)
    cache.lengths.fill_(9)
    cache._lengths = [9, 9]
    mask = cache.context(0, frames, batch=2).mask  # (2, 1, F*5, 35)
    g = torch.Generator(device).manual_seed(0)
    q = torch.randn(2, 3, mask.shape[2], 16, generator=g, device=device).to(dtype)
    k = torch.randn(2, 3, mask.shape[3], 16, generator=g, device=device).to(dtype)
    v = torch.randn(2, 3, mask.shape[3], 16, generator=g, device=device).to(dtype)
    return q, k, v, mask


def _check(name: str, device: str, dtype: torch.dtype, atol: float) -> None:
    q, k, v, mask = _case(device, dtype)
    backend = get_backend(name, device)
    out = backend(q, k, v, backend.prepare(mask, q.dtype))
    ref = ReferenceAttention()(q, k, v, mask)
    assert out.shape == ref.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=0)


@pytest.mark.parametrize("name", ["sdpa", "flex"])
def test_cpu_backends_match_reference(name: str) -> None:
    _check(name, "cpu", torch.float32, atol=1e-5)


def test_sdpa_bf16_matches_reference() -> None:
    _check("sdpa", "cpu", torch.bfloat16, atol=3e-2)


def test_reference_respects_mask() -> None:
    """Changing a masked-out value must not change the output; changing a visible one must."""
    q, k, v, mask = _case("cpu", torch.float32)
    ref = ReferenceAttention()
    base = ref(q, k, v, mask)
    hidden = (~mask[0, 0, 0]).nonzero()[0, 0]
    visible = mask[0, 0, 0].nonzero()[0, 0]
    v2 = v.clone()
    v2[0, :, hidden] += 100
    assert torch.equal(ref(q, k, v2, mask)[0, :, 0], base[0, :, 0])
    v2 = v.clone()
    v2[0, :, visible] += 100
    assert not torch.equal(ref(q, k, v2, mask)[0, :, 0], base[0, :, 0])


def test_get_backend_errors() -> None:
    assert get_backend("auto", "cpu").name == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("nope")
    with pytest.raises(ValueError, match="needs CUDA"):
        get_backend("xformers", "cpu")
    assert set(BACKENDS) >= {"reference", "sdpa", "flex", "xformers"}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["sdpa", "flex"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backends_match_reference(name: str, dtype: torch.dtype) -> None:
    _check(name, "cuda", dtype, atol=1e-3 if dtype == torch.float32 else 3e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not xformers_available(), reason="needs CUDA and xformers")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_xformers_matches_reference(dtype: torch.dtype) -> None:
    _check("xformers", "cuda", dtype, atol=3e-2)
