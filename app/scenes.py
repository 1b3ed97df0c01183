"""Start scenes: a few real seconds of Doom that a rollout starts from, instead of a generated
first frame (which is a blur, and a copy-prior model keeps copying a blur).

A scene is K consecutive game frames x_0..x_{K-1} and the actions a_1..a_{K-1} between them,
rendered from ViZDoom by ``scripts/make_scenes.py``. They are stored as pixels, not latents, so a
scene works with any model's tokenizer::

    assets/scenes/scenes.json     {"format": "worldstream-scenes", "version": 1, "scenes": {NAME:
                                   {"file", "sha256", "frames", "height", "width", "actions",
                                   "wad", "map", "skill", "seed"}}}
    assets/scenes/NAME.png        the K frames stacked top to bottom (K*H x W RGB)

``load_scene`` checks the hash, the shape and the actions and raises ``ValueError`` with one
clear line for anything wrong. ``GENERATED`` is the option of a generated first frame.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.action import BUTTONS, Action
from engine.engine import Engine
from engine.types import Frame

SCENES_DIR = Path(__file__).resolve().parents[1] / "assets" / "scenes"
INDEX = "scenes.json"
FORMAT = "worldstream-scenes"
GENERATED = "generated"  # no scene: the model generates x_0
DEFAULT_SCENE = "map01"
MAX_FRAMES = 64


@dataclass(frozen=True)
class StartScene:
    name: str
    frames: np.ndarray  # (K, H, W, 3) uint8: x_0..x_{K-1}
    actions: tuple[Action, ...]  # a_1..a_{K-1}


def _index(folder: Path) -> dict[str, dict]:
    path = folder / INDEX
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: missing (no start scenes shipped)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
        raise ValueError(f"{path}: not a {FORMAT} v1 file")
    scenes = doc.get("scenes")
    if not isinstance(scenes, dict):
        raise ValueError(f"{path}: \"scenes\" must be an object")
    return scenes


def scene_names(folder: Path = SCENES_DIR) -> list[str]:
    """Names of the shipped scenes, plus ``GENERATED``."""
    return [*sorted(_index(folder)), GENERATED]


def load_scene(name: str, folder: Path = SCENES_DIR) -> StartScene:
    scenes = _index(folder)
    if name not in scenes:
        raise ValueError(f"unknown start scene {name!r}; choose one of {[*sorted(scenes), GENERATED]}")
    row = scenes[name]
    try:
        file, k, h, w = folder / str(row["file"]), int(row["frames"]), int(row["height"]), int(row["width"])
        names = [tuple(a) for a in row["actions"]]
        sha = str(row["sha256"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{folder / INDEX}: scene {name!r} lacks file/frames/height/width/actions/sha256") from None
    if file.parent != folder or not 1 <= k <= MAX_FRAMES:
        raise ValueError(f"{folder / INDEX}: scene {name!r} has a bad file name or frame count")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ValueError(f"{file}: unreadable ({e.strerror or e})") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise ValueError(f"{file}: sha256 does not match {INDEX} (corrupt or edited scene)")
    with Image.open(file) as img:
        frames = np.array(img.convert("RGB"))  # a writable copy (torch.from_numpy needs one)
    if frames.shape != (k * h, w, 3):
        raise ValueError(f"{file}: {frames.shape[1]}x{frames.shape[0]} pixels, expected {w}x{k * h} ({k} frames)")
    if len(names) != k - 1 or any(b not in BUTTONS for a in names for b in a):
        raise ValueError(f"{folder / INDEX}: scene {name!r} needs {k - 1} actions, each a list of {list(BUTTONS)}")
    return StartScene(name, frames.reshape(k, h, w, 3), tuple(Action.of(*a) for a in names))


class SceneStarter:
    """Resets engines at a scene; each scene is encoded once per decoder and kept."""

    def __init__(self, folder: Path = SCENES_DIR) -> None:
        self.folder = folder
        self._latents: dict[tuple[str, int], tuple[torch.Tensor, tuple[Action, ...]]] = {}

    def check(self, name: str) -> None:
        """Raise ``ValueError`` now (at start-up) for a scene that cannot be used."""
        if name != GENERATED:
            load_scene(name, self.folder)

    def reset(self, engine: Engine, seed: int, scene: str) -> Frame:
        if scene == GENERATED:
            return engine.reset(seed)
        key = (scene, id(engine.decoder))
        if key not in self._latents:
            s = load_scene(scene, self.folder)
            f = engine.config.frame
            if s.frames.shape[1:3] != (f.height, f.width):
                raise ValueError(f"scene {scene!r} is {s.frames.shape[2]}x{s.frames.shape[1]}, "
                                 f"the model makes {f.width}x{f.height} frames")
            latents = engine.decoder.encode(torch.from_numpy(s.frames).to(engine.device))
            self._latents[key] = (latents, s.actions)
        latents, actions = self._latents[key]
        return engine.reset(seed, context=latents, context_actions=list(actions))


def available_starts(engine: Engine, starter: SceneStarter) -> tuple[str, ...]:
    """The scenes a player may pick for this model: shipped scenes of its frame size, then
    ``GENERATED``. A scene that does not load is left out (``check``/``resolve_start`` name it)."""
    f = engine.config.frame
    names: list[str] = []
    try:
        shipped = [n for n in scene_names(starter.folder) if n != GENERATED]
    except ValueError:
        shipped = []
    for name in shipped:
        try:
            scene = load_scene(name, starter.folder)
        except ValueError:
            continue
        if scene.frames.shape[1:3] == (f.height, f.width):
            names.append(name)
    return (*names, GENERATED)


def resolve_start(requested: str | None, engine: Engine, starter: SceneStarter) -> str:
    """The scene a front end starts rollouts from. ``None`` (not asked for): ``DEFAULT_SCENE``
    when it fits the model's frame size, else ``GENERATED`` (e.g. the tiny test presets). A
    named scene must exist and fit: ``ValueError`` otherwise, at start-up, not at first play."""
    f = engine.config.frame
    if requested is None:
        try:
            scene = load_scene(DEFAULT_SCENE, starter.folder)
        except ValueError:
            return GENERATED
        return DEFAULT_SCENE if scene.frames.shape[1:3] == (f.height, f.width) else GENERATED
    if requested != GENERATED:
        scene = load_scene(requested, starter.folder)
        if scene.frames.shape[1:3] != (f.height, f.width):
            raise ValueError(f"start scene {requested!r} is {scene.frames.shape[2]}x{scene.frames.shape[1]}, "
                             f"the model makes {f.width}x{f.height} frames")
    return requested
