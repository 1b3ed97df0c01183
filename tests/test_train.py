"""Training: tiny overfits (loss falls by a stated factor), exact resume, train == infer, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.action import Action
from engine.config import EngineConfig, SamplerConfig
from engine.runner import Runner
from engine.tokenizer import Tokenizer, TokenizerConfig, TokenizerDecoder, load_tokenizer, save_tokenizer
from tests.conftest import make_model
from train.data import LatentEpisode
from train.loop import LoopConfig, Trainer, lr_at
from train.tokenizer import TokenizerTask
from train.world import WorldArgs, WorldTask, action_change_weights, gradient_difference
from train.world_losses import sharpness, statistics_difference

TINY_TOK = TokenizerConfig(latent_channels=4, widths=(8, 16), blocks=(0, 1), height=16, width=24)


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth synthetic frames (blobs), (n, 16, 24, 3) uint8."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 6, generator=g)
    up = torch.nn.functional.interpolate(base, size=(16, 24), mode="bilinear", align_corners=False)
    return (up * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _tok_trainer(out: Path, steps: int, frames: torch.Tensor) -> Trainer:
    torch.manual_seed(0)
    task = TokenizerTask(frames, frames[:4], batch=8, device=torch.device("cpu"))
    loop = LoopConfig(steps=steps, lr=3e-3, warmup=5, ema=0.9, checkpoint_every=10, log_every=5, bf16=False)
    return Trainer(Tokenizer(TINY_TOK), task, loop, out, progress=False)


def test_tokenizer_overfits_and_exports(tmp_path: Path) -> None:
    frames = _frames(8)
    trainer = _tok_trainer(tmp_path / "tok", 150, frames)
    trainer.run()
    rows = list(csv.DictReader(open(tmp_path / "tok" / "train" / "log.csv")))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < first / 10, (first, last)  # the stated factor: 10x
    assert float(rows[-1]["eval_psnr"]) > float(rows[1]["eval_psnr"]) + 5
    assert (tmp_path / "tok" / "train" / "loss.png").stat().st_size > 1000
    # The export: normalised latents (mean ~0, std ~1 per channel) and a working decoder.
    net, meta = load_tokenizer(tmp_path / "tok")
    assert meta["step"] == 150
    dec = TokenizerDecoder(net)
    z = dec.encode(frames)
    assert z.shape == (8, 4, 8, 12)  # stride 2
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.2 and (z.std(dim=(0, 2, 3)) - 1).abs().max() < 0.2
    rgb = dec.decode(z)
    assert rgb.shape == (8, 16, 24, 3) and rgb.dtype == torch.uint8


def test_the_edge_term_charges_blur_and_eval_reports_sharpness() -> None:
    """--edge: a reconstruction that blurs pays more than its squared error; a perfect one pays
    nothing; the held-out eval reports the round trip's sharpness ratio (1 = as sharp as the truth)."""
    from train.tokenizer import TokenizerArgs

    frames = _frames(8)

    class Blur(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    class Same(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    plain = TokenizerTask(frames, frames, batch=8, device=torch.device("cpu"))
    edged = TokenizerTask(frames, frames, batch=8, device=torch.device("cpu"), edge=1.0)
    blur_plain = plain.loss(Blur(), torch.Generator().manual_seed(0))[0]
    blur_edged = edged.loss(Blur(), torch.Generator().manual_seed(0))[0]
    assert blur_edged > blur_plain * 1.5
    assert float(edged.loss(Same(), torch.Generator().manual_seed(0))[0]) == 0.0
    assert plain.evaluate(Same())["sharp"] == pytest.approx(1.0)
    assert plain.evaluate(Blur())["sharp"] < 0.9
    with pytest.raises(ValueError, match="--edge"):
        TokenizerArgs(data="-", out="-", edge=-1.0)
    with pytest.raises(ValueError, match="--every"):
        TokenizerArgs(data="-", out="-", every=0)


def test_an_adversarial_decoder_fine_tune_trains_its_critic_and_resumes_it(tmp_path: Path) -> None:
    """--adv: the critic's term reaches the decoder (balanced at its last layer), the critic takes
    its own step after the model's, and its weights go into the checkpoint and come back."""
    from train.tokenizer import TokenizerArgs

    frames = _frames(8)

    def trainer(steps: int) -> Trainer:
        torch.manual_seed(0)
        task = TokenizerTask(frames, frames[:4], batch=8, device=torch.device("cpu"), adv=0.5)
        loop = LoopConfig(steps=steps, lr=3e-3, warmup=5, ema=0.9, checkpoint_every=5, log_every=5, bf16=False)
        return Trainer(Tokenizer(TINY_TOK), task, loop, tmp_path / "adv", progress=False)

    first = trainer(10)
    first.run()
    rows = list(csv.DictReader(open(tmp_path / "adv" / "train" / "log.csv")))
    assert float(rows[-1]["adv_w"]) > 0 and float(rows[-1]["critic"]) > 0
    saved = load_file(str(tmp_path / "adv" / "train" / "state.safetensors"))
    critic = {k: v for k, v in saved.items() if k.startswith("task.critic.net.")}
    assert critic
    again = trainer(10)
    again.run()  # nothing left to do: it only loads
    assert isinstance(again.task, TokenizerTask) and again.task.critic is not None
    restored = again.task.critic.net.state_dict()
    assert all(torch.equal(restored[k[len("task.critic.net."):]], v) for k, v in critic.items())
    with pytest.raises(ValueError, match="--adv"):
        TokenizerArgs(data="-", out="-", adv=-1.0)


def test_resume_is_exact(tmp_path: Path) -> None:
    frames = _frames(8)
    _tok_trainer(tmp_path / "once", 20, frames).run()
    _tok_trainer(tmp_path / "twice", 20, frames).run(stop_after=10)  # "killed" after its step-10 checkpoint
    resumed = _tok_trainer(tmp_path / "twice", 20, frames)
    resumed.run()
    a = load_file(str(tmp_path / "once" / "train" / "state.safetensors"))
    b = load_file(str(tmp_path / "twice" / "train" / "state.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "twice" / "train" / "log.csv"))]
    assert steps == [5, 10, 15, 20]  # no duplicated rows


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    frames = _frames(8)
    _tok_trainer(tmp_path / "t", 10, frames).run()
    other = _tok_trainer(tmp_path / "t", 10, frames)
    other.cfg = dataclasses.replace(other.cfg, lr=1.0)
    with pytest.raises(ValueError, match="other settings"):
        other.run()


def test_lr_schedule() -> None:
    cfg = LoopConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0) and lr_at(cfg, 100) == pytest.approx(0.1)
    assert all(lr_at(cfg, s) >= lr_at(cfg, s + 1) for s in range(10, 100))


def test_lr_schedule_follows_the_time_budget_when_it_is_further_along() -> None:
    cfg = LoopConfig(steps=10_000, lr=1.0, warmup=10, min_lr_ratio=0.1, max_seconds=100.0)
    assert lr_at(cfg, 50, wall_s=0.0) == pytest.approx(lr_at(dataclasses.replace(cfg, max_seconds=0.0), 50))
    assert lr_at(cfg, 50, wall_s=50.0) == pytest.approx(0.55)  # half the time: half way down the cosine
    assert lr_at(cfg, 50, wall_s=100.0) == pytest.approx(0.1)


def test_time_budget_stops_checkpoints_and_resumes_with_more_time(tmp_path: Path) -> None:
    frames = _frames(8)
    trainer = _tok_trainer(tmp_path / "t", 10_000, frames)
    trainer.cfg = dataclasses.replace(trainer.cfg, max_seconds=0.5)
    trainer.run()
    state = json.loads((tmp_path / "t" / "train" / "state.json").read_text())
    assert 0 < state["step"] < 10_000 and state["wall_s"] >= 0.5  # stopped by time, and checkpointed there
    _, meta = load_tokenizer(tmp_path / "t")
    assert meta["step"] == state["step"]  # the export is that step's
    again = _tok_trainer(tmp_path / "t", 10_000, frames)  # same budget: spent, nothing to do
    again.cfg = dataclasses.replace(again.cfg, max_seconds=0.5)
    again.run()
    assert json.loads((tmp_path / "t" / "train" / "state.json").read_text())["step"] == state["step"]
    more = _tok_trainer(tmp_path / "t", 10_000, frames)  # a larger budget resumes
    more.cfg = dataclasses.replace(more.cfg, max_seconds=1.0)
    more.run()
    assert json.loads((tmp_path / "t" / "train" / "state.json").read_text())["step"] > state["step"]


def test_tokenizer_files_are_validated(tmp_path: Path) -> None:
    save_tokenizer(tmp_path, Tokenizer(TINY_TOK))
    doc = json.loads((tmp_path / "tokenizer.json").read_text())
    doc["tokenizer"]["widths"] = [8, 32]
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="do not match"):
        load_tokenizer(tmp_path)
    doc["tokenizer"]["colour"] = 1
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown key"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        load_tokenizer(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- world model
def _episodes(config: EngineConfig, n: int = 2, length: int = 40) -> list[LatentEpisode]:
    m = config.model
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        # A drifting pattern: frame t+1 = frame t rolled by the action, so actions matter.
        acts = (torch.rand(length, 8, generator=g) < 0.3).float()
        acts[0] = 0
        x = torch.randn(1, m.latent_channels, m.latent_height, m.latent_width, generator=g)
        frames = [x]
        for t in range(1, length):
            frames.append(torch.roll(frames[-1], shifts=int(acts[t, 4] - acts[t, 5]), dims=-1))
        out.append(LatentEpisode(torch.cat(frames).half(), acts))
    return out


def _world_task(config: EngineConfig, **kw: object) -> WorldTask:
    args = WorldArgs(data="-", tokenizer="-", out="-", batch=4, **kw)  # type: ignore[arg-type]
    eps = _episodes(config)
    return WorldTask(args, config, eps, eps[:1], Path("-"), torch.device("cpu"))


def test_world_overfits_tiny_batch(tiny: EngineConfig, tmp_path: Path) -> None:
    task = _world_task(tiny, frames=6)
    model = make_model(tiny, std=0.02)
    model.init_weights(torch.Generator().manual_seed(0), adaln_zero=True)
    losses, _ = fit_one_batch(task, model, 200)
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])  # the stated factor: 5x


def fit_one_batch(task: WorldTask, model: torch.nn.Module, steps: int) -> tuple[list[float], torch.Tensor]:
    """AdamW (lr 3e-3) on one fixed batch of 4 clips: (losses per step, the batch's sigma)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x0, actions, index, before = task.sample_clips(task.train, 4, g)
    sigma, target = task.noise_levels(tuple(index.shape), g)
    losses = []
    for _ in range(steps):
        loss = task.flow_loss(model, x0, actions, index, before, sigma, target, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, sigma


def test_clips_follow_the_inference_layout(tiny: EngineConfig) -> None:
    task = _world_task(tiny, max_gap=20)
    g = torch.Generator().manual_seed(3)
    gaps = set()
    for _ in range(20):
        x0, actions, index, _ = task.sample_clips(task.train, 2, g)
        f = tiny.model.sink_frames + tiny.model.window_frames + 1
        assert x0.shape[:2] == (2, f) and actions.shape == (2, f, 8)
        assert (index[:, 0] == 0).all() and (actions[:, 0] == 0).all()  # the sink, no action
        assert (index[:, 2:] - index[:, 1:-1] == 1).all()  # then a contiguous run
        gaps |= set((index[:, 1] - 1).tolist())
    assert 0 in gaps and max(gaps) > 1  # both layouts occur
    sigma, target = task.noise_levels((512, f), g)
    assert target.any(dim=1).all()
    assert (sigma[~target] <= task.args.context_sigma_max).all()


def test_action_change_weights() -> None:
    a = torch.zeros(1, 9, 8)
    a[0, 1:, 0] = 1  # sink (no action) -> forward: not a change (position 1 may follow a gap)
    a[0, 5:, 4] = 1  # forward -> forward + turn_left at position 5
    w = action_change_weights(a, 4.0)
    assert w[0].tolist() == [1, 1, 1, 1, 1, 4, 4, 4, 1]  # the change and ACTION_LAG - 1 frames after
    assert (action_change_weights(a, 1.0) == 1).all()
    with pytest.raises(ValueError, match="action-weight"):
        WorldArgs(data="-", tokenizer="-", out="-", action_weight=0.5)
    with pytest.raises(ValueError, match="--init"):
        WorldArgs(data="-", tokenizer="-", out="-", init="/nonexistent")


def test_gradient_difference_makes_blur_cost() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 6, 8, generator=g)
    blur = torch.nn.functional.avg_pool2d(x.flatten(0, 1), 3, 1, 1).reshape(x.shape)
    assert gradient_difference(x, x).abs().max() == 0
    assert (gradient_difference(blur, x) > 0.3).all()  # (B, F): every frame pays for its blur
    assert gradient_difference(blur, x).shape == (2, 3)
    with pytest.raises(ValueError, match="copy-prior"):
        WorldArgs(data="-", tokenizer="-", out="-", gdl=1.0)
    with pytest.raises(ValueError, match="--loss"):
        WorldArgs(data="-", tokenizer="-", out="-", loss="huber", copy_prior=True)


def test_statistics_difference_makes_fading_cost_wherever_the_content_is() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 12, 16, generator=g)
    moved = x.roll(3, dims=-1)  # the same content elsewhere: only the wrapped column's differences change
    faded = torch.nn.functional.avg_pool2d(x.flatten(0, 1), 3, 1, 1).reshape(x.shape)
    assert statistics_difference(x, x).abs().max() < 1e-6
    assert statistics_difference(faded, x).shape == (2, 3)
    assert (statistics_difference(moved, x) < statistics_difference(faded, x) / 5).all()
    with pytest.raises(ValueError, match="copy-prior"):
        WorldArgs(data="-", tokenizer="-", out="-", stats=1.0)
    with pytest.raises(ValueError, match="--stats"):
        WorldArgs(data="-", tokenizer="-", out="-", stats=-1.0, copy_prior=True)


@pytest.mark.parametrize("stats", [0.0, 1.0], ids=["l2", "l2+stats"])
def test_statistics_difference_keeps_a_prediction_sharp_under_uncertain_motion(stats: float) -> None:
    """One learned frame fitted to a texture that moves a cell left or right at random: the
    squared error's optimum is the average of the two, a blur; the statistics term keeps the
    texture's contrast at nearly the same squared error."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 2, 8, 8, generator=g)
    pred = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([pred], lr=0.05)
    for _ in range(400):
        target = x.roll(1 if torch.rand((), generator=g) < 0.5 else -1, dims=-1)
        loss = (pred - target).pow(2).mean() + stats * statistics_difference(pred, target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ratio = float(sharpness(pred.detach(), x))
    if stats:
        assert ratio > 0.9, ratio
    else:
        assert ratio < 0.8, ratio


def test_teacher_forced_clip_equals_cached_steps(tiny: EngineConfig) -> None:
    """Training's forward over a whole clip (per-frame noise, block-causal mask) gives what the
    engine's cached step-by-step forward gives for the same frames: train/infer consistency.
    The clip is longer than sink + window, so the sliding window is exercised."""
    task = _world_task(tiny, frames=9, max_gap=0)
    model = make_model(tiny)
    g = torch.Generator().manual_seed(0)
    x0, actions, index, _ = task.sample_clips(task.train, 1, g)
    sigma, _ = task.noise_levels(tuple(index.shape), g)
    assert torch.equal(index[0], torch.arange(9))
    xt = (1 - sigma[..., None, None, None]) * x0 + sigma[..., None, None, None] * torch.randn(x0.shape)
    from engine.cache import FullContext

    m = tiny.model
    with torch.no_grad():
        full = model(xt, sigma, actions, FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames))
        runner = Runner(tiny, model)
        steps = []
        for t in range(9):
            steps.append(runner.forward(0, xt[:, t:t + 1], sigma[:, t:t + 1], actions[:, t:t + 1]))
            runner.cache.commit(0, 1)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("native", [False, True])
def test_tokenizer_training_autocasts_bf16_only_where_it_is_native(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """Emulated bf16 made a tokenizer step 11-13x slower on an AVX2-only CPU: the trainer asks
    the hardware (train.loop.train_autocast), and its checkpoint records the choice."""
    import train.loop
    from app.cli import main
    from world.shards import append_index, write_shard

    monkeypatch.setattr(train.loop, "native_bf16", lambda device: native)
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for ep in range(2):
        frames = rng.integers(0, 255, (30, 120, 160, 3), dtype=np.uint8)
        append_index(data, write_shard(data, ep, frames, rng.integers(0, 2, (30, 8), dtype=np.uint8), {}))
    assert main(["train", "tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"), "--steps", "1",
                 "--batch", "2", "--checkpoint-every", "1"]) == 0
    assert json.loads((tmp_path / "tok" / "train" / "state.json").read_text())["loop"]["bf16"] is native


def test_train_cli_end_to_end(tmp_path: Path) -> None:
    """collect-format shards -> train tokenizer -> train world -> Engine.from_checkpoint plays with
    the trained tokenizer as its decoder; eval's --steps override reaches the sampler."""
    from app.cli import main
    from engine.engine import Engine
    from world.shards import append_index, write_shard

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for ep in range(2):
        frames = rng.integers(0, 255, (30, 120, 160, 3), dtype=np.uint8)
        actions = rng.integers(0, 2, (30, 8), dtype=np.uint8)
        append_index(data, write_shard(data, ep, frames, actions, {}))
    tok, world = tmp_path / "tok", tmp_path / "world"
    assert main(["train", "tokenizer", "--data", str(data), "--out", str(tok), "--steps", "2",
                 "--batch", "2", "--checkpoint-every", "2"]) == 0
    # decoder-only fine-tune: the encoder and the latent statistics stay bit-identical
    dec = tmp_path / "dec"
    assert main(["train", "tokenizer", "--data", str(data), "--out", str(dec), "--init", str(tok), "--decoder-only",
                 "--steps", "2", "--batch", "2", "--checkpoint-every", "2", "--lr", "1e-2"]) == 0
    t0, t1 = load_tokenizer(tok)[0].state_dict(), load_tokenizer(dec)[0].state_dict()
    from train.tokenizer import DECODER

    assert all(torch.equal(t0[k], t1[k]) for k in t0 if k.split(".")[0] not in DECODER)
    for part in DECODER:  # every decoder part is trained
        assert any(not torch.equal(t0[k], t1[k]) for k in t0 if k.split(".")[0] == part), part
    assert main(["train", "tokenizer", "--data", str(data), "--out", str(tmp_path / "d2"), "--decoder-only"]) == 2
    assert main(["train", "world", "--data", str(data), "--tokenizer", str(tok), "--out", str(world),
                 "--steps", "1", "--batch", "1", "--frames", "4", "--checkpoint-every", "1",
                 "--teacher-steps", "2"]) == 0
    assert (data / "latents").is_dir()  # cached encodings
    engine = Engine.from_checkpoint(world, sampler=SamplerConfig(kind="euler", steps=3))
    assert engine.decoder.name.startswith("tokenizer") and engine.config.sampler.steps == 3
    frame = engine.reset(0)
    assert frame.rgb.shape == (120, 160, 3)
    meta = json.loads((world / "config.json").read_text())["meta"]
    assert meta["kind"].startswith("teacher") and meta["step"] == 1 and "hardware" in meta
    assert main(["train", "world", "--data", str(data), "--tokenizer", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "w2")]) == 2
    # a fine-tune from the export, with action-change emphasis, starts from its weights
    from engine.checkpoint import load_weights
    from engine.model.dit import DiT

    ft = tmp_path / "finetune"
    assert main(["train", "world", "--data", str(data), "--tokenizer", str(tok), "--out", str(ft), "--init",
                 str(world), "--action-weight", "3", "--steps", "1", "--batch", "1", "--frames", "4",
                 "--lr", "1e-9", "--checkpoint-every", "1"]) == 0
    shapes = DiT(engine.config.model).state_dict()
    before, after = load_weights(world, shapes), load_weights(ft, shapes)
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-2) for k in before)
    assert json.loads((ft / "config.json").read_text())["meta"]["args"]["init"] == str(world)
    # distillation: a consistency student that plays, with its teacher and sampler recorded
    student = tmp_path / "student"
    assert main(["train", "distill", "--teacher", str(world), "--data", str(data), "--out", str(student),
                 "--steps", "1", "--batch", "1", "--eval-clips", "1", "--self-context", "1",
                 "--checkpoint-every", "1", "--student-steps", "1"]) == 0
    s_engine = Engine.from_checkpoint(student)
    assert s_engine.config.sampler == SamplerConfig(kind="consistency", steps=1, schedule="linear")
    assert s_engine.config.model == engine.config.model
    assert s_engine.reset(0).rgb.shape == (120, 160, 3)
    s_meta = json.loads((student / "config.json").read_text())["meta"]
    assert s_meta["kind"].startswith("student") and s_meta["teacher"] == str(world) and s_meta["step"] == 1
    assert (student / "train" / "loss.png").is_file() and (student / "tokenizer.safetensors").is_file()
    from engine.precision import native_bf16

    assert json.loads((student / "train" / "state.json").read_text())["loop"]["bf16"] == native_bf16("cpu")
    # a student is not a flow-matching teacher
    assert main(["train", "distill", "--teacher", str(student), "--data", str(data),
                 "--out", str(tmp_path / "s2"), "--steps", "1"]) == 2
    # a copy-prior fine-tune of the plain teacher: new config fields recorded, plays, not distillable
    cp = tmp_path / "copy"
    assert main(["train", "world", "--data", str(data), "--tokenizer", str(tok), "--out", str(cp), "--init",
                 str(world), "--copy-prior", "--copy-tau", "0.6", "--window", "2", "--target-one", "0.5",
                 "--context-sigma-max", "0.3", "--steps", "1", "--batch", "1", "--checkpoint-every", "1",
                 "--teacher-steps", "1"]) == 0
    c_engine = Engine.from_checkpoint(cp)
    m = c_engine.config.model
    assert m.copy_prior and m.copy_tau == 0.6 and m.window_frames == 2
    assert c_engine.reset(0).rgb.shape == (120, 160, 3) and c_engine.step(Action()).rgb.shape == (120, 160, 3)
    assert main(["train", "distill", "--teacher", str(cp), "--data", str(data),
                 "--out", str(tmp_path / "s3"), "--steps", "1"]) == 2
    # a conv head trained alone on the copy-prior model: the DiT's weights stay bit for bit
    hd = tmp_path / "head"
    assert main(["train", "world", "--data", str(data), "--tokenizer", str(tok), "--out", str(hd), "--init",
                 str(cp), "--copy-prior", "--copy-tau", "0.6", "--window", "2", "--target-one", "0.5",
                 "--context-sigma-max", "0.3", "--steps", "2", "--batch", "1", "--checkpoint-every", "2",
                 "--teacher-steps", "1", "--conv-head", "8", "--train-only", "head", "--lr", "1e-2"]) == 0
    h_engine = Engine.from_checkpoint(hd)
    assert h_engine.config.model.conv_head == 8
    trunk, headed = load_weights(cp, DiT(m).state_dict()), load_weights(hd, DiT(h_engine.config.model).state_dict())
    assert all(torch.equal(trunk[k], headed[k]) for k in trunk)
    assert headed["head.out.weight"].abs().sum() > 0  # it learned (it starts at zero)
    assert h_engine.reset(0).rgb.shape == (120, 160, 3) and h_engine.step(Action()).rgb.shape == (120, 160, 3)


def test_horizontal_shift_sign() -> None:
    from app.showcase import horizontal_shift

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    assert horizontal_shift(a, np.roll(a, 7, axis=1)) == 7  # content moved right by 7 px
    assert horizontal_shift(a, np.roll(a, -5, axis=1)) == -5
    assert horizontal_shift(a, a) == 0


def test_showcase_writes_pictures(tmp_path: Path) -> None:
    """The pictures pipeline on a baseline predictor (the real game renders the ground truth);
    turning left in the real game moves the image right, turning right moves it left."""
    from app.cli import DEFAULT_SUITE
    from app.predictors import CopyLast
    from app.showcase import ShowcaseArgs, run_showcase

    args = ShowcaseArgs(model="copy-last", out=str(tmp_path), suite=DEFAULT_SUITE, episodes=(0,),
                        horizons=(0.5, 1.0), video_seconds=1.0, response_seconds=0.5, video_scale=1, video_crf=28)
    result = run_showcase(args, CopyLast())
    for name in ("grid.png", "actions.png", "rollout.mp4"):
        assert (tmp_path / name).stat().st_size > 1000
    with av.open(str(tmp_path / "rollout.mp4")) as video:  # truth | model at native size
        s = video.streams.video[0]
        assert (s.width, s.height) == (320, 120)
    for bad in ({"video_scale": 0}, {"video_crf": 52}):
        with pytest.raises(ValueError, match="video"):
            dataclasses.replace(args, **bad)
    assert json.loads((tmp_path / "showcase.json").read_text())["actions"] == result["actions"]
    shifts = {k: v["mean_shift_px_per_frame"] for k, v in result["actions"].items()}
    assert shifts["turn left"]["game"] > 2 and shifts["turn right"]["game"] < -2
    assert shifts["turn left"]["model"] == 0  # copy-last never moves


@pytest.mark.parametrize("native", [True, False])
def test_latents_are_encoded_in_fp32_where_bf16_is_emulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           native: bool) -> None:
    """Emulated bf16 (AVX2) encoded 15x slower than fp32; such CPUs encode in fp32, into a cache of
    their own, so that latents of two formats never mix under one name."""
    import train.data as data_mod
    from world.shards import append_index, write_shard

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for ep in range(2):
        append_index(data, write_shard(data, ep, rng.integers(0, 255, (3, 120, 160, 3), dtype=np.uint8),
                                       rng.integers(0, 2, (3, 8), dtype=np.uint8), {}))
    tok = tmp_path / "tok"
    save_tokenizer(tok, Tokenizer(TokenizerConfig()))
    made = []
    real = data_mod.TokenizerDecoder
    monkeypatch.setattr(data_mod, "native_bf16", lambda device="cpu": native)
    monkeypatch.setattr(data_mod, "TokenizerDecoder", lambda *a, **k: made.append(k["dtype"]) or real(*a, **k))
    train_eps, held, _ = data_mod.load_latent_data(str(data), tok, 1, torch.device("cpu"), progress=False)
    assert made == [torch.bfloat16 if native else torch.float32]
    (cache,) = (data / "latents").iterdir()
    assert cache.name.endswith("-fp32") != native and len(list(cache.iterdir())) == 2
    assert train_eps[0].latents.shape[0] == 3 and len(held) == 1
