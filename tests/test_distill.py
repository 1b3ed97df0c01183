"""Consistency distillation on tiny configs: the student learns the teacher's jump, the boundary
condition holds, self-generated history replaces exactly the frames it should, resume is exact
(target network included), and the CLI ships a consistency student."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.config import EngineConfig, SamplerConfig
from engine.model.dit import DiT
from engine.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer
from tests.test_train import _episodes
from train.distill import DistillArgs, DistillTask, student_config
from train.loop import LoopConfig, Trainer

GRID = 4  # teacher Euler steps in these tests


def _setup(tiny: EngineConfig, tmp_path: Path, **kw: object) -> tuple[DistillTask, DiT]:
    teacher_cfg = dataclasses.replace(
        tiny, model=dataclasses.replace(tiny.model, context_sigma=0.05),
        sampler=SamplerConfig(kind="euler", steps=GRID))
    config = student_config(teacher_cfg, 2)
    teacher = DiT(config.model)
    teacher.init_weights(torch.Generator().manual_seed(0), std=0.05)
    student = DiT(config.model)
    student.load_state_dict(teacher.state_dict())
    tok = tmp_path / "tok"
    m = config.model
    save_tokenizer(tok, Tokenizer(TokenizerConfig(latent_channels=m.latent_channels, widths=(8, 8), blocks=(0, 0),
                                                  height=m.latent_height * 4, width=m.latent_width * 4)))
    args = DistillArgs(**{"teacher": str(tmp_path), "data": "-", "out": str(tmp_path / "out"), "batch": 8,
                          "max_gap": 5, "eval_clips": 8, **kw})  # type: ignore[arg-type]
    eps = _episodes(config)
    task = DistillTask(args, config, teacher, GRID, student, eps, eps[:1], tok, torch.device("cpu"))
    return task, student


def test_args_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="student-steps"):
        DistillArgs(teacher=str(tmp_path), data="-", out="-", student_steps=4)
    with pytest.raises(ValueError, match="--teacher"):
        DistillArgs(teacher=str(tmp_path / "missing"), data="-", out="-")
    with pytest.raises(ValueError, match="self-context"):
        DistillArgs(teacher=str(tmp_path), data="-", out="-", self_context=1.5)


def test_student_learns_the_teachers_jump(tiny: EngineConfig, tmp_path: Path) -> None:
    """The held-out MSE between the student's one jump from noise and the teacher's N-step
    Euler sample of the same noise falls by the stated factor (3x) in 200 steps."""
    task, student = _setup(tiny, tmp_path, self_context=0.5)
    before = task.evaluate(student)
    assert before["loss_1step"] > 10 * before["loss_mid"]  # one jump from sigma 1 is the hard part
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for i in range(200):
        student.train()
        loss, extra = task.loss(student, torch.Generator().manual_seed(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
        task.after_step(student)
        assert 0 <= extra["self_frames"] <= task.args.self_frames
    after = task.evaluate(student)
    assert after["loss_1step"] < before["loss_1step"] / 3, (before, after)
    assert after["teacher_truth_mse"] == before["teacher_truth_mse"]  # the teacher is frozen


def test_target_network_is_an_ema_of_the_student(tiny: EngineConfig, tmp_path: Path) -> None:
    task, student = _setup(tiny, tmp_path, target_ema=0.5)
    t0 = [p.clone() for p in task.target.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    task.after_step(student)
    for p0, t, s in zip(t0, task.target.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * p0 + 0.5 * s)


def test_self_context_replaces_the_last_history_frames(tiny: EngineConfig, tmp_path: Path) -> None:
    task, student = _setup(tiny, tmp_path)
    g = torch.Generator().manual_seed(0)
    x0, actions, index, _ = task.clips.sample_clips(task.clips.train, 3, g)
    x = task._context(x0, g)
    k = 2
    out = task._self_generate(student, x, actions, index, k, torch.Generator().manual_seed(5))
    f = x.shape[1]
    assert torch.equal(out[:, : f - 1 - k], x[:, : f - 1 - k])  # older history untouched
    assert torch.equal(out[:, -1], x[:, -1])  # the target position untouched
    assert not torch.allclose(out[:, f - 1 - k : f - 1], x[:, f - 1 - k : f - 1])
    # generation is conditioned on the history: with the same noise, other real history -> other frames
    x2 = x.clone()
    x2[:, f - 2 - k] += 1.0  # the newest real history frame
    out2 = task._self_generate(student, x2, actions, index, k, torch.Generator().manual_seed(5))
    assert not torch.allclose(out2[:, f - 2], out[:, f - 2])


def test_resume_is_exact_with_the_target_network(tiny: EngineConfig, tmp_path: Path) -> None:
    def trainer(out: Path) -> Trainer:
        task, student = _setup(tiny, tmp_path, batch=4)
        loop = LoopConfig(steps=6, lr=1e-3, warmup=2, ema=0.9, checkpoint_every=3, log_every=3, bf16=False)
        return Trainer(student, task, loop, out, progress=False)

    trainer(tmp_path / "once").run()
    trainer(tmp_path / "twice").run(stop_after=3)
    trainer(tmp_path / "twice").run()
    a = load_file(str(tmp_path / "once" / "train" / "state.safetensors"))
    b = load_file(str(tmp_path / "twice" / "train" / "state.safetensors"))
    assert any(k.startswith("task.target.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
