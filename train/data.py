"""Training data from ``worldstream collect`` shards: frames for the tokenizer, latent clips for
the world model. Episodes are split into train / held-out by episode (never by frame: frames
of one episode are nearly duplicates of each other).

Latents are computed once per (data folder, tokenizer) and cached next to the shards::

    DIR/latents/<tokenizer sha256[:12]>/epNNNNNN.safetensors   latents (T, C, h, w) fp16, actions (T, 8)

so a resumed or repeated world-model run does not re-encode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from engine.precision import native_bf16
from engine.tokenizer import WEIGHTS as TOK_WEIGHTS
from engine.tokenizer import Tokenizer, TokenizerDecoder, load_tokenizer
from world.shards import load_shard, read_index


def episodes(data: str | Path) -> list[dict]:
    folder = Path(data)
    rows = sorted(read_index(folder), key=lambda r: r["episode"])
    if not rows:
        raise ValueError(f"{folder}: no shards (expected {folder}/index.jsonl from `worldstream collect`)")
    return rows


def split(rows: list[dict], held_out: int) -> tuple[list[dict], list[dict]]:
    """The last ``held_out`` episodes are held out (at least one episode stays for training)."""
    if len(rows) < 2:
        raise ValueError(f"need >= 2 episodes to hold one out, found {len(rows)}")
    k = min(max(1, held_out), len(rows) - 1)
    return rows[:-k], rows[-k:]


def load_frames(data: str | Path, rows: list[dict], every: int = 1, progress: bool = True) -> torch.Tensor:
    """All frames of ``rows`` (every ``every``-th), (T, H, W, 3) uint8."""
    out = []
    for row in tqdm(rows, desc="load frames", unit="ep", disable=not progress):
        frames, _ = load_shard(Path(data), row)
        out.append(torch.from_numpy(frames[::every]))
    return torch.cat(out)


@dataclass
class LatentEpisode:
    latents: torch.Tensor  # (T, C, h, w) float16, normalised
    actions: torch.Tensor  # (T, 8) float32; actions[t] = a_t (actions[0] is zeros)


def file_sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


Encoder = Callable[[torch.Tensor], torch.Tensor]


def encode_episodes(data: str | Path, rows: list[dict], encode: Encoder, tokenizer_sha: str,
                    batch: int = 64, progress: bool = True, tag: str = "") -> list[LatentEpisode]:
    """Latents of every episode in ``rows`` through ``encode`` ((B,H,W,3) uint8 -> (B,C,h,w)),
    cached under DIR/latents/<sha><tag>/ (written atomically per episode, so a killed run resumes)."""
    cache = Path(data) / "latents" / (tokenizer_sha[:12] + tag)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for row in tqdm(rows, desc="encode", unit="ep", disable=not progress):
        path = cache / f"ep{row['episode']:06d}.safetensors"
        if not path.is_file():
            frames, actions = load_shard(Path(data), row)
            lat = torch.cat([encode(torch.from_numpy(frames[i:i + batch])) for i in range(0, len(frames), batch)])
            tmp = path.with_suffix(".tmp")
            save_file({"latents": lat.half().contiguous(),
                       "actions": torch.from_numpy(actions.astype(np.uint8))}, str(tmp))
            tmp.replace(path)
        t = load_file(str(path))
        out.append(LatentEpisode(t["latents"], t["actions"].float()))
    return out


class ClipBank:
    """Episodes' latents and actions stacked into one tensor each, on the training device, so a
    batch of clips is one gather (no Python loop over clips, no host-to-device copy per step)."""

    def __init__(self, episodes: list[LatentEpisode], min_frames: int, device: torch.device) -> None:
        eps = [e for e in episodes if len(e.latents) >= min_frames]
        self.lengths = torch.tensor([len(e.latents) for e in eps], dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.weights = self.lengths.float()  # clips drawn in proportion to an episode's length
        self.latents = torch.cat([e.latents for e in eps]).to(device) if eps else torch.empty(0)
        self.actions = torch.cat([e.actions for e in eps]).to(device) if eps else torch.empty(0)

    def __len__(self) -> int:
        return len(self.lengths)


def cache_tag(device: torch.device) -> str:
    """The latent cache folder's tag on ``device``: "" (bf16, the format of every earlier cache)
    where the hardware has native bf16, "-fp32" elsewhere."""
    return "" if native_bf16(str(device)) else "-fp32"


def latent_encoder(tokenizer: Tokenizer, device: torch.device) -> tuple[TokenizerDecoder, str]:
    """(encoder, cache tag for ``encode_episodes``) on ``device``: bf16 where the hardware has it;
    fp32 elsewhere, in a cache of its own: emulated bf16 encoded at 250 s an episode on a 2-core
    AVX2 EPYC, against 17 s natively."""
    tag = cache_tag(device)
    encoder = TokenizerDecoder(tokenizer, device=device, dtype=torch.float32 if tag else torch.bfloat16)
    return encoder, tag


def load_latent_data(data: str, tok_dir: Path, held_out: int, device: torch.device,
                     progress: bool = True) -> tuple[list[LatentEpisode], list[LatentEpisode], dict[str, Any]]:
    """(train episodes, held-out episodes, metadata) of ``data`` as latents of the tokenizer in
    ``tok_dir`` (encoded once, then read from the cache next to the shards)."""
    tokenizer, tok_meta = load_tokenizer(tok_dir)
    encoder, tag = latent_encoder(tokenizer, device)
    train_rows, eval_rows = split(episodes(data), held_out)
    sha = file_sha(tok_dir / TOK_WEIGHTS)
    train_eps = encode_episodes(data, train_rows, encoder.encode, sha, progress=progress, tag=tag)
    eval_eps = encode_episodes(data, eval_rows, encoder.encode, sha, progress=progress, tag=tag)
    meta = {"data": str(data), "tokenizer": str(tok_dir), "tokenizer_sha256": sha, "tokenizer_meta": tok_meta,
            "train_episodes": len(train_eps), "train_frames": sum(len(e.latents) for e in train_eps),
            "held_out_episodes": [r["episode"] for r in eval_rows]}
    return train_eps, eval_eps, meta
