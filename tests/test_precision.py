"""--dtype auto: bf16 only where the hardware multiplies bf16 natively; the decoder follows the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import engine.precision as precision
from app.engine_spec import EngineSpec
from engine.precision import native_bf16, resolve_dtype
from kernels.int8_linear import int8_available

AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX512_ONLY = frozenset({"avx2", "avx512f", "avx512bw"})
AVX2_ONLY = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(("capability", "flags", "native"), [
    ("AVX512", AVX512_BF16, True),
    ("AVX512", frozenset({"avx512f", "amx_bf16"}), True),
    ("AVX512", AVX512_ONLY, False),  # AVX-512 without BF16: emulated
    ("AVX2", AVX512_BF16, False),  # ATEN_CPU_CAPABILITY=avx2 on a bf16 machine: behave as AVX2
    ("AVX2", AVX2_ONLY, False),
    ("DEFAULT", frozenset(), False),
])
def test_native_bf16_needs_avx512_kernels_and_bf16_flags(capability: str, flags: frozenset[str],
                                                         native: bool) -> None:
    assert native_bf16("cpu", capability=capability, flags=flags) is native


def _machine(monkeypatch: pytest.MonkeyPatch, capability: str, flags: frozenset[str],
             bf16_faster: bool = True) -> None:
    monkeypatch.setattr(precision, "cpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(precision, "bf16_pays", lambda device="cpu": bf16_faster)


def test_auto_picks_fp32_without_native_bf16_and_the_decoder_follows(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from tests.test_play_faults import _checkpoint_with_tokenizer

    folder = _checkpoint_with_tokenizer(tmp_path / "model")
    _machine(monkeypatch, "AVX2", AVX2_ONLY)
    assert resolve_dtype("auto") == "fp32"
    spec = EngineSpec(model=str(folder))
    assert spec.dtype == "fp32" and spec.describe()["dtype"] == "fp32"  # recordings store the concrete dtype
    engine = spec.build()
    assert engine.decoder.dtype == torch.float32  # no hidden bf16
    assert next(engine.runner.model.parameters()).dtype == torch.float32

    _machine(monkeypatch, "AVX512", AVX512_BF16)
    spec = EngineSpec(model=str(folder))
    assert spec.dtype == "bf16"
    assert spec.build().decoder.dtype == torch.bfloat16
    assert EngineSpec(model=str(folder), dtype="fp32").build().decoder.dtype == torch.float32  # explicit wins

    _machine(monkeypatch, "AVX512", AVX512_BF16, bf16_faster=False)  # native, but measured slower here
    assert resolve_dtype("auto") == "fp32" and resolve_dtype("bf16") == "bf16"


def test_the_bf16_probe_runs_and_is_cached() -> None:
    precision.bf16_pays.cache_clear()
    first = precision.bf16_pays("cpu")
    assert isinstance(first, bool) and precision.bf16_pays("cpu") is first
    assert precision.bf16_pays.cache_info().hits >= 1


def test_bad_dtype_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineSpec(preset="tiny", dtype="half")


def test_bench_and_health_report_the_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.bench import BenchArgs, format_table, run_bench
    from app.play.server import ServeArgs, create_app

    _machine(monkeypatch, "AVX2", AVX2_ONLY)
    r = run_bench(BenchArgs(preset="tiny", frames=3, warmup=1, recompute=False, int8="auto"))
    assert r["dtype"] == "fp32" and r["dtype_requested"] == "auto" and r["cpu_capability"] == "AVX2"
    assert r["int8"] == ("on" if int8_available() else "off")  # auto: on for fp32 on a CPU with fbgemm
    assert r["threads"] == torch.get_num_threads() and r["bf16_native"] is False
    assert 0 < r["launch_to_first_frame_s"] < 3600 and set(r["ms_p50"]) == set(r["ms_p95"]) >= {"model", "jpeg"}
    assert "capability AVX2" in format_table(r) and "fp32 (auto)" in format_table(r)
    with TestClient(create_app(ServeArgs(recordings=str(tmp_path)), EngineSpec(preset="tiny"), page=False)) as c:
        h = c.get("/healthz").json()
        assert h["dtype"] == "fp32" and h["cpu_capability"] == "AVX2" and h["threads"] >= 1
        assert h["int8"] == "off" and h["compile"] == "eager"  # the spec's: no int8, no compile
        with c.websocket_connect("/ws") as ws:
            hello = ws.receive_json()
            assert hello["type"] == "hello" and hello["dtype"] == "fp32" and hello["cpu_capability"] == "AVX2"
            assert hello["int8"] == "off"
