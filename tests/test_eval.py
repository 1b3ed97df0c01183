"""Eval suite, ground-truth replay, metrics and `worldstream eval`."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from app.cli import DEFAULT_SUITE, main, pair_names
from app.collect import DEFAULT_MAPS, EVAL_SEED_BASE
from engine.action import Action
from eval.metrics import PSNR_CAP, psnr, ssim
from world.suite import SuiteError, decode_actions, encode_actions, load_suite


def test_shipped_suite_is_held_out_and_renders_exactly() -> None:
    suite = load_suite(DEFAULT_SUITE)
    assert len(suite.episodes) >= 8
    for ep in suite.episodes:
        assert ep.seed >= EVAL_SEED_BASE  # never a training seed
        assert (ep.frames - ep.context_frames) / suite.fps >= 60  # a full minute to predict
        assert (ep.map in DEFAULT_MAPS) == (ep.split == "held-out-seed")
    frames = suite.episodes[0].render()  # verifies the sha256 of every frame
    assert frames.shape == (suite.episodes[0].frames, 120, 160, 3)


def test_tuning_suite_is_apart_from_the_report_suite() -> None:
    """assets/eval/doom-tune.json is for choosing knobs; doom-minute stays the report: no episode
    (map, seed) in both, no training seed in either."""
    tune = load_suite(Path(DEFAULT_SUITE).with_name("doom-tune.json"))
    report = {(ep.map, ep.seed) for ep in load_suite(DEFAULT_SUITE).episodes}
    assert tune.episodes and all(ep.seed >= EVAL_SEED_BASE for ep in tune.episodes)
    assert not report & {(ep.map, ep.seed) for ep in tune.episodes}
    for ep in tune.episodes:
        ep.render()  # verifies every frame's sha256


def test_every_suite_episode_verifies() -> None:
    for ep in load_suite(DEFAULT_SUITE).episodes[1:]:
        ep.render()


def test_action_rle_roundtrip() -> None:
    acts = [Action.of("forward")] * 3 + [Action()] + [Action.of("turn_left", "attack")] * 2
    runs = encode_actions(acts)
    assert runs == [[1, 3], [0, 1], [16 + 64, 2]]
    assert decode_actions(runs) == acts
    with pytest.raises(SuiteError, match="bad action run"):
        decode_actions([[256, 1]])


def test_bad_suites(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SuiteError, match="not valid JSON"):
        load_suite(bad)
    doc = json.loads(Path(DEFAULT_SUITE).read_text())
    doc["episodes"] = doc["episodes"][:1]
    doc["episodes"][0]["sha256"] = "0" * 64
    bad.write_text(json.dumps(doc))
    with pytest.raises(SuiteError, match="does not match its checksum"):
        load_suite(bad).episodes[0].render()
    doc["episodes"][0]["frames"] += 1
    bad.write_text(json.dumps(doc))
    with pytest.raises(SuiteError, match="do not fit together"):
        load_suite(bad)


def test_metrics() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    assert np.all(psnr(a, a) == PSNR_CAP)
    assert np.allclose(ssim(a, a), 1.0, atol=1e-6)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = ((a.astype(float) - b) ** 2).reshape(3, -1).mean(1)
    assert np.allclose(psnr(a, b), 10 * np.log10(255**2 / mse))
    noisy = np.clip(a.astype(int) + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert np.all(ssim(a, noisy) < ssim(a, b)) and np.all(psnr(a, noisy) < psnr(a, b))
    with pytest.raises(ValueError):
        psnr(a, a[:2])


def test_sharpness_and_colour_histogram() -> None:
    from eval.metrics import color_hist_distance, sharpness

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    flat = np.full_like(a, 128)
    blurred = ((a.astype(int) + np.roll(a, 1, axis=2) + np.roll(a, 1, axis=1)) // 3).astype(np.uint8)
    assert np.all(sharpness(flat) == 0) and np.all(sharpness(blurred) < sharpness(a))
    assert np.all(color_hist_distance(a, a) == 0)
    assert np.all(color_hist_distance(a, flat) > 0.9)  # one bin against a spread: nearly disjoint
    assert np.all(color_hist_distance(a, blurred) < color_hist_distance(a, flat))
    shifted = np.roll(a, 7, axis=2)  # same colours, moved: histograms equal
    assert np.allclose(color_hist_distance(a, shifted), 0)


def test_replay_writes_a_playable_mp4(tmp_path: Path) -> None:
    out = tmp_path / "gt.mp4"
    assert main(["replay", DEFAULT_SUITE, "--episode", "1", "--out", str(out)]) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        size, rate = (stream.width, stream.height), float(stream.average_rate)
        frames = list(container.decode(video=0))
    assert len(frames) == load_suite(DEFAULT_SUITE).episodes[1].frames
    assert size == (160, 120) and rate == 17.5
    assert main(["replay", "--episode", "99", "--out", str(out)]) == 2


def test_default_suite_is_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["replay", "--episode", "0", "--out", "gt.mp4"]) == 0
    assert (tmp_path / "gt.mp4").stat().st_size > 0


def test_eval_baseline_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--predictor", "copy-last", "--episodes", "2", "--seconds", "5.5", "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 2 and summary["failed"] == []
    mean = summary["mean"]["all"]
    assert mean["psnr@1s"] > 5 and mean["psnr@5s"] > 5 and mean["psnr@10s"] is None
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(rows[0]["psnr_curve"]) == round(5.5 * 17.5)
    for name in ("episodes.csv", "summary.md", "summary.json", "psnr.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| all | 2 |" in (tmp_path / "summary.md").read_text()
    assert abs(mean["sharp@1s"] - 1) < 0.2 and 0 <= mean["hist@1s"] < 0.5  # copying keeps the look
    fd = summary["frechet"]  # the bundled tokenizer's features: FD per horizon bucket with intervals
    assert fd["episodes"] == 2 and fd["fd"]["@1s"] > 0 and fd["fd"]["@5s"] > 0 and "@30s" not in fd["fd"], fd
    assert "Fréchet distance" in (tmp_path / "summary.md").read_text()
    assert summary["vde"]["clarity"]["episodes"] == 2  # copy-last never changes: no drift at all
    assert summary["vde"]["clarity"]["mean"] == 0 and summary["vde"]["dynamics"]["mean"] == 0
    # A rerun resumes: the scored rows are kept as they were.
    assert main(args) == 0
    again = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert [r["predict_fps"] for r in again] == [r["predict_fps"] for r in rows]


def test_eval_next_frame_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Teacher forced: copy-last predicts x_t as x_{t-1}; its score equals the metric computed
    by hand on the rendered ground truth at the same start points."""
    args = ["eval", "--predictor", "copy-last", "--episodes", "1", "--mode", "next-frame", "--starts", "3",
            "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "next-frame" and summary["ok"] == 1
    ep = load_suite(DEFAULT_SUITE).episodes[0]
    truth, k = ep.render(), ep.context_frames
    t = np.unique(np.linspace(k, len(truth) - 1, 3).round().astype(int))
    assert summary["mean"]["all"]["psnr@next"] == pytest.approx(float(psnr(truth[t - 1], truth[t]).mean()))
    assert "sharpness ratio" in (tmp_path / "summary.md").read_text()
    # The open-loop rows of the same folder are not taken for next-frame ones (and back).
    assert main(["eval", "--predictor", "copy-last", "--episodes", "1", "--seconds", "1", "--out", str(tmp_path),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"]["all"]["psnr@1s"] is not None


def test_eval_round_trip_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tokenizer's ceiling: the bundled model's tokenizer encodes and decodes the frames that
    next-frame mode scores; the score equals the same round trip done by hand, and is far above
    what a prediction gets (a round trip is no prediction)."""
    import torch

    from app.engine_spec import BUNDLED_MODEL
    from engine.tokenizer import TokenizerDecoder, load_tokenizer

    model = str(BUNDLED_MODEL)
    args = ["eval", "--model", model, "--episodes", "1", "--mode", "round-trip", "--starts", "3",
            "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "round-trip" and summary["ok"] == 1
    ep = load_suite(DEFAULT_SUITE).episodes[0]
    truth, k = ep.render(), ep.context_frames
    t = np.unique(np.linspace(k, len(truth) - 1, 3).round().astype(int))
    tok = TokenizerDecoder(load_tokenizer(model)[0])
    by_hand = tok.decode(tok.encode(torch.from_numpy(truth[t]))).numpy()
    assert summary["mean"]["all"]["psnr@next"] == pytest.approx(float(psnr(by_hand, truth[t]).mean()))
    assert summary["mean"]["all"]["psnr@next"] > 25
    assert "encode -> decode" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="round-trip needs --model"):
        from app.eval import EvalArgs

        EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), predictor="copy-last", mode="round-trip")


def test_eval_keeps_going_past_a_failing_episode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.eval as ev
    from app.predictors import CopyLast

    class Flaky(CopyLast):
        name = "flaky"
        calls = 0

        def reset(self, seed: int, context: np.ndarray, context_actions: list[Action]) -> None:
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise RuntimeError("boom")
            super().reset(seed, context, context_actions)

    monkeypatch.setattr(ev, "make_predictor", lambda args: Flaky())
    summary = ev.run_eval(ev.EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), predictor="copy-last",
                                      episodes=3, seconds=1.0))
    assert summary["ok"] == 2 and len(summary["failed"]) == 1
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert rows[1]["status"] == "failed" and "boom" in rows[1]["error"]


def test_workers_get_the_dtype_decided_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--dtype auto is decided by timing bf16 against fp32; the parent decides it once and every
    worker gets the answer (each deciding under the others' load once scored an episode in fp32
    beside bf16 ones)."""
    import app.eval as ev
    import app.eval_workers as workers

    seen = []
    monkeypatch.setattr(ev, "resolve_dtype", lambda name, device="cpu": "fp32" if name == "auto" else name)
    monkeypatch.setattr(workers, "score_in_workers", lambda args, names, threads, finished, strip=None:
                        seen.append(args.dtype))
    ev.run_eval(ev.EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), preset="tiny", episodes=2, seconds=1.0,
                            idm="none", fd="none", workers=2))
    assert seen == ["fp32"]


def test_eval_runs_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--model PATH`: any engine checkpoint is a predictor (random weights: plumbing, not quality)."""
    from engine.checkpoint import save_checkpoint
    from engine.config import PRESETS
    from engine.model.dit import DiT

    ckpt = save_checkpoint(tmp_path / "ckpt", PRESETS["small"], DiT(PRESETS["small"].model).state_dict())
    args = ["eval", "--model", str(ckpt), "--episodes", "1", "--seconds", "1", "--out", str(tmp_path / "ev"), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 1 and summary["mean"]["all"]["psnr@1s"] is not None
    from engine.precision import resolve_dtype, resolve_int8

    dtype = resolve_dtype("auto")  # --dtype auto and --int8 auto: this machine's choice
    tag = ("-bf16" if dtype == "bf16" else "") + ("-int8" if resolve_int8("auto", "cpu", dtype) == "on" else "")
    assert summary["predictor"] == f"model:{ckpt}:consistencyx1{tag}"


def test_eval_argument_errors(tmp_path: Path) -> None:
    from app.eval import EvalArgs

    with pytest.raises(ValueError, match="exactly one"):
        EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path))
    with pytest.raises(ValueError, match="--predictor must be"):
        EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), predictor="oracle")
    with pytest.raises(ValueError, match="not to a baseline"):
        EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), predictor="copy-last", steps=4)
    with pytest.raises(ValueError, match="--steps"):
        EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), preset="tiny", steps=0)
    with pytest.raises(ValueError, match="--mode"):
        EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), predictor="copy-last", mode="closed")
    with pytest.raises(ValueError, match="--starts"):
        EvalArgs(suite=DEFAULT_SUITE, out=str(tmp_path), predictor="copy-last", mode="next-frame", starts=0)
    assert main(["eval", "--predictor", "copy-last", "--suite", str(tmp_path / "x.json"), "--out", str(tmp_path)]) == 2


def test_pairs_get_one_folder_each_even_when_two_models_share_a_name(tmp_path: Path) -> None:
    who = [("model", str(tmp_path / "gpu1" / "a")), ("model", str(tmp_path / "gpu2" / "a")),
           ("model", str(tmp_path / "b")), ("predictor", "copy-last"), ("preset", "tiny"),
           ("model", str(tmp_path / "b"))]
    assert pair_names(who) == ["gpu1-a", "gpu2-a", "b", "copy-last", "preset-tiny", "b-2"]


def test_model_sampling_options_beside_a_baseline_apply_to_the_models(tmp_path: Path) -> None:
    args = ["eval", "--predictor", "copy-last", "--preset", "tiny", "--steps", "2", "--episodes", "1", "--seconds",
            "1", "--idm", "none", "--fd", "none", "--out", str(tmp_path)]
    assert main(args) == 0  # the baseline is scored, not failed for having no sampler
    def predictor(name: str) -> str:
        return json.loads((tmp_path / "doom-minute" / name / "summary.json").read_text())["predictor"]

    assert predictor("copy-last") == "copy-last" and ":consistencyx2" in predictor("preset-tiny")


def test_eval_runs_every_pair_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two predictors on one suite: a folder per pair, then one report (tables with intervals,
    plots with bands); eval-report rebuilds it from the stored results alone."""
    args = ["eval", "--predictor", "copy-last", "--predictor", "mean-frame", "--episodes", "2", "--seconds", "2",
            "--idm", "none", "--out", str(tmp_path)]
    assert main(args) == 0
    report = tmp_path / "report.md"
    text = report.read_text()
    assert "| copy-last | 2 |" in text and "| mean-frame | 2 |" in text and "[" in text  # intervals
    assert (tmp_path / "doom-minute" / "copy-last" / "summary.json").is_file()
    assert (tmp_path / "report_psnr.png").stat().st_size > 0
    assert "Drift (VDE" in text and "Frames at each horizon" in text  # drift of each run; frame strips
    assert (tmp_path / "doom-minute" / "mean-frame" / "strip.png").stat().st_size > 0
    report.unlink()
    capsys.readouterr()
    assert main(["eval-report", str(tmp_path)]) == 0
    assert report.read_text() == text
    assert main(["eval-report", str(tmp_path / "doom-minute" / "nothing-here")]) == 2
    assert main(["eval", "--out", str(tmp_path)]) == 2  # nobody to evaluate


@pytest.mark.parametrize("where", ["workers", "ray"])
def test_workers_and_ray_give_the_serial_result(tmp_path: Path, where: str) -> None:
    """Two local processes (or two actors of a Ray instance started here, 2 CPUs) score the same
    rows as one process with the same threads (a model's rollouts are float sums that depend on
    threads, so all use 1)."""
    if where == "ray":
        pytest.importorskip("ray", reason="Ray is the optional extra 'ray'")
    common = ["--preset", "small", "--episodes", "3", "--seconds", "1", "--idm", "none", "--threads", "1"]
    assert main(["eval", *common, "--out", str(tmp_path / "serial")]) == 0
    spread = ["--workers", "2"] + (["--ray-address", "local"] if where == "ray" else [])
    assert main(["eval", *common, *spread, "--out", str(tmp_path / "workers")]) == 0

    def rows(folder: str) -> list[dict]:
        out = [json.loads(line) for line in (tmp_path / folder / "episodes.jsonl").read_text().splitlines()]
        for r in out:
            r.pop("predict_fps")
        return out

    serial = rows("serial")
    assert [r["status"] for r in serial] == ["ok"] * 3 and serial[0]["threads"] == 1
    spread_rows = rows("workers")
    differ = [(i, k, a.get(k), b.get(k)) for i, (a, b) in enumerate(zip(serial, spread_rows, strict=True))
              for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    assert serial == spread_rows, differ[:10]
