"""Action accuracy: the inverse-dynamics model learns which buttons move the view, is saved and
loaded as safetensors + JSON, scores per button; eval reports it with bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from eval.idm import BUNDLED, accuracy, confusion, load_idm, predict, train_idm
from world.shards import append_index, write_shard

LEFT, RIGHT = 4, 5  # engine.action.BUTTONS: turn_left, turn_right


def _synthetic(folder: Path, episodes: int = 16, frames: int = 100) -> None:
    """Views of a wide random texture: turn_left pans one way, turn_right the other, else still."""
    g = np.random.default_rng(0)
    for ep in range(episodes):
        world = g.integers(0, 256, (6, 100, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)  # (24, 400, 3)
        pos, out, acts = 100, [], np.zeros((frames, 8), np.uint8)
        for t in range(frames):
            if t:
                button = int(g.integers(0, 3))  # 0: nothing, 1: left, 2: right
                if button:
                    acts[t, LEFT if button == 1 else RIGHT] = 1
                    pos += -4 if button == 1 else 4
            out.append(world[:, pos : pos + 32])
        append_index(folder, write_shard(folder, ep, np.stack(out), acts, {"episode": ep}))


def test_idm_learns_which_way_the_view_turned(tmp_path: Path) -> None:
    _synthetic(tmp_path / "data")
    meta = train_idm(tmp_path / "data", tmp_path / "idm", epochs=12, batch=32, lr=3e-3)
    val = meta["validation"]
    assert val["turn_left"]["balanced"] > 0.75 and val["turn_right"]["balanced"] > 0.75, val  # chance: 0.5
    assert val["use"]["balanced"] is None  # never pressed: no hit rate, said so instead of a number
    model = load_idm(tmp_path / "idm")
    still = np.zeros((5, 24, 32, 3), np.uint8)
    assert not predict(model, still)[:, [LEFT, RIGHT]].any()  # nothing moves: no turn
    with pytest.raises(ValueError, match="no IDM"):
        load_idm(tmp_path)


def test_confusion_and_accuracy_by_hand() -> None:
    pred = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], bool)
    truth = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], bool)
    counts = confusion(pred, truth)
    assert counts["forward"] == [1, 1, 0, 1]  # tp, fp, tn, fn
    acc = accuracy(counts)["forward"]
    assert acc["accuracy"] == pytest.approx(1 / 3) and acc["balanced"] == pytest.approx((0.5 + 0.0) / 2)


@pytest.mark.skipif(not (BUNDLED / "idm.json").is_file(), reason="no shipped IDM")
def test_eval_reports_action_accuracy_between_floor_and_ceiling(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """copy-last shows no motion: the shipped IDM must find the game's turns in the true frames
    and not in copy-last's frames; intervals come with the means."""
    assert main(["eval", "--predictor", "copy-last", "--episodes", "3", "--seconds", "8", "--out", str(tmp_path),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    acc = summary["action_accuracy"]
    for button in ("turn_left", "turn_right"):
        assert acc["truth"][button]["balanced"] > 0.8 > acc["predictor"][button]["balanced"] + 0.2, acc
    lo, hi = summary["ci95"]["psnr@1s"]
    assert lo <= summary["mean"]["all"]["psnr@1s"] <= hi
    text = (tmp_path / "summary.md").read_text()
    assert "Action accuracy" in text and "95% interval" in text
