#!/usr/bin/env bash
# Fill carry/ (git-ignored) with what scripts/gpu_world.py needs on the device and the device image
# lacks: the ViZDoom + gymnasium wheels for its Python (3.12; ViZDoom without Freedoom 1 and the
# bundled scenarios, which collect never opens: 28 instead of 39 MiB), the --init checkpoint, and a
# small latent pack that is used only if the game cannot run there.
#     DATA=/work/data/doom64 bash scripts/gpu_carry.sh
# The working tree travels too and the whole is capped at 64 MiB: the call is made from a branch
# without docs/img and the two shipped models (see docs/training.md, "On a lent GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/work/data/doom64}
INIT=${INIT:-assets/models/doom-small-teacher}
mkdir -p carry/whl carry/init
grep -qx '/carry/' .git/info/exclude 2>/dev/null || echo '/carry/' >> .git/info/exclude
rm -f carry/whl/*.whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d carry/whl vizdoom==1.3.2 gymnasium==1.4.0 farama-notifications==0.0.4
zip -q -d carry/whl/vizdoom-*.whl 'vizdoom/freedoom1.wad'  # vizdoom's __init__ lists scenarios/: keep it
cp "$INIT"/config.json "$INIT"/model.safetensors "$INIT"/tokenizer.json "$INIT"/tokenizer.safetensors carry/init/
sha=$($PY -c "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest()[:12])" \
      carry/init/tokenizer.safetensors)
$PY scripts/pack_latents.py pack --data "$DATA" --tokenizer-sha "$sha" --episodes 0,1,2,3 --frames 500 \
    --out carry/latents.npz
du -sh carry carry/*
