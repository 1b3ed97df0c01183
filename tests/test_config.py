"""Config: frozen dataclasses, strict parsing, presets."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import PRESETS, ConfigError, EngineConfig, ModelConfig, SamplerConfig, from_dict, get_preset, to_dict


def test_presets_roundtrip_and_shapes() -> None:
    assert set(PRESETS) >= {"tiny", "small", "nfd-310m"}
    for config in PRESETS.values():
        assert from_dict(EngineConfig, to_dict(config)) == config
    small = PRESETS["small"]
    assert (small.frame.width, small.frame.height, small.stride) == (160, 120, 8)
    assert small.model.tokens_per_frame == 80 and small.model.window_frames == 16


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny"].model.dim = 3  # type: ignore[misc]


def test_bad_values() -> None:
    base = to_dict(PRESETS["tiny"].model)
    with pytest.raises(ConfigError, match="dim"):
        ModelConfig(**{**base, "dim": 0})
    with pytest.raises(ConfigError, match="context_sigma"):
        ModelConfig(**{**base, "context_sigma": 1.5})
    with pytest.raises(ConfigError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplerConfig(temperature=-0.1)
    with pytest.raises(ConfigError, match="integer multiple"):
        EngineConfig(model=PRESETS["tiny"].model, frame=dataclasses.replace(PRESETS["tiny"].frame, height=13))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_from_dict_is_strict() -> None:
    with pytest.raises(ConfigError, match="expected an object"):
        from_dict(SamplerConfig, [1])
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(SamplerConfig, {"steps": True})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(SamplerConfig, {"steps": 1.5})
    assert from_dict(SamplerConfig, {"shift": 2}).shift == 2.0
