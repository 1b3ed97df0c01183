"""int8 linear layers for CPU inference: weights int8 per output channel, activations quantised
on the fly (fbgemm's dynamic linear), tested against ``nn.Linear`` (tests/test_kernels.py).

On a 2-core CPU the DiT's block linears (qkv, proj, the MLP) are a quarter of a frame's step
and run ~2x faster in int8, with AVX-512 VNNI and with AVX2 alike (docs/benchmarks.md). The
activations of each call get one scale (uint8, 7-bit range as fbgemm requires on x86), so a
batched input would share a scale across rollouts; ``rowwise`` quantises and multiplies each
batch row on its own, like ``engine.model.layers.Linear``, so a rollout's frames do not depend
on who shares its batch.

fbgemm's packed weights are built from a ``torch.qint8`` tensor; PyTorch marks those tensor
constructors deprecated (a warning, silenced here). Where the op is missing ``int8_available``
is False and the engine runs its float layers.

The product runs as one custom op (``worldstream::int8_linear``) that reads the packed weight
from a registry by number: torch.compile sees one opaque call per layer, with a shape rule,
instead of tracing fbgemm's packed object (which broke the graph and recompiled per shape).
"""

from __future__ import annotations

import functools
import itertools
import warnings
import weakref

import torch
from torch import nn


@functools.cache
def int8_available() -> bool:
    """Can this PyTorch build run fbgemm's dynamic int8 linear on this CPU? (Tried once.)"""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        layer = Int8Linear(nn.Linear(8, 8))
        layer(torch.zeros(2, 8))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def int8_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Can a model on ``device`` in ``dtype`` run its linears here in int8? (CPU, float32, fbgemm.)"""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and int8_available()


def _pack(weight: torch.Tensor, bias: torch.Tensor | None) -> object:
    """fbgemm's packed form of a float weight quantised symmetric per output channel."""
    w = weight.detach().float().contiguous()
    scales = (w.abs().amax(dim=1).clamp_min(1e-12) / 127.0).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # qint8 tensors are "deprecated" (still the only way in)
        qweight = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


_PACKED: dict[int, object] = {}  # layer number -> fbgemm packed weight, dropped with its layer
_NUMBERS = itertools.count()


@torch.library.custom_op("worldstream::int8_linear", mutates_args=())
def int8_linear(x: torch.Tensor, layer: int, out_features: int) -> torch.Tensor:
    """x (M, in) float32 -> (M, out_features) float32 with the packed weight number ``layer``."""
    return torch.ops.quantized.linear_dynamic(x, _PACKED[layer], True)


@int8_linear.register_fake
def _(x: torch.Tensor, layer: int, out_features: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)


class Int8Linear(nn.Module):
    """The int8 form of a float ``nn.Linear`` (inference only; fp32 in and out)."""

    def __init__(self, linear: nn.Linear, rowwise: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rowwise = rowwise
        # the weights it holds outside parameters() (packed for fbgemm), for a model's parameter count
        self.packed_params = linear.weight.numel() + (0 if linear.bias is None else linear.bias.numel())
        self.layer = next(_NUMBERS)
        _PACKED[self.layer] = _pack(linear.weight, linear.bias)
        weakref.finalize(self, _PACKED.pop, self.layer, None)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float().contiguous()
        if torch.compiler.is_compiling():  # one opaque node in the graph
            y = int8_linear(x2, self.layer, self.out_features)
        else:  # eager: straight to fbgemm (the custom op's dispatch costs ~60 us a call, 2 ms a frame)
            y = torch.ops.quantized.linear_dynamic(x2, _PACKED[self.layer], True)
        return y.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rowwise or x.dim() < 3 or x.shape[0] == 1:
            return self._mm(x)
        return torch.cat([self._mm(x[i : i + 1]) for i in range(x.shape[0])])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, rowwise={self.rowwise}"


def quantize_linears(module: nn.Module, names: frozenset[str]) -> int:
    """Replace, in place, every ``nn.Linear`` inside ``module`` whose attribute name is in
    ``names`` (e.g. {"qkv", "proj"}; children of an ``nn.Sequential`` are named "0", "1", ...
    and matched as "<parent>.<index>") by its ``Int8Linear``, keeping its ``rowwise`` setting.
    Returns how many were replaced."""
    count = 0
    for parent_name, parent in module.named_modules():
        for name, child in list(parent.named_children()):
            key = f"{parent_name.rsplit('.', 1)[-1]}.{name}" if isinstance(parent, nn.Sequential) else name
            if isinstance(child, nn.Linear) and key in names:
                setattr(parent, name, Int8Linear(child, rowwise=bool(getattr(child, "rowwise", False))))
                count += 1
    return count
