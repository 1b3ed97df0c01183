"""``worldstream`` command line: parses arguments at the edge and calls the front ends."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from app.engine_spec import EngineSpec, default_model
from app.play.recorder import describe_error
from engine.checkpoint import CheckpointError
from engine.config import PRESETS, ConfigError
from engine.precision import INT8_CHOICES
from world.maps import DEFAULT_MAPS, UNSEEN_MAPS, parse_maps

# Resolved against the source tree (make installs it editable), not the working directory.
DEFAULT_SUITE = str(Path(__file__).resolve().parents[1] / "assets" / "eval" / "doom-minute.json")


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure engine speed (FPS, per-stage ms, cache speed-up)",
                       description="Measure the engine loop: FPS and per-stage milliseconds with "
                       "the KV cache, and the speed-up over recomputing the window each frame.")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="model shape with random weights")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="checkpoint folder (overrides --preset; default: the bundled assets/models/doom-small)")
    p.add_argument("--frames", type=int, default=100, help="timed frames (default: 100)")
    p.add_argument("--warmup", type=int, default=None, help="untimed frames first (default: sink+window+2)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps per frame (default: the config's)")
    p.add_argument("--sampler", choices=["euler", "consistency"], default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto (default): bf16 where the hardware has native bf16 matrix math, else fp32")
    p.add_argument("--attention", choices=["auto", "sdpa", "flex", "xformers", "reference"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model step")
    _int8_arg(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--no-recompute", dest="recompute", action="store_false",
                   help="skip the no-cache baseline (no cache_speedup)")
    p.add_argument("--recompute-frames", type=int, default=None,
                   help="timed frames of the no-cache baseline (default: min(frames, 30))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", type=_items, default=(), metavar="LIST",
                   help="also time these sampler settings in the same run, e.g. 1,2,4,euler:16")
    p.add_argument("--sessions", type=int, default=1,
                   help="also time N rollouts stepped together (one batched forward a tick) vs one alone")
    p.add_argument("--speculate", type=int, default=0, metavar="K",
                   help="also replay --trace in real time drafting K frames ahead vs not: latency, acceptance")
    p.add_argument("--hold", type=int, default=1, help="ticks an action must be held before drafting (default 1)")
    p.add_argument("--no-batch-invariant", dest="batch_invariant", action="store_false",
                   help="batch the linear layers and decode across rollouts (faster; a rollout's frames then "
                        "depend on its batch in the last bits, and live recordings may not replay exactly)")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="actions for --speculate: an eval suite .json (episode 0) or a recording's .actions.jsonl "
                        "(default: assets/eval/doom-minute.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _int8_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", choices=list(INT8_CHOICES), default="auto",
                   help="block linear layers in int8 (CPU, fp32): auto (default) = on where it runs, on, off")


def _maps(text: str) -> tuple[str, ...]:
    try:
        return parse_maps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _world_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="play Doom with an exploration policy and write training shards",
                       description="Collect training data: one compressed .npz shard per episode, listed "
                       "in DIR/index.jsonl. Rerunning with the same arguments resumes.")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True, help="length of each episode")
    p.add_argument("--seed", type=int, required=True, help="run seed; episode i uses game seed seed*100000+i")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--maps", type=_maps, default=DEFAULT_MAPS, help="default: MAP01..MAP08")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--skill", type=int, default=3)
    p.add_argument("--wad", default="freedoom2", choices=["freedoom2", "freedoom1"])
    p.add_argument("--json", action="store_true", help="print the stats as JSON")

    p = sub.add_parser("replay", help="render an eval episode's ground truth to MP4")
    p.add_argument("suite", nargs="?", default=DEFAULT_SUITE)
    p.add_argument("--episode", type=int, required=True, help="episode number (0-based)")
    p.add_argument("--out", required=True, metavar="FILE.mp4")

    p = sub.add_parser("eval", help="score a predictor on an eval suite (PSNR/SSIM/sharpness at 1-60 s)",
                       description="Open-loop rollouts from ground-truth context with ground-truth "
                       "actions; PSNR, SSIM, sharpness ratio and colour-histogram distance per frame, at "
                       "horizons 1, 5, 10, 30, 60 s. --mode next-frame: teacher-forced +1 frame; --mode round-trip: "
                       "the tokenizer's own encode -> decode of those frames.")
    p.add_argument("--suite", action="append", default=None, metavar="FILE",
                   help="eval suite (repeat for several; default: assets/eval/doom-minute.json)")
    p.add_argument("--predictor", action="append", default=None, help="baseline: copy-last | mean-frame (repeatable)")
    p.add_argument("--model", action="append", default=None, metavar="PATH", help="checkpoint folder (repeatable)")
    p.add_argument("--preset", action="append", default=None, choices=sorted(PRESETS),
                   help="random weights (plumbing check; repeatable)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="results; with several predictors or suites, one folder per pair + report.md")
    p.add_argument("--episodes", type=int, default=None, help="first N episodes (default: all)")
    p.add_argument("--seconds", type=float, default=None, help="score the first S seconds (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--sampler", choices=["euler", "consistency"], default=None, help="default: the model's")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto (default): bf16 where the hardware has native bf16 matrix math, else fp32")
    _int8_arg(p)
    p.add_argument("--mode", choices=["open-loop", "next-frame", "round-trip"], default="open-loop",
                   help="open-loop rollouts (default), teacher-forced next-frame prediction, or round-trip: "
                        "the --model's tokenizer encoding and decoding the true frames next-frame scores "
                        "(the ceiling of a latent model; no prediction)")
    p.add_argument("--starts", type=int, default=24, help="next-frame and round-trip: start points per episode")
    p.add_argument("--workers", type=int, default=1, help="local processes scoring episodes in parallel")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="score in --workers Ray actors on this cluster ('local': start one here; needs "
                        "the optional extra ray)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: all cores serially, cores // workers with "
                        "--workers); results are identical across runs with the same --threads")
    p.add_argument("--fd", default="auto", metavar="PATH|auto|none",
                   help="Fréchet distance per horizon with this tokenizer's encoder features (default auto: "
                        "the bundled model's; none: off)")
    p.add_argument("--idm", default="auto", metavar="PATH|auto|none",
                   help="action accuracy with this inverse-dynamics model (default auto: the bundled "
                        "assets/models/idm if present; none: off)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("eval-report", help="rebuild report.md and plots from stored eval results",
                       description="One report over every eval run under DIR (tables with 95% intervals, "
                       "action accuracy, metric-vs-time plots with bands); nothing is re-run.")
    p.add_argument("folder", metavar="DIR")

    p = sub.add_parser("eval-videos", help="score a folder of MP4s without ground truth: VDE drift, clarity, ...",
                       description="LV-Bench-style drift of any videos (yours, another model's): per-frame "
                       "clarity, motion smoothness, dynamics, subject/background consistency; VDE per metric "
                       "over --chunks equal chunks. Results: one JSON line per video, written as each "
                       "finishes; a re-run resumes; an unreadable video is marked failed (eval/videos.py).")
    p.add_argument("folder", metavar="DIR", help="folder searched for *.mp4 (recursively)")
    p.add_argument("--out", default=None, metavar="FILE.jsonl", help="default: DIR/eval-videos.jsonl")
    p.add_argument("--chunks", type=int, default=10, help="VDE chunks N (default: 10)")
    p.add_argument("--weights", choices=["linear", "log"], default="linear",
                   help="VDE weights: linear w_i = N - i + 1 (default) or log w_i = ln(N - i + 2)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="folder with the tokenizer whose encoder gives the consistency features "
                        "(default: the bundled model's)")
    p.add_argument("--no-features", action="store_true", help="skip the consistency metrics")
    p.add_argument("--size", default="160x120", metavar="WxH",
                   help="analysis size every video is resized to (area averaging), so clarity compares "
                        "across resolutions; 'native' keeps each as stored (default: 160x120)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = sub.add_parser("make-suite", help="build an eval suite file (held-out seeds; maintainers)")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.add_argument("--maps", type=_maps, default=DEFAULT_MAPS + UNSEEN_MAPS)
    p.add_argument("--unseen-maps", type=_maps, default=UNSEEN_MAPS,
                   help="maps not in the default training maps (labelled split=unseen-map)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--context-frames", type=int, default=16)
    p.add_argument("--skill", type=int, default=3)


def _train_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the tokenizer and the world model (resumable)",
                       description="Training. Every run checkpoints into --out/train and resumes "
                       "from there when started again with the same --out.")
    which = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    t = which.add_parser("tokenizer", help="the frame <-> latent autoencoder")
    t.add_argument("--data", required=True, metavar="DIR", help="shards from `worldstream collect`")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--held-out", type=int, default=4, help="episodes held out for evaluation")
    t.add_argument("--device", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--every", type=int, default=3,
                   help="use every n-th training frame (neighbouring frames are near duplicates)")
    t.add_argument("--max-minutes", type=float, default=0.0,
                   help="wall-clock budget: stop, checkpoint and end the LR schedule by then (default 0: none)")
    t.add_argument("--edge", type=float, default=0.0, metavar="W",
                   help="add W times the gradient difference (| |d rec| - |d x| | between neighbouring pixels): "
                        "a soft edge costs where squared error settles for blur (default 0: off)")
    t.add_argument("--adv", type=float, default=0.0, metavar="W",
                   help="a pixel PatchGAN judges the reconstructions; the decoder also learns to fool it, at W "
                        "times the reconstruction's pull on its last layer (default 0: no critic)")
    t.add_argument("--critic-lr", type=float, default=2e-4, help="the critic's learning rate (with --adv)")
    t.add_argument("--init", default=None, metavar="DIR", help="start from this tokenizer")
    t.add_argument("--decoder-only", action="store_true",
                   help="fine-tune the decoder alone (needs --init): latents, and models trained on them, stay valid")

    i = which.add_parser("idm", help="the inverse-dynamics model that scores action accuracy (eval/idm.py)")
    i.add_argument("--data", required=True, metavar="DIR", help="shards from `worldstream collect`")
    i.add_argument("--out", required=True, metavar="DIR", help="e.g. assets/models/idm")
    i.add_argument("--epochs", type=int, default=4)
    i.add_argument("--batch", type=int, default=64)
    i.add_argument("--lr", type=float, default=2e-3)
    i.add_argument("--seed", type=int, default=0)

    w = which.add_parser("world", help="the block-causal DiT teacher (flow matching)")
    w.add_argument("--data", required=True, metavar="DIR", help="shards from `worldstream collect`")
    w.add_argument("--tokenizer", required=True, metavar="DIR", help="output of `train tokenizer`")
    w.add_argument("--out", required=True, metavar="DIR")
    w.add_argument("--preset", default="small", choices=sorted(PRESETS))
    w.add_argument("--steps", type=int, default=3000)
    w.add_argument("--batch", type=int, default=4, help="clips per step")
    w.add_argument("--frames", type=int, default=0, help="clip length (default: sink + window + 1)")
    w.add_argument("--lr", type=float, default=3e-4)
    w.add_argument("--held-out", type=int, default=4, help="episodes held out for evaluation")
    w.add_argument("--context-sigma", type=float, default=0.05, help="noise level of context at inference")
    w.add_argument("--context-sigma-max", type=float, default=0.15,
                   help="context frames in training are noised at sigma ~ U(0, this), the level given to the model")
    w.add_argument("--copy-prior", action="store_true",
                   help="each frame reads its predecessor; the denoiser defaults to copying it")
    w.add_argument("--copy-tau", type=float, default=0.5, help="copy prior: std of a frame's change (latent units)")
    w.add_argument("--copy-denoised", action="store_true",
                   help="copy prior: copy the predecessor's posterior mean, not the noisy context (a rollout of copies "
                        "keeps its contrast instead of fading by the context level every frame)")
    w.add_argument("--copy-shift", type=_copy_shift, default=(), metavar="auto|D,D,...",
                   help="copy prior and --carry: pan the predecessor by the action, a whole number of latent cells "
                        "per button (one per action, comma-separated) or 'auto' (measured from the training latents); "
                        "default: no pan")
    w.add_argument("--copy-shift-rows", type=int, default=0,
                   help="copy prior: pan only the top N latent rows (default 0: all; 'auto' measures it)")
    w.add_argument("--window", type=int, default=0, help="frames attended besides sinks (default: the preset's)")
    w.add_argument("--target-one", type=float, default=0.0,
                   help="share of targets at sigma 1, where a 1-step sampler starts (default 0)")
    w.add_argument("--self-prob", type=float, default=0.0,
                   help="share of clips whose last history frames are the model's own 1-step samples (default 0)")
    w.add_argument("--self-frames", type=int, default=3, help="self-generated history frames in such a clip")
    w.add_argument("--bf16", action="store_true", help="autocast the forward in bfloat16 (default: fp32)")
    w.add_argument("--teacher-steps", type=int, default=16, help="Euler steps of the exported teacher")
    w.add_argument("--loss", choices=["l2", "l1", "energy", "crps"], default="l2",
                   help="copy prior: squared error (the mean), absolute error (the median), or the energy score "
                        "of two samples per frame (energy) or per latent value (crps): a generator that samples")
    w.add_argument("--gdl", type=float, default=0.0,
                   help="copy prior: weight of a gradient-difference loss that makes blur cost (default 0)")
    w.add_argument("--stats", type=float, default=0.0,
                   help="copy prior: weight of a loss on each predicted frame's per-channel mean, spread and "
                        "neighbour differences against the truth's: fading costs wherever the content is (default 0)")
    w.add_argument("--anchor", type=float, default=0.0,
                   help="the statistics anchor (model.stats_anchor, 0..1): written into the model's config and "
                        "applied to the self-forced history frames as a rollout applies it (default 0: off)")
    w.add_argument("--carry", type=float, default=0.0,
                   help="the detail carry (model.detail_carry, 0..1): each frame's texture is its predecessor's, "
                        "panned by the action; written into the config and applied to the self-forced history "
                        "frames as a rollout applies it (default 0: off)")
    w.add_argument("--conv-head", type=int, default=0, metavar="CHANNELS",
                   help="a residual CNN of this many channels on the latent grid corrects the DiT's output "
                        "(model.conv_head; it starts at zero, so an --init model is unchanged at step 0; "
                        "default 0: none)")
    w.add_argument("--train-only", choices=["all", "head", "output"], default="all",
                   help="'head': train only the conv head, the DiT frozen (needs --conv-head and --init; no "
                        "backward through the DiT); 'output': only the DiT's output layers (the linear control)")
    w.add_argument("--adv", type=float, default=0.0,
                   help="adversarial term: a patch critic on latent frames judges the 1-step predictions; its "
                        "gradient at the output layer is this times the reconstruction's (needs --target-one > 0; "
                        "default 0: no critic)")
    w.add_argument("--critic-lr", type=float, default=2e-4, help="the critic's learning rate (with --adv)")
    w.add_argument("--critic-steps", type=int, default=1, help="critic updates per model step (with --adv)")
    w.add_argument("--critic-cond", action="store_true",
                   help="the critic judges (frame, predecessor) pairs: a plausible next frame of the one before, "
                        "not just a plausible frame (pix2pix's conditional critic; with --adv)")
    w.add_argument("--critic-pixels", action="store_true",
                   help="the critic judges frames decoded to pixels by the frozen tokenizer, not latents "
                        "(a ~60-pixel PatchGAN; with --adv)")
    w.add_argument("--max-minutes", type=float, default=0.0,
                   help="wall-clock budget: stop, checkpoint and end the LR schedule by then (default 0: none)")
    w.add_argument("--action-weight", type=float, default=1.0,
                   help="loss weight of frames just after an action change (default: 1, no emphasis)")
    w.add_argument("--init", default=None, metavar="DIR", help="start from this checkpoint's weights (fine-tune)")
    w.add_argument("--device", default="cpu")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--checkpoint-every", type=int, default=250)

    d = which.add_parser("distill", help="the few-step consistency student of a teacher",
                         description="Consistency distillation: the student starts as the teacher and learns "
                         "to jump along the teacher's Euler ODE in 1-2 steps.")
    d.add_argument("--teacher", required=True, metavar="DIR", help="the teacher checkpoint (`train world`)")
    d.add_argument("--data", required=True, metavar="DIR", help="shards from `worldstream collect`")
    d.add_argument("--out", required=True, metavar="DIR")
    d.add_argument("--student-steps", type=int, default=2, choices=[1, 2], help="steps the student ships with")
    d.add_argument("--steps", type=int, default=3000)
    d.add_argument("--batch", type=int, default=16, help="clips per step (one target frame each)")
    d.add_argument("--lr", type=float, default=5e-5)
    d.add_argument("--target-ema", type=float, default=0.95, help="EMA decay of the target network")
    d.add_argument("--self-context", type=float, default=0.5,
                   help="share of clips whose last history frames the student generates itself")
    d.add_argument("--self-frames", type=int, default=4, help="at most this many generated history frames")
    d.add_argument("--held-out", type=int, default=4, help="episodes held out for evaluation")
    d.add_argument("--eval-clips", type=int, default=16, help="fixed held-out clips checked at every checkpoint")
    d.add_argument("--device", default="cpu")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--checkpoint-every", type=int, default=250)


def _items(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers such as 0,4,8") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated numbers such as 1,5,10") from None


def _showcase_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("showcase", help="pictures to judge a model: grid, side-by-side MP4, action response",
                       description="Writes grid.png, rollout.mp4, actions.png and showcase.json into --out.")
    p.add_argument("--model", required=True, metavar="PATH", help="checkpoint folder")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--suite", default=DEFAULT_SUITE)
    p.add_argument("--episodes", type=_ints, default=(0, 4, 8), help="suite episodes (default: 0,4,8)")
    p.add_argument("--horizons", type=_floats, default=(0.5, 1.0, 2.0, 5.0, 10.0), help="seconds")
    p.add_argument("--video-seconds", type=float, default=20.0)
    p.add_argument("--video-scale", type=int, default=2,
                   help="the MP4's pixels per frame pixel, 1-4 (default 2; 1: native size, a quarter the pixels)")
    p.add_argument("--video-crf", type=int, default=18,
                   help="the MP4's H.264 CRF, 0-51: higher is smaller and coarser (default 18)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto (default): bf16 where the hardware has native bf16 matrix math, else fp32")
    _int8_arg(p)
    p.add_argument("--seed", type=int, default=0)


def _engine_args(p: argparse.ArgumentParser, dtype: str = "auto", compile: bool = False) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default=None, metavar="PATH",
                       help="checkpoint folder (default: the bundled assets/models/doom-small)")
    which.add_argument("--preset", default=None, choices=sorted(PRESETS), help="random weights of this shape")
    p.add_argument("--steps", type=int, default=None, help="sampling steps per frame (default: the model's)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default=dtype,
                   help="model, cache and decoder (default: auto = bf16 where the hardware has native bf16 "
                   "matrix math, else fp32)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=compile,
                   help="torch.compile the model step" + (" in the background while the eager step already serves, "
                   "then swap (default: on; needs a C++ compiler, else play stays eager)" if compile else
                   " before the first frame (default: off)"))
    _int8_arg(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: play one core fewer than torch would use, leaving a core to the "
                   "browser, event loop and JPEG; record all)")


def _play_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("play", help="serve the model in the browser (websocket + Gradio page)",
                       description="Serve the world at http://HOST:PORT/: a page with the game view, "
                       "keyboard/gamepad input, HUD and recording; the play socket is /ws.")
    _engine_args(p, compile=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", default=os.environ.get("WORLDSTREAM_TOKEN") or None,
                   help="require ?token=T on the socket and downloads (default: $WORLDSTREAM_TOKEN, else none)")
    p.add_argument("--max-sessions", type=int, default=2, help="players at once (default: 2)")
    p.add_argument("--fps", type=float, default=17.5, help="frames per second per session (default: 17.5)")
    p.add_argument("--recordings", default="recordings", metavar="DIR", help="where recordings go")
    p.add_argument("--seed", type=int, default=None, help="seed of each session's first rollout (default: random)")
    p.add_argument("--start", default=None, metavar="SCENE",
                   help="start scene: a name in assets/scenes/ or 'generated' (default: map01 if it fits the model)")
    p.add_argument("--speculate", type=int, default=0, metavar="K",
                   help="draft up to K frames ahead while a player holds an action, in time left between "
                        "ticks; a draft for the action that comes is shown at once (default: 0, off)")
    p.add_argument("--hold", type=int, default=1, help="ticks an action is held before it is drafted (default: 1)")
    p.add_argument("--keepalive", type=float, default=20.0, metavar="SECONDS",
                   help="close a connection that answers no ping for this long, e.g. a client that stopped "
                        "reading; its slot is free again (default: 20)")
    p.add_argument("--allow-origin", dest="allow_origins", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin besides the page's own that may open the play socket, e.g. "
                        "https://example.org:8443 ('*': any); repeatable (default: the page's own only)")
    p.add_argument("--no-preempt", dest="preempt", action="store_false",
                   help="finish a frame whose key changed while it was made, before the new key's frame (default: "
                        "abandon it between model blocks and make the new key's frame at once)")

    r = sub.add_parser("record", help="record a rollout to MP4 (headless), or replay a recording exactly",
                       description="Roll out the model headless and write STEM.mp4 + STEM.actions.jsonl + "
                       "STEM.meta.json; --replay regenerates a recording and checks it frame by frame.")
    _engine_args(r)
    r.add_argument("--out", default=None, metavar="STEM.mp4")
    r.add_argument("--seconds", type=float, default=None, help="length (default: 60 with --policy)")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--actions", default=None, metavar="FILE.jsonl", help="follow these actions")
    src.add_argument("--policy", default="explore", choices=["explore"], help="act with a policy (default)")
    src.add_argument("--replay", default=None, metavar="STEM.actions.jsonl",
                     help="regenerate this recording with its model and seed; exit 1 if any frame differs")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--scale", type=int, default=3, help="MP4 pixels per frame pixel (default: 3)")
    r.add_argument("--start", default=None, metavar="SCENE",
                   help="start scene: a name in assets/scenes/ or 'generated' (default: map01 if it fits the model)")
    r.add_argument("--json", action="store_true", help="print one JSON object")

    k = sub.add_parser("soak", help="attack a play server it starts itself on 127.0.0.1; print what held",
                       description="Start `worldstream play` on a free loopback port and run a bounded campaign: "
                       "fuzzed messages, connection churn (clean, FIN, RST, mid-recording), a client that stops "
                       "reading, an input flood, recording faults, a long recorded run. A well-behaved player's "
                       "frame rate, the server's RSS and every recording are checked. Exit 1 if anything broke.")
    k.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    k.add_argument("--preset", default=None, choices=sorted(PRESETS), help="random weights of a preset instead")
    k.add_argument("--fuzz", type=int, default=5000, help="hostile messages (default: 5000)")
    k.add_argument("--churn", type=int, default=100, help="connections opened and dropped (default: 100)")
    k.add_argument("--phase-seconds", type=float, default=20.0, help="before/flood/after phases (default: 20)")
    k.add_argument("--slow-seconds", type=float, default=30.0, help="how long the slow client reads nothing "
                   "(default: 30; the server's keepalive closes a silent client after --keepalive seconds)")
    k.add_argument("--keepalive", type=float, default=20.0, help="the server's --keepalive (default: 20)")
    k.add_argument("--memory-seconds", type=float, default=300.0, help="the long recorded run (default: 300)")
    k.add_argument("--fps", type=float, default=17.5, help="the server's frames per second per session")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--compile", action="store_true",
                   help="let the server compile in the background as play does by default (off: the soak would "
                   "measure minutes of compiling, not serving)")
    k.add_argument("--short", action="store_true", help="the quick configuration `make test` runs")
    k.add_argument("--json", action="store_true", help="print one JSON object")


def _spec(args: argparse.Namespace) -> EngineSpec:
    return EngineSpec(model=default_model(args.model, args.preset), preset=args.preset or "small", steps=args.steps,
                      dtype=args.dtype, device=args.device, compile=args.compile, threads=args.threads,
                      int8=args.int8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldstream", description="An interactive, streaming world model of Doom.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _bench_parser(sub)
    _world_parsers(sub)
    _train_parsers(sub)
    _showcase_parser(sub)
    _play_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, ConfigError, CheckpointError, RuntimeError) as e:
        print(f"worldstream {args.command}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, a file too large, a folder that vanished: one line, no traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"worldstream {args.command}: {describe_error(e)}{where}; what was written before stays", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"worldstream {args.command}: interrupted; what was written before stays", file=sys.stderr)
        return 130


def _fields(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("command", "json")}


def _bench(args: argparse.Namespace) -> int:
    from app.bench import BenchArgs, format_table, run_bench

    result = run_bench(BenchArgs(**_fields(args)))
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _collect(args: argparse.Namespace) -> int:
    from app.collect import CollectArgs, run_collect

    stats = run_collect(CollectArgs(**_fields(args)))
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        run = stats["this_run"]
        print(f"{stats['episodes']} episodes, {stats['frames']} frames ({stats['hours_of_gameplay'] * 60:.1f} min "
              f"of play), {stats['bytes'] / 2**20:.1f} MiB ({stats['bytes_per_hour'] / 2**20:.0f} MiB per hour); "
              f"this run {run['frames']} frames at {run['frames_per_second']:.0f} frames/s; "
              f"stuck {100 * stats['stuck_share']:.1f}% of frames. Details: {args.out}/stats.json")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from app.video import write_mp4
    from world.suite import load_suite

    suite = load_suite(args.suite)
    if not 0 <= args.episode < len(suite.episodes):
        raise ValueError(f"--episode must be in 0..{len(suite.episodes) - 1}")
    ep = suite.episodes[args.episode]
    frames = ep.render()
    write_mp4(args.out, frames, suite.fps)
    print(f"{args.out}: {ep.name}, {len(frames)} frames at {suite.fps} FPS (checksum verified)")
    return 0


def _eval_videos(args: argparse.Namespace) -> int:
    from eval.videos import VideoArgs, format_videos, plot_videos, run_eval_videos

    video_args = VideoArgs(**_fields(args))
    rows = run_eval_videos(video_args)
    plot = plot_videos(rows, Path(video_args.out or Path(args.folder) / "eval-videos.jsonl").with_suffix(".png"))
    print(json.dumps(rows, indent=2) if args.json else format_videos(rows) + (f"\nplot: {plot}" if plot else ""))
    return 0 if all(r.get("ok") for r in rows) else 1


def pair_names(who: list[tuple[str, str]]) -> list[str]:
    """One folder name per (kind, value) to evaluate: the predictor, preset-NAME, or the model
    folder's name, with as many parent folders joined in as it takes to tell two models apart
    (runs/gpu1/a and runs/gpu2/a -> gpu1-a, gpu2-a); a repeated argument gets a number."""
    paths = {v: [p for p in Path(v).resolve().parts if p != "/"] for k, v in who if k == "model"}

    def name(kind: str, value: str) -> str:
        if kind != "model":
            return value if kind == "predictor" else f"preset-{value}"
        parts = paths[value]
        others = [q for v, q in paths.items() if q != parts]
        depth = 1
        while depth < len(parts) and any(q[-depth:] == parts[-depth:] for q in others):
            depth += 1
        return "-".join(parts[-depth:]) or "model"

    seen: dict[str, int] = {}
    names = []
    for kind, value in who:
        n = name(kind, value)
        seen[n] = seen.get(n, 0) + 1
        names.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return names


def _eval(args: argparse.Namespace) -> int:
    from app.eval import EvalArgs, run_eval

    suites = args.suite or [DEFAULT_SUITE]
    who = ([("predictor", x) for x in args.predictor or []] + [("model", x) for x in args.model or []]
           + [("preset", x) for x in args.preset or []])
    if not who:
        raise ValueError("give at least one --predictor NAME, --model PATH or --preset NAME")
    common = {k: v for k, v in _fields(args).items() if k not in ("suite", "predictor", "model", "preset", "out")}
    if len(suites) == 1 and len(who) == 1:
        summary = run_eval(EvalArgs(suite=suites[0], out=args.out, **{who[0][0]: who[0][1]}, **common))
        print(json.dumps(summary, indent=2) if args.json else (Path(args.out) / "summary.md").read_text())
        return 0
    from app.eval_report import build_report

    summaries, failed = [], []
    names = pair_names(who)
    for suite in suites:
        for (kind, value), name in zip(who, names, strict=True):
            out = Path(args.out) / Path(suite).stem / name
            # --steps/--sampler set the models' sampling; a baseline beside them has none to set
            fields = {**common, "steps": None, "sampler": None} if kind == "predictor" else common
            try:
                summaries.append(run_eval(EvalArgs(suite=suite, out=str(out), **{kind: value}, **fields)))
            except (ValueError, OSError) as e:  # one pair's failure is that pair's; the others go on
                failed.append(f"{Path(suite).stem} x {name}: {e}")
                print(f"worldstream eval: {Path(suite).stem} x {name} failed: {e}", file=sys.stderr)
    report = build_report(args.out) if summaries else None
    if args.json:
        print(json.dumps({"runs": summaries, "failed": failed, "report": str(report) if report else None}, indent=2))
    elif report is not None:
        print(report.read_text())
    return 0 if not failed else 1


def _eval_report(args: argparse.Namespace) -> int:
    from app.eval_report import build_report

    print(build_report(args.folder).read_text())
    return 0


def _make_suite(args: argparse.Namespace) -> int:
    from app.collect import EVAL_SEED_BASE
    from world.doom import FPS, DoomSpec
    from world.suite import EvalSuite, make_episode

    episodes = []
    for i, m in enumerate(args.maps, start=1):
        split = "unseen-map" if m in args.unseen_maps else "held-out-seed"
        spec = DoomSpec("freedoom2", m, args.skill, EVAL_SEED_BASE + 1000 * i)
        episodes.append(make_episode(f"{m.lower()}-{split}", split, spec, args.seconds, args.context_frames))
        print(f"{episodes[-1].name}: seed {episodes[-1].seed}", file=sys.stderr)
    Path(args.out).write_text(EvalSuite(Path(args.out).stem, FPS, tuple(episodes)).to_json())
    print(f"{args.out}: {len(episodes)} episodes")
    return 0


def _copy_shift(text: str) -> tuple[int, ...] | str:
    """--copy-shift: 'auto', 'none' or comma-separated whole cells, one per action button."""
    if text in ("auto", "none"):
        return text if text == "auto" else ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'none' or integers like 0,0,0,0,1,-1,0,0; got {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in _fields(args).items() if k != "what"}
    if args.what == "world":
        fields["copy_shift_auto"] = fields["copy_shift"] == "auto"
        fields["copy_shift"] = () if fields["copy_shift_auto"] else fields["copy_shift"]
    if args.what == "tokenizer":
        from train.tokenizer import TokenizerArgs, train_tokenizer

        result = train_tokenizer(TokenizerArgs(**fields))
        print(f"{args.out}: tokenizer, held-out PSNR {result.get('psnr', float('nan')):.2f} dB")
    elif args.what == "idm":
        from eval.idm import train_idm

        if args.epochs < 1 or args.batch < 1:
            raise ValueError("--epochs and --batch must be >= 1")
        meta = train_idm(args.data, args.out, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed)
        val = meta["validation"]
        print(f"{args.out}: IDM, validation balanced accuracy per button: "
              + ", ".join(f"{b} {v['balanced']:.2f}" for b, v in val.items() if v["balanced"] is not None))
    elif args.what == "world":
        from train.world import WorldArgs, train_world

        result = train_world(WorldArgs(**fields))
        print(f"{args.out}: teacher, held-out flow loss {result.get('loss', float('nan')):.4f}")
    elif args.what == "distill":
        from train.distill import DistillArgs, train_distill

        result = train_distill(DistillArgs(**fields))
        nan = float("nan")
        print(f"{args.out}: student, held-out MSE to the teacher's samples: from sigma 1 "
              f"{result.get('loss_1step', nan):.4f}, from sigma 0.5 {result.get('loss_mid', nan):.4f}")
    return 0


def _showcase(args: argparse.Namespace) -> int:
    from app.eval import EvalArgs, make_predictor
    from app.showcase import ShowcaseArgs, run_showcase

    if not args.episodes or not args.horizons:
        raise ValueError("--episodes and --horizons need at least one value")
    predictor = make_predictor(EvalArgs(suite=args.suite, out=args.out, model=args.model, steps=args.steps,
                                        dtype=args.dtype, int8=args.int8))
    fields = {k: v for k, v in _fields(args).items() if k not in ("dtype", "int8")}
    result = run_showcase(ShowcaseArgs(**fields), predictor)
    for label, r in result["actions"].items():
        s = r["mean_shift_px_per_frame"]
        print(f"{label:>10}: image shift {s['model']:+.1f} px/frame (real game {s['game']:+.1f})")
    print(f"{args.out}: grid.png, rollout.mp4, actions.png, showcase.json")
    return 0


def _play(args: argparse.Namespace) -> int:
    from app.play.listen import serve
    from app.play.server import ServeArgs

    spec = _spec(args)
    if spec.threads is None:
        from engine.precision import serving_threads

        spec = dataclasses.replace(spec, threads=serving_threads())
    serve(ServeArgs(host=args.host, port=args.port, token=args.token, max_sessions=args.max_sessions,
                    fps=args.fps, recordings=args.recordings, seed=args.seed, start=args.start,
                    speculate=args.speculate, hold=args.hold, preempt=args.preempt, keepalive=args.keepalive,
                    allow_origins=tuple(args.allow_origins)), spec)
    return 0


def _record(args: argparse.Namespace) -> int:
    from app.record import RecordArgs, run_record

    spec = None if args.replay is not None else _spec(args)
    result = run_record(RecordArgs(out=args.out, seconds=args.seconds, actions=args.actions, policy=args.policy,
                                   seed=args.seed, replay=args.replay, scale=args.scale, spec=spec,
                                   start=args.start))
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.replay is not None:
        verdict = "identical" if result["exact"] else f"DIFFERENT from frame {result['first_mismatch']}"
        print(f"{result['out']}: {result['frames']} frames; {result['identical']} identical, "
              f"{result['mismatched']} different -> {verdict}")
    else:
        print(f"{result['out']}: {result['frames']} frames ({result['seconds']:.1f} s of play) in "
              f"{result['wall_s']:.1f} s ({result['fps_generated']:.1f} frames/s); actions: {result['actions']}")
    return 0 if args.replay is None or result["exact"] else 1


def _soak(args: argparse.Namespace) -> int:
    from app.soak import SHORT, SoakArgs, format_table, run_soak

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "short")}
    if args.short:
        fields.update(SHORT)
    result = run_soak(SoakArgs(**fields))
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if result["ok"] else 1


COMMANDS = {"play": _play, "soak": _soak, "record": _record, "bench": _bench, "collect": _collect, "replay": _replay,
            "eval": _eval, "eval-report": _eval_report, "eval-videos": _eval_videos, "make-suite": _make_suite,
            "train": _train, "showcase": _showcase}


if __name__ == "__main__":
    sys.exit(main())
