"""Start scenes: shipped, validated, used by play/record, replayed exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.scenes import DEFAULT_SCENE, GENERATED, SCENES_DIR, SceneStarter, load_scene, resolve_start, scene_names
from engine.engine import Engine


def test_shipped_scenes_load() -> None:
    names = scene_names()
    assert DEFAULT_SCENE in names and names[-1] == GENERATED and len(names) >= 5
    for name in names[:-1]:
        s = load_scene(name)
        assert s.frames.shape == (16, 120, 160, 3) and s.frames.dtype == np.uint8 and len(s.actions) == 15
        assert s.frames.std() > 10  # a real game view, not a flat image


def test_bad_scenes_are_refused_with_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    shutil.copytree(SCENES_DIR, folder)
    with pytest.raises(ValueError, match=r"unknown start scene 'nope'.*map01"):
        load_scene("nope", folder)
    png = folder / f"{DEFAULT_SCENE}.png"
    png.write_bytes(png.read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256 does not match"):
        load_scene(DEFAULT_SCENE, folder)
    index = json.loads((folder / "scenes.json").read_text())
    index["scenes"]["map03"]["file"] = "../../etc/passwd"
    (folder / "scenes.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="bad file name"):
        load_scene("map03", folder)
    (folder / "scenes.json").write_text("{")
    with pytest.raises(ValueError, match="unreadable"):
        scene_names(folder)


def test_resolve_start_and_reset() -> None:
    starter = SceneStarter()
    tiny = Engine.from_preset("tiny")
    assert resolve_start(None, tiny, starter) == GENERATED  # 16x12 frames: no scene fits
    with pytest.raises(ValueError, match="the model makes 16x12"):
        resolve_start(DEFAULT_SCENE, tiny, starter)
    small = Engine.from_preset("small")
    assert resolve_start(None, small, starter) == DEFAULT_SCENE
    a = starter.reset(small, 3, DEFAULT_SCENE)
    assert a.index == 15  # x_0..x_15 from the game; the model continues at t = 16
    assert small.step(load_scene(DEFAULT_SCENE).actions[0]).index == 16
    b = starter.reset(small, 3, DEFAULT_SCENE)
    assert np.array_equal(a.rgb, b.rgb)


def test_record_from_a_scene_replays_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.mp4"
    assert main(["record", "--preset", "small", "--start", "map05", "--seconds", "0.5", "--out", str(out),
                 "--json"]) == 0
    first = json.loads((tmp_path / "r.actions.jsonl").read_text().splitlines()[0])
    assert (first["event"], first["seed"], first["start"], first["t"]) == ("reset", 0, "map05", 15)
    capsys.readouterr()
    assert main(["record", "--replay", str(tmp_path / "r.actions.jsonl"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exact"] and result["identical"] == result["frames"]
    assert main(["record", "--preset", "small", "--start", "nope", "--out", str(out)]) == 2


def test_page_level_selector_restarts_at_the_chosen_scene(tmp_path: Path) -> None:
    """hello lists the scenes that fit the model; a reset naming one restarts there (its last
    context frame is the first one shown) and recordings replay it; a name the server does not
    offer is an error reply and the session goes on."""
    from fastapi.testclient import TestClient

    from app.engine_spec import EngineSpec
    from app.play.protocol import Record, Reset
    from app.play.server import ServeArgs, create_app

    spec = EngineSpec(preset="small", dtype="fp32")  # 160x120 frames, like the shipped scenes
    app = create_app(ServeArgs(recordings=str(tmp_path), max_sessions=1), spec, page=False)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
    assert hello["start"] == "map01" and hello["starts"][-1] == "generated" and "map05" in hello["starts"]

    hub = app.state.hub
    hub.executor.submit(lambda: None).result()  # the socket's last engine call has finished
    session = hub.open()
    session.start(seed=0)

    def reset(**kw: object) -> tuple[list[str], int | None]:
        session.command(Reset(**kw))  # type: ignore[arg-type]
        out = session.tick(False)
        return out.messages, out.frame.meta["index"] if out.frame else None

    assert reset(seed=1, start="map05") == ([], 15)  # 16 real frames of MAP05, the last one shown
    assert reset(seed=1) == ([], 15) and session.start_scene == "map05"  # Restart keeps the level
    assert reset(seed=1, start="generated") == ([], 0)
    messages, index = reset(seed=None, start="map99")
    assert index is None and "unknown start scene 'map99'" in json.loads(messages[0])["message"]
    session.command(Record(on=True))
    session.tick(False)
    reset(seed=2, start="map03")
    session.tick(True)
    session.command(Record(on=False))
    stopped = json.loads(session.tick(False).messages[0])
    actions = tmp_path / f"{stopped['id']}.actions.jsonl"
    assert any('"start": "map03"' in line for line in actions.read_text().splitlines())
    assert main(["record", "--replay", str(actions)]) == 0
