"""Checkpoints: round trip, and a clear error for every way a checkpoint can be broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.checkpoint import CheckpointError, load_config, save_checkpoint
from engine.config import EngineConfig
from engine.engine import Engine
from tests.conftest import action_script, make_model


@pytest.fixture
def ckpt(tmp_path: Path, tiny: EngineConfig) -> Path:
    return save_checkpoint(tmp_path / "ckpt", tiny, make_model(tiny).state_dict(), meta={"note": "test"})


def test_roundtrip_gives_identical_rollouts(ckpt: Path, tiny: EngineConfig) -> None:
    config, meta = load_config(ckpt)
    assert config == tiny and meta == {"note": "test"}
    a = Engine.build(tiny, make_model(tiny))
    b = Engine.from_checkpoint(ckpt)
    fa = [a.reset(4), *a.stream(action_script(6))]
    fb = [b.reset(4), *b.stream(action_script(6))]
    assert all(torch.equal(x.latent, y.latent) for x, y in zip(fa, fb, strict=True))
    assert not list(ckpt.glob("*.tmp"))


def test_bf16_checkpoint_loads(tmp_path: Path, tiny: EngineConfig) -> None:
    path = save_checkpoint(tmp_path / "bf16", tiny, make_model(tiny).state_dict(), dtype=torch.bfloat16)
    engine = Engine.from_checkpoint(path)
    assert engine.runner.model.patch_in.weight.dtype == torch.float32


def _rewrite_config(ckpt: Path, edit) -> None:
    doc = json.loads((ckpt / "config.json").read_text())
    edit(doc)
    (ckpt / "config.json").write_text(json.dumps(doc))


def test_missing_folder_and_files(tmp_path: Path, ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="folder not found"):
        Engine.from_checkpoint(tmp_path / "nope")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        Engine.from_checkpoint(ckpt)


def test_truncated_weights(ckpt: Path) -> None:
    data = (ckpt / "model.safetensors").read_bytes()
    for cut in (4, 100, len(data) - 10):
        (ckpt / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="unreadable or truncated"):
            Engine.from_checkpoint(ckpt)


def test_bad_json_and_config(ckpt: Path) -> None:
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_config(ckpt)
    (ckpt / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="not a worldstream checkpoint"):
        load_config(ckpt)


def test_config_errors_are_clear(tmp_path: Path, tiny: EngineConfig) -> None:
    cases = {
        "version": (lambda d: d.update(version=99), "unsupported version"),
        "unknown": (lambda d: d["engine"]["model"].update(colour=3), r"unknown key\(s\) \['colour'\]"),
        "missing": (lambda d: d["engine"]["model"].pop("dim"), "missing key 'dim'"),
        "type": (lambda d: d["engine"]["model"].update(depth="2"), r"engine\.model\.depth: expected int"),
        "value": (lambda d: d["engine"]["model"].update(heads=3), "divisible by heads"),
        "sampler": (lambda d: d["engine"]["sampler"].update(kind="ddim"), "sampler.kind"),
    }
    for name, (edit, message) in cases.items():
        path = save_checkpoint(tmp_path / name, tiny, make_model(tiny).state_dict())
        _rewrite_config(path, edit)
        with pytest.raises(CheckpointError, match=message):
            Engine.from_checkpoint(path)


def test_weights_that_do_not_match_the_config(ckpt: Path, tiny: EngineConfig) -> None:
    state = make_model(tiny).state_dict()
    broken = dict(state)
    broken.pop("patch_in.weight")
    save_file(broken, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \['patch_in.weight'\]"):
        Engine.from_checkpoint(ckpt)
    broken = dict(state)
    broken["patch_in.weight"] = torch.zeros(3, 3)
    save_file(broken, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"patch_in.weight has shape \(3, 3\)"):
        Engine.from_checkpoint(ckpt)
    broken = dict(state)
    broken["patch_in.bias"] = torch.zeros_like(state["patch_in.bias"], dtype=torch.int32)
    save_file(broken, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="expected a float dtype"):
        Engine.from_checkpoint(ckpt)
