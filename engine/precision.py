"""Which number format this hardware runs fast, and what to report about it.

``--dtype auto`` (the default of play, record, bench, eval and showcase) picks bfloat16 only
where the hardware multiplies bf16 matrices natively (CUDA; CPUs with AVX-512 BF16 or AMX) *and*
bf16 is measured faster there; float32 everywhere else. On an AVX2-only CPU bf16 is emulated:
bundled model, 2 cores, forced AVX2, 3.9 FPS in bf16 vs 19.9 in fp32. "Native" is not enough
either: on a 2-core Intel Xeon with AVX-512 BF16 but no AMX, fp32 serves 22-23 FPS and bf16
17-18 (docs/benchmarks.md), while on a Zen 4 EPYC bf16 was 30% faster. So on a native-bf16 CPU
``auto`` times a step-shaped probe (the model's matmuls and attention, ~0.2 s, once per process)
in both formats and keeps bf16 only if it is at least 10% faster. The model, the KV cache and
the decoder all use the one dtype chosen; recordings store it, so replays do not re-decide.

The CPU capability is torch's (``torch.backends.cpu.get_cpu_capability()``), which honours
``ATEN_CPU_CAPABILITY``: forcing ``avx2`` on an AVX-512 machine makes ``auto`` choose fp32, as
it would on a real AVX2 machine.
"""

from __future__ import annotations

import functools
import getpass
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHOICES = ("auto", *DTYPES)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bf16 matrix math


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields of Linux /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:
                    break  # the first processor's block ends at its blank line
                continue
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where unknown)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


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


@functools.cache
def bf16_pays(device: str = "cpu") -> bool:
    """Is bf16 at least 10% faster than fp32 here, on shapes of the model's step (160 tokens x
    width 256 matmuls, attention over 1,520 keys)? Each format timed 3 x 8 iterations,
    interleaved, best round kept. CUDA: yes (bf16 tensor cores) without timing."""
    if device.startswith("cuda"):
        return True
    g = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(s, generator=g) for s in ((160, 256), (256, 1024), (1024, 256)))
    q, k = torch.randn(1, 4, 160, 64, generator=g), torch.randn(1, 4, 1520, 64, generator=g)
    inputs = {dt: [t.to(dt) for t in (x, w1, w2, q, k)] for dt in (torch.float32, torch.bfloat16)}

    def work(xx: torch.Tensor, a: torch.Tensor, b: torch.Tensor, qq: torch.Tensor, kk: torch.Tensor) -> None:
        torch.nn.functional.scaled_dot_product_attention(qq, kk, kk)
        (xx @ a).relu() @ b

    best = dict.fromkeys(inputs, float("inf"))
    with torch.inference_mode():
        for dt in inputs:
            work(*inputs[dt])  # warm-up
        for _ in range(3):
            for dt, args in inputs.items():
                t0 = time.perf_counter()
                for _ in range(8):
                    work(*args)
                best[dt] = min(best[dt], time.perf_counter() - t0)
    return best[torch.bfloat16] < 0.9 * best[torch.float32]


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """"auto" -> "bf16" or "fp32" for this hardware; "fp32"/"bf16" as given."""
    if name == "auto":
        return "bf16" if native_bf16(device) and bf16_pays(device) else "fp32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(CHOICES)}, got {name!r}")
    return name


INT8_CHOICES = ("auto", "on", "off")


def resolve_int8(choice: str, device: str, dtype: str) -> str:
    """--int8 auto|on|off -> "on" or "off": the block linears in int8 (kernels/int8_linear.py).
    auto: on for float32 on a CPU where fbgemm runs; "on" where that is not so is an error."""
    from kernels.int8_linear import int8_supported

    if choice not in INT8_CHOICES:
        raise ValueError(f"--int8 must be one of {list(INT8_CHOICES)}, got {choice!r}")
    possible = dtype in DTYPES and int8_supported(device, DTYPES[dtype])
    if choice == "on" and not possible:
        raise ValueError("--int8 on needs --device cpu, float32 (--dtype fp32, or auto where it picks fp32) "
                         "and a PyTorch build with fbgemm")
    return "on" if choice == "on" or (choice == "auto" and possible) else "off"


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


def separate_compile_cache() -> None:
    """Give torch.compile's on-disk cache one folder per CPU capability (unless the user chose
    one): a compiled run under ATEN_CPU_CAPABILITY=avx2 followed by a native one reused kernels
    from the shared cache and died with "double free or corruption" (measured, torch 2.13.0)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        user = getpass.getuser() if hasattr(os, "getuid") else "user"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
            tempfile.gettempdir(), f"torchinductor_{user}_{cpu_capability().lower()}")


def hardware(device: str = "cpu") -> dict[str, Any]:
    """What a speed figure needs next to it: CPU model, torch's capability, threads, bf16."""
    native = native_bf16(device)
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_capability": cpu_capability(),
                            "threads": torch.get_num_threads(), "bf16_native": native,
                            "bf16_faster": bf16_pays(device) if native else False, "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
