"""Carry cached training latents to another machine in a few MiB, and unpack them there.

The device machine only gets the working tree plus 64 MiB of carried files, and the latent cache
of the full dataset is ~400 MiB of fp16. ``pack`` stores chosen episodes (optionally their first
N frames) as uint8 with a per-episode, per-channel affine scale (quantisation RMS error ~1% of
a latent's std, well under the context noise level the model is trained with); ``unpack`` writes
a data folder that ``train world`` / ``train distill`` read as if it were the original: its
``index.jsonl`` rows, the latent cache, and empty placeholders for the shards (which are never
opened, because every episode's latents are cached).

    python scripts/pack_latents.py pack --data /work/data/doom --tokenizer-sha 111299f13127 \
        --episodes 0,9,... --frames 850 --out carry/latents.npz
    python scripts/pack_latents.py unpack carry/latents.npz --out /tmp/doom
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def pack(data: Path, sha12: str, episodes: list[int], frames: int, out: Path) -> None:
    rows = {r["episode"]: r for r in map(json.loads, (data / "index.jsonl").read_text().splitlines())}
    arrays: dict[str, np.ndarray] = {}
    kept = []
    for ep in episodes:
        # the bf16 cache, or the fp32 one a CPU without native bf16 encodes into (train/data.py latent_encoder):
        # the same tokenizer's latents either way, and 8-bit packing is coarser than their difference
        name = f"ep{ep:06d}.safetensors"
        caches = (data / "latents" / sha12, data / "latents" / f"{sha12}-fp32")
        found = [d / name for d in caches if (d / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{data}/latents/{sha12}[-fp32]/{name}: encode the data first (`train world`)")
        t = load_file(str(found[0]))
        lat = t["latents"].float()[:frames]  # (T, C, h, w)
        lo = lat.amin(dim=(0, 2, 3), keepdim=True)
        hi = lat.amax(dim=(0, 2, 3), keepdim=True)
        scale = (hi - lo).clamp_min(1e-6) / 255
        q = ((lat - lo) / scale).round().clamp(0, 255).to(torch.uint8)
        arrays[f"q{ep}"], arrays[f"lo{ep}"], arrays[f"scale{ep}"] = q.numpy(), lo.numpy(), scale.numpy()
        arrays[f"a{ep}"] = t["actions"][: len(lat)].numpy()
        err = float(((q.float() * scale + lo) - lat).pow(2).mean().sqrt())
        kept.append({**rows[ep], "frames": len(lat)})
        print(f"episode {ep} ({rows[ep]['map']}): {len(lat)} frames, quantisation RMS error {err:.4f}")
    arrays["index"] = np.frombuffer(json.dumps({"sha12": sha12, "rows": kept}).encode(), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")


def unpack(packed: Path, out: Path, tag: str = "") -> None:
    """Into the cache folder <sha12><tag> (train/data.py cache_tag: the one the training on this
    device reads)."""
    z = np.load(packed)
    doc = json.loads(z["index"].tobytes())
    cache = out / "latents" / (doc["sha12"] + tag)
    cache.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in doc["rows"]:
        ep = row["episode"]
        lat = torch.from_numpy(z[f"q{ep}"]).float() * torch.from_numpy(z[f"scale{ep}"]) + torch.from_numpy(z[f"lo{ep}"])
        save_file({"latents": lat.half().contiguous(), "actions": torch.from_numpy(z[f"a{ep}"]).contiguous()},
                  str(cache / f"ep{ep:06d}.safetensors"))
        shard = out / row["file"]
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.touch()  # placeholder: the latents above are cached, so the shard is never read
        lines.append(json.dumps(row))
    (out / "index.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(lines)} episodes, {sum(r['frames'] for r in doc['rows'])} frames")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--tokenizer-sha", required=True, help="the latent cache folder name (12 hex digits)")
    a.add_argument("--episodes", required=True, help="comma-separated episode numbers")
    a.add_argument("--frames", type=int, default=1_000_000, help="keep each episode's first N frames")
    a.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("unpack")
    b.add_argument("packed", type=Path)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--tag", default="", choices=["", "-fp32"], help="cache tag (train/data.py cache_tag)")
    args = p.parse_args()
    if args.cmd == "pack":
        pack(args.data, args.tokenizer_sha, [int(x) for x in args.episodes.split(",")], args.frames, args.out)
    else:
        unpack(args.packed, args.out, args.tag)


if __name__ == "__main__":
    main()
