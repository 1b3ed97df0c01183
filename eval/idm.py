"""Action accuracy: an inverse-dynamics model (IDM) reads two consecutive frames and says which
buttons were pressed between them. Run on generated frames, it scores whether a world model
follows the actions it was given; run on the game's own frames, it gives the ceiling; on
copy-last (nothing moves), the floor.

The IDM is a small CNN trained here on collected episodes (``worldstream train idm``; shards of
``worldstream collect``), saved as safetensors + JSON (assets/models/idm/). Input: x_{t-1} and x_t
at half resolution plus their difference; output: 8 logits, one per button (multi-label).
Scores are per button: accuracy, and balanced accuracy (the mean of the hit rate on frames where
the button was pressed and the correct-rejection rate where it was not): "use" is pressed on a
few percent of frames, so plain accuracy says little about it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from engine.action import BUTTONS, NUM_BUTTONS
from engine.files import read_json_doc, save_pair

FORMAT = "worldstream-idm"
WEIGHTS, CONFIG = "idm.safetensors", "idm.json"
BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "models" / "idm"


@dataclass(frozen=True)
class IdmConfig:
    width: int = 32  # channels of the first conv; doubled twice
    height: int = 120  # frame size it was trained at
    frame_width: int = 160


class InverseDynamics(nn.Module):
    def __init__(self, cfg: IdmConfig = IdmConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.net = nn.Sequential(
            nn.Conv2d(9, w, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(),
        )
        self.head = nn.Linear(4 * w, NUM_BUTTONS)

    @staticmethod
    def inputs(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """Two (B, H, W, 3) uint8 frame batches -> (B, 9, H/2, W/2) float input."""
        a = F.avg_pool2d(prev.permute(0, 3, 1, 2).float() / 255.0, 2)
        b = F.avg_pool2d(cur.permute(0, 3, 1, 2).float() / 255.0, 2)
        return torch.cat([a, b, 4.0 * (b - a)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x).mean(dim=(2, 3)))


# ---------------------------------------------------------------------------- files
def save_idm(folder: str | Path, model: InverseDynamics, meta: dict[str, Any]) -> Path:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    doc = {"format": FORMAT, "version": 1, "idm": asdict(model.cfg), "buttons": list(BUTTONS), "meta": meta}
    save_pair(path, WEIGHTS, tensors, CONFIG, doc)
    return path


def load_idm(folder: str | Path) -> InverseDynamics:
    path = Path(folder)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise ValueError(f"{path}: no IDM ({CONFIG} + {WEIGHTS}); train one with `worldstream train idm`")
    doc = read_json_doc(path / CONFIG, "worldstream IDM", FORMAT, 1, ValueError)
    if doc.get("buttons") != list(BUTTONS):
        raise ValueError(f"{path / CONFIG}: an IDM for other buttons ({doc.get('buttons')})")
    model = InverseDynamics(IdmConfig(**doc["idm"]))
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------- scoring
@torch.inference_mode()
def predict(model: InverseDynamics, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """(T+1, H, W, 3) uint8 -> (T, 8) bool: buttons pressed between frame t-1 and t."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    out = []
    for i in range(1, len(x), batch):
        prev, cur = x[i - 1 : i - 1 + batch], x[i : i + batch]
        prev = prev[: len(cur)]
        out.append(model(InverseDynamics.inputs(prev, cur)) > 0)
    return torch.cat(out).numpy() if out else np.zeros((0, NUM_BUTTONS), bool)


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict[str, list[int]]:
    """Per button [true positives, false positives, true negatives, false negatives]."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    return {b: [int((pred[:, i] & truth[:, i]).sum()), int((pred[:, i] & ~truth[:, i]).sum()),
                int((~pred[:, i] & ~truth[:, i]).sum()), int((~pred[:, i] & truth[:, i]).sum())]
            for i, b in enumerate(BUTTONS)}


def add_confusion(total: dict[str, list[int]], part: dict[str, list[int]]) -> dict[str, list[int]]:
    for b, counts in part.items():
        total[b] = [x + y for x, y in zip(total.get(b, [0, 0, 0, 0]), counts, strict=True)]
    return total


def accuracy(counts: dict[str, list[int]]) -> dict[str, dict[str, float | None]]:
    """Per button: accuracy, balanced accuracy (None where a class never occurs), pressed share."""
    out: dict[str, dict[str, float | None]] = {}
    for b, (tp, fp, tn, fn) in counts.items():
        n = tp + fp + tn + fn
        hit = tp / (tp + fn) if tp + fn else None
        reject = tn / (tn + fp) if tn + fp else None
        out[b] = {"accuracy": (tp + tn) / n if n else None,
                  "balanced": (hit + reject) / 2 if hit is not None and reject is not None else None,
                  "pressed": (tp + fn) / n if n else None}
    return out


# ---------------------------------------------------------------------------- training
def _pairs(folder: Path, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from world.shards import load_shard

    frames, labels, starts = [], [], []
    n = 0
    for row in rows:
        f, a = load_shard(folder, row)
        frames.append(torch.from_numpy(f))
        labels.append(torch.from_numpy(a[1:].astype(np.float32)))
        starts.append(torch.arange(n, n + len(f) - 1))  # index of x_{t-1} in the concatenation
        n += len(f)
    return torch.cat(frames), torch.cat(labels), torch.cat(starts)


def _batches(order: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(order) - size + 1, size):
        yield order[i : i + size]


def train_idm(data: str | Path, out: str | Path, epochs: int = 4, batch: int = 64, lr: float = 2e-3,
              seed: int = 0, val_share: float = 0.1) -> dict[str, Any]:
    """Train on the shards in ``data`` (episodes split into train / validation), save to ``out``;
    returns the validation scores."""
    from world.shards import read_index

    folder = Path(data)
    rows = read_index(folder)
    if len(rows) < 2:
        raise ValueError(f"{folder}: needs at least 2 collected episodes, found {len(rows)}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(rows), generator=g).tolist()
    n_val = max(1, round(val_share * len(rows)))
    val_rows, train_rows = [rows[i] for i in perm[:n_val]], [rows[i] for i in perm[n_val:]]
    frames, labels, starts = _pairs(folder, train_rows)
    model = InverseDynamics()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * (len(starts) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    pos = labels.mean(0).clamp(0.01, 0.99)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=((1 - pos) / pos).sqrt())  # rare buttons count more
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc="train idm", unit="step", file=sys.stderr, disable=None)
    for epoch in range(epochs):
        for pairs in _batches(torch.randperm(len(starts), generator=g), batch):
            idx = starts[pairs]  # x_{t-1}; x_t follows it
            x = InverseDynamics.inputs(frames[idx], frames[idx + 1])
            loss = loss_fn(model(x), labels[pairs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        print(f"train idm: epoch {epoch + 1}/{epochs} done, last loss {loss.item():.4f}", file=sys.stderr, flush=True)
    bar.close()
    model.eval().requires_grad_(False)
    from world.shards import load_shard

    counts: dict[str, list[int]] = {}
    for row in val_rows:
        f, a = load_shard(folder, row)
        add_confusion(counts, confusion(predict(model, f), a[1:]))
    scores = accuracy(counts)
    meta = {"data": str(folder), "episodes_train": len(train_rows), "episodes_val": len(val_rows),
            "pairs_train": len(starts), "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1),
            "validation": scores}
    save_idm(out, model, meta)
    return meta
