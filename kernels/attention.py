"""Attention backends behind one interface, each tested equal to ``ReferenceAttention``.

Shapes (all backends):
    q: (B, H, Q, Dh)   k, v: (B, H, K, Dh)   mask: (B, 1, Q, K) bool, True = may attend
    out: (B, H, Q, Dh)
A backend turns the boolean mask into its own form once per forward (``prepare``), and every
layer reuses it. Every query row must attend to at least one key (the engine guarantees it:
a frame always sees itself).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from typing import Any, Protocol

import torch
import torch.nn.functional as F


class AttentionBackend(Protocol):
    name: str

    def prepare(self, mask: torch.Tensor, dtype: torch.dtype) -> Any:
        """Convert a (B, 1, Q, K) bool mask to this backend's mask object for q/k/v of ``dtype``."""
        ...

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        ...


class ReferenceAttention:
    """Plain softmax(q k^T / sqrt(d)) v in float32. Slow; the ground truth for the others."""

    name = "reference"

    def prepare(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return mask

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Q, K)
        scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


class SDPAAttention:
    """``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask (CPU and CUDA)."""

    name = "sdpa"

    def prepare(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # An additive mask made once per forward saves every layer converting the bool mask.
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class FlexAttention:
    """``torch.nn.attention.flex_attention`` with a block mask built from the boolean mask.

    On CUDA the kernel is compiled (fused; skips fully masked blocks). On CPU it runs unfused,
    which is only useful for testing.
    """

    name = "flex"

    def __init__(self, compile: bool | None = None) -> None:
        from torch.nn.attention import flex_attention as fa

        self._fa = fa
        self._compile = compile
        self._kernel: Any = None

    def prepare(self, mask: torch.Tensor, dtype: torch.dtype) -> Any:
        b, _, q_len, kv_len = mask.shape

        def mask_mod(b_: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return mask[b_, 0, q_idx, kv_idx]

        return self._fa.create_block_mask(mask_mod, b, None, q_len, kv_len, device=mask.device)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        if self._kernel is None:
            compile_it = q.is_cuda if self._compile is None else self._compile
            self._kernel = torch.compile(self._fa.flex_attention) if compile_it else self._fa.flex_attention
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return self._kernel(q, k, v, block_mask=mask)


class XFormersAttention:
    """``xformers.ops.memory_efficient_attention`` (CUDA only) with an additive bias."""

    name = "xformers"

    def __init__(self) -> None:
        import xformers.ops as xops

        self._xops = xops

    def prepare(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        b, _, q_len, kv_len = mask.shape
        # xformers wants the bias' last dim padded to a multiple of 8 in memory: slice a view.
        padded = -(-kv_len // 8) * 8
        bias = torch.zeros(b, 1, q_len, padded, device=mask.device, dtype=dtype)[..., :kv_len]
        return bias.masked_fill_(~mask, float("-inf"))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = mask.expand(-1, q.shape[1], -1, -1)
        # xformers layout is (B, M, H, Dh).
        out = self._xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)


BACKENDS: dict[str, type] = {
    "reference": ReferenceAttention,
    "sdpa": SDPAAttention,
    "flex": FlexAttention,
    "xformers": XFormersAttention,
}


def xformers_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("xformers") is not None


def get_backend(name: str = "auto", device: torch.device | str = "cpu") -> AttentionBackend:
    """``auto``: xformers on CUDA when installed, else SDPA. Unknown or unusable names raise."""
    device = torch.device(device)
    if name == "auto":
        name = "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    if name == "xformers" and (device.type != "cuda" or not xformers_available()):
        raise ValueError("the xformers backend needs CUDA and `pip install worldstream[gpu]`")
    return BACKENDS[name]()
