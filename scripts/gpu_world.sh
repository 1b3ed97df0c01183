#!/usr/bin/env bash
# One call on a lent GPU (the `device` tool): fine-tune the copy-prior world model from the
# shipped weights on carried latents, and bring the weights back under $OUT.
#
# Here (the CPU machine), first pack latents small enough for the 64 MiB carry (see
# scripts/pack_latents.py), e.g. every 4th of the cached episodes' first 600 frames:
#     .venv/bin/python scripts/pack_latents.py pack --data /work/data/doom64 --tokenizer-sha 111299f13127 \
#         --episodes 0,4,8,... --frames 600 --out carry/latents.npz
# then run it on the device with carry=["carry"]:
#     bash scripts/gpu_world.sh            (STEPS=3000 BATCH=64 by default; ~10 min budget)
# The device image has torch but not gymnasium/ViZDoom: nothing here imports them (train.world
# is called directly, not through the `worldstream` command, whose `collect` needs the game).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
STEPS=${STEPS:-3000}
BATCH=${BATCH:-64}
INIT=${INIT:-assets/models/doom-small}
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
$PY scripts/pack_latents.py unpack carry/latents.npz --out /tmp/doom
$PY - "$STEPS" "$BATCH" "$INIT" "$OUT" "$DEVICE" <<'PYEOF' 2>&1 | tee "$OUT/train.log"
import sys
from train.world import WorldArgs, train_world
steps, batch, init, out, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
args = WorldArgs(data="/tmp/doom", tokenizer=init, out=f"{out}/run", init=init, copy_prior=True, copy_tau=0.7,
                 window=8, context_sigma=0.1, context_sigma_max=0.4, target_one=0.3, action_weight=3.0,
                 batch=batch, steps=steps, lr=3e-4, teacher_steps=2, checkpoint_every=max(steps // 6, 1),
                 held_out=1, device=device)
print(train_world(args, progress=False))
PYEOF
# Only the exported model comes back (the optimizer state is large and stays on the device).
rm -f "$OUT"/run/train/*.safetensors
ls -la "$OUT/run"
