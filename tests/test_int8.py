"""int8 block linears: the kernel against nn.Linear, batch invariance, the engine with them on,
and how --int8 resolves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.engine_spec import EngineSpec
from engine.config import EngineConfig
from engine.model.layers import Linear
from engine.precision import resolve_int8
from engine.runner import INT8_LAYERS
from kernels.int8_linear import Int8Linear, int8_available, quantize_linears
from tests.conftest import action_script, make_engine

needs_fbgemm = pytest.mark.skipif(not int8_available(), reason="this PyTorch build has no fbgemm int8 linear")


@needs_fbgemm
@pytest.mark.parametrize(("k", "n"), [(256, 768), (64, 32), (1024, 256)])
def test_int8_linear_matches_float_within_quantisation_error(k: int, n: int) -> None:
    g = torch.Generator().manual_seed(0)
    ref = nn.Linear(k, n)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        ref.bias.copy_(torch.randn(n, generator=g))
    x = torch.randn(2, 5, k, generator=g)
    with torch.no_grad():
        want, got = ref(x), Int8Linear(ref)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    # 8-bit weights per channel and 7-bit activations: about 1% of the output's spread on average
    err = (got - want).abs() / want.std()
    assert err.mean() < 0.02 and err.max() < 0.12, (float(err.mean()), float(err.max()))
    assert not torch.equal(got, want)  # it really is the int8 path
    # a different weight gives a different output: the packed weight is the layer's own
    other = nn.Linear(k, n)
    with torch.no_grad():
        assert (Int8Linear(other)(x) - got).abs().max() > 10 * (got - want).abs().max()


@needs_fbgemm
def test_rowwise_int8_is_batch_invariant() -> None:
    """Each rollout's activations get their own scale: a row batched with a much larger one is
    bit for bit the row alone (without rowwise the shared scale changes it)."""
    layer = nn.Linear(64, 32)
    x = torch.randn(2, 10, 64)
    x[1] *= 50
    alone = Int8Linear(layer)(x[:1])
    assert torch.equal(Int8Linear(layer, rowwise=True)(x)[:1], alone)
    assert not torch.equal(Int8Linear(layer, rowwise=False)(x)[:1], alone)


@needs_fbgemm
def test_quantize_linears_replaces_the_block_linears_only(tiny: EngineConfig) -> None:
    engine = make_engine(tiny, int8=True)
    model = engine.runner.model
    assert model.num_params() == make_engine(tiny).runner.model.num_params()  # packed weights still count
    int8 = [name for name, m in model.named_modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 4 * tiny.model.depth
    assert {name.split(".", 2)[2] for name in int8} == {"attn.qkv", "attn.proj", "mlp.0", "mlp.2"}
    assert isinstance(model.patch_in, Linear) and isinstance(model.blocks[0].ada[1], Linear)
    assert quantize_linears(nn.Sequential(nn.Linear(2, 2)), INT8_LAYERS) == 0  # names decide
    import gc

    from kernels import int8_linear

    held = len(int8_linear._PACKED)
    del engine, model
    gc.collect()
    assert len(int8_linear._PACKED) == held - 4 * tiny.model.depth  # packed weights go with their layers


@needs_fbgemm
def test_int8_engine_is_deterministic_close_to_float_and_batch_invariant(tiny: EngineConfig) -> None:
    from engine.scheduler import Scheduler

    script = action_script(8)

    def run(**kw: object) -> list[torch.Tensor]:
        e = make_engine(tiny, **kw)
        return [e.reset(3).latent, *(f.latent for f in e.stream(script))]

    a, b, ref = run(int8=True), run(int8=True), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[-1], ref[-1])
    for x, y in zip(a, ref, strict=True):  # int8 error, not a different model
        assert (x - y).abs().mean() < 0.1 * y.abs().mean()
    sched = Scheduler.of(make_engine(tiny, int8=True, slots=2))
    r0, r1 = sched.rollouts[0], sched.join()
    got = [r0.reset(3).latent]
    r1.reset(9)
    for act in script:
        got.append(sched.step([(r0, act), (r1, act)])[0].latent)
    assert all(torch.equal(x, y) for x, y in zip(got, a, strict=True))


def test_int8_resolves_by_device_and_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_int8("off", "cpu", "fp32") == "off"
    assert resolve_int8("auto", "cpu", "bf16") == "off"
    assert resolve_int8("auto", "cuda", "fp32") == "off"
    assert resolve_int8("auto", "cpu", "fp32") == ("on" if int8_available() else "off")
    with pytest.raises(ValueError, match="--int8 on needs"):
        resolve_int8("on", "cpu", "bf16")
    with pytest.raises(ValueError, match="--int8 must be one of"):
        resolve_int8("yes", "cpu", "fp32")
    monkeypatch.setattr("kernels.int8_linear.int8_available", lambda: False)
    assert resolve_int8("auto", "cpu", "fp32") == "off"
    with pytest.raises(ValueError, match="fbgemm"):
        resolve_int8("on", "cpu", "fp32")
    with pytest.raises(ValueError, match="int8 linear layers need"):
        make_engine(EngineSpec(preset="tiny").config(), dtype=torch.bfloat16, int8=True)


def test_recordings_store_int8_and_old_ones_replay_in_float() -> None:
    spec = EngineSpec(preset="tiny", dtype="fp32", int8="auto")
    d = spec.describe()
    assert d["int8"] in ("on", "off") and EngineSpec.from_description(d).describe() == d
    old = {k: v for k, v in d.items() if k != "int8"}
    assert EngineSpec.from_description(old).int8 == "off"
    assert EngineSpec(preset="tiny", dtype="fp32").int8 == "off"  # the library default: float
