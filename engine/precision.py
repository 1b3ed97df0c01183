"""Which number format this hardware runs fast, and what to report about it.

``--dtype auto`` (the default of play, record, bench, eval and showcase) picks bfloat16 where the
hardware multiplies bf16 matrices natively (CUDA; CPUs with AVX-512 BF16 or AMX) and float32
everywhere else: on an AVX2-only CPU bf16 is emulated and slower than fp32 (bundled model,
2 cores, forced AVX2: 4.7 FPS in bf16 vs 9.6 in fp32; docs/benchmarks.md). The model, the KV
cache and the decoder all use the one dtype chosen.

The CPU capability is torch's (``torch.backends.cpu.get_cpu_capability()``), which honours
``ATEN_CPU_CAPABILITY``: forcing ``avx2`` on an AVX-512 machine makes ``auto`` choose fp32, as
it would on a real AVX2 machine.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHOICES = ("auto", *DTYPES)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bf16 matrix math


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """torch's CPU kernel level: "AVX512", "AVX2", "DEFAULT", ... (after ATEN_CPU_CAPABILITY)."""
    return torch.backends.cpu.get_cpu_capability()


def native_bf16(device: str = "cpu", capability: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """Does ``device`` multiply bf16 matrices natively? (``capability``/``flags``: for tests.)"""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    capability = cpu_capability() if capability is None else capability
    flags = cpu_flags() if flags is None else flags
    return capability.startswith("AVX512") and bool(flags & BF16_FLAGS)


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """"auto" -> "bf16" or "fp32" for this hardware; "fp32"/"bf16" as given."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(CHOICES)}, got {name!r}")
    return name


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads for this process (None: leave torch's default, one per core it
    may use); returns the number in effect. ValueError for a count below 1."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def serving_threads() -> int:
    """Threads for a play server: one core fewer than torch would use (at least one). The browser,
    the event loop, JPEG and the recorder need a core: with the browser on the same 2-core CPU the
    bundled model serves 8.5 FPS at 1 thread against 7.2 at 2 (docs/benchmarks.md)."""
    return max(1, torch.get_num_threads() - 1)


def hardware(device: str = "cpu") -> dict[str, Any]:
    """What a speed figure needs next to it: CPU model, torch's capability, threads, bf16."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_capability": cpu_capability(),
                            "threads": torch.get_num_threads(), "bf16_native": native_bf16(device),
                            "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
