"""The model a ``train world`` run trains: its engine config from the run's arguments, and its
start, fresh or from an ``--init`` checkpoint (a fine-tune, which may change only what
_FINETUNE_FIELDS names)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from engine.checkpoint import load_config, load_weights
from engine.config import EngineConfig, SamplerConfig, get_preset
from engine.model.dit import DiT

if TYPE_CHECKING:
    from train.world import WorldArgs


def teacher_config(args: WorldArgs) -> EngineConfig:
    base = get_preset(args.preset)
    model = dataclasses.replace(base.model, context_sigma=args.context_sigma, copy_prior=args.copy_prior,
                                copy_tau=args.copy_tau, copy_denoised=args.copy_denoised,
                                copy_shift=args.copy_shift, copy_shift_rows=args.copy_shift_rows,
                                window_frames=args.window or base.model.window_frames, stats_anchor=args.anchor,
                                detail_carry=args.carry, conv_head=args.conv_head)
    return dataclasses.replace(base, model=model,
                               sampler=SamplerConfig(kind="euler", steps=args.teacher_steps, schedule="linear"))


# What a fine-tune may change relative to its --init checkpoint: the trunk's shapes stay.
_FINETUNE_FIELDS = ("context_sigma", "copy_prior", "copy_tau", "copy_denoised", "copy_shift", "copy_shift_rows",
                    "window_frames", "stats_anchor", "detail_carry", "conv_head")


def init_from(model: DiT, path: str) -> list[str]:
    """Load ``path``'s weights into ``model`` (a fine-tune). The two configs may differ only in
    _FINETUNE_FIELDS. Going from a plain model to a copy-prior one, the new input layers keep
    their init and the output layer is zeroed, so the fine-tune starts exactly at copy-last.
    Returns the names of the tensors that did not come from ``path``."""
    init_config, _ = load_config(path)
    same = {f: getattr(model.cfg, f) for f in _FINETUNE_FIELDS}
    if dataclasses.replace(init_config.model, **same) != model.cfg:
        raise ValueError(f"--init {path}: its model differs from this run's in more than {_FINETUNE_FIELDS}")
    own = model.state_dict()
    init_model = DiT(init_config.model)
    loaded = load_weights(path, init_model.state_dict())
    new = sorted(set(own) - set(loaded))
    model.load_state_dict({**own, **{k: v for k, v in loaded.items() if k in own}})
    if model.cfg.copy_prior and not init_config.model.copy_prior:
        for name in ("prev_in", "prev_sigma_embed.mlp.2"):
            nn.init.zeros_(model.get_submodule(name).weight)
        nn.init.zeros_(model.patch_out.weight)
        nn.init.zeros_(model.patch_out.bias)
    return new


TRAIN_ONLY = ("all", "head", "output")


def freeze_except(model: DiT, which: str) -> None:
    """``train world --train-only``: "all" trains everything; "head" only the conv head; "output"
    only the DiT's output layers (its final modulation and patch projection, the linear
    counterpart of a head). The rest keeps its --init weights bit for bit."""
    if which == "all":
        return
    if which not in TRAIN_ONLY:
        raise ValueError(f"train only: one of {TRAIN_ONLY}, got {which!r}")
    if which == "head" and model.head is None:
        raise ValueError("--train-only head needs a conv head (--conv-head > 0)")
    model.requires_grad_(False)
    for part in (model.head,) if which == "head" else (model.ada_out, model.patch_out):
        assert part is not None
        part.requires_grad_(True)
