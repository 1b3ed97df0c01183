"""VDE and the no-ground-truth video metrics: a hand-computed VDE; no drift gives 0; each metric
moves the right way on a known degradation; eval-videos keeps going past a bad file and resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest

from app.cli import main
from eval import videos as videos_module
from eval.vde import chunk_means, vde, video_vde, weights
from eval.video_metrics import clarity, consistency, dynamics, motion_smoothness


def _scene(t: int = 40, h: int = 48, w: int = 64, seed: int = 0, block: int = 4) -> np.ndarray:
    """A textured view panning one pixel a frame (``block``: the texture's grain in pixels)."""
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, (h // block, 2 * w // block, 3), dtype=np.uint8).repeat(block, 0).repeat(block, 1)
    return np.stack([base[:, i : i + w] for i in range(t)])


def _blur(frames: np.ndarray) -> np.ndarray:
    x = frames.astype(np.float32)
    for axis in (1, 2):
        x = (np.roll(x, 1, axis) + x + np.roll(x, -1, axis)) / 3
    return x.round().astype(np.uint8)


def test_vde_by_hand() -> None:
    m = np.array([2.0, 3.0, 1.0, 2.0])  # N = 4: w_2..w_4 = 3, 2, 1
    assert weights(4).tolist() == [3.0, 2.0, 1.0]
    assert vde(m) == pytest.approx(3 * 1 / 2 + 2 * 1 / 2 + 1 * 0 / 2)
    assert vde(m, "log") == pytest.approx(math.log(4) * 0.5 + math.log(3) * 0.5)
    assert chunk_means(np.arange(23.0), 10).tolist() == [0.5 + 2 * i for i in range(10)]  # 3 frames trimmed
    assert vde(np.full(10, 7.0)) == 0.0  # identical chunks: no drift
    assert vde(np.zeros(5)) == 0.0 and vde(np.array([0.0, 1.0])) == math.inf  # m_1 = 0
    with pytest.raises(ValueError, match="cannot make"):
        chunk_means(np.ones(5), 10)
    with pytest.raises(ValueError, match="weights"):
        vde(m, "cubic")


def test_metrics_move_the_right_way_on_known_degradations() -> None:
    video = _scene()
    assert clarity(_blur(video)).mean() < 0.85 * clarity(video).mean()  # blur
    noisy = np.clip(video.astype(int) + np.random.default_rng(1).normal(0, 25, video.shape), 0, 255).astype(np.uint8)
    assert motion_smoothness(noisy).mean() < motion_smoothness(video).mean() - 0.05  # flicker / noise
    frozen = np.repeat(video[:1], len(video), axis=0)
    assert dynamics(frozen).max() == 0 < dynamics(video).min()  # frozen frames
    still = np.repeat(_scene(block=16)[:1].astype(int), 40, axis=0)  # a still view, sensor noise
    coarse = np.clip(still + np.random.default_rng(2).normal(0, 4, still.shape), 0, 255).astype(np.uint8)
    shifted = coarse.copy()
    shifted[20:, :, :, :2] = 255 - shifted[20:, :, :, :2]  # colours shift halfway (red, green inverted)

    def features(frames: np.ndarray) -> np.ndarray:  # a tiny stand-in feature map: centred colour
        x = frames.astype(np.float64).reshape(len(frames), 12, 4, 16, 4, 3).mean((2, 4))
        return (x - 128.0).transpose(0, 3, 1, 2)

    for before, after in zip(consistency(coarse, features), consistency(shifted, features), strict=True):
        assert after[20:].mean() < before[20:].mean() - 0.1  # colour shift: subject and background
    # a video that blurs more and more drifts; a steady one does not
    drifting = np.concatenate([_blur(video[i * 4 : (i + 1) * 4]) if i % 2 else video[i * 4 : (i + 1) * 4]
                               for i in range(10)])
    progressive = video.copy()
    for i in range(1, 10):
        for _ in range(i):
            progressive[i * 4 : (i + 1) * 4] = _blur(progressive[i * 4 : (i + 1) * 4])
    assert video_vde(clarity(progressive)) > video_vde(clarity(drifting)) > video_vde(clarity(video)) >= 0


def _mp4(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())


def test_eval_videos_marks_a_bad_file_failed_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _mp4(tmp_path / "a.mp4", _scene(30))
    _mp4(tmp_path / "b.mp4", _blur(_scene(30, seed=2)))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    out = tmp_path / "res.jsonl"
    assert main(["eval-videos", str(tmp_path), "--out", str(out), "--no-features", "--json"]) == 1
    rows = {r["video"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["a.mp4"]["ok"] and rows["b.mp4"]["ok"] and not rows["broken.mp4"]["ok"]
    assert rows["broken.mp4"]["error"] and rows["a.mp4"]["frames"] == 30
    assert rows["b.mp4"]["mean"]["clarity"] < rows["a.mp4"]["mean"]["clarity"]
    assert set(rows["a.mp4"]["vde"]) == {"clarity", "motion_smoothness", "dynamics"}
    with open(out, "a") as f:
        f.write('{"video": "a.mp4", "ok": tr')  # a run killed mid-line
    scored: list[str] = []
    original = videos_module.score_video

    def counting(path: Path, *args: object) -> dict:
        scored.append(path.name)
        return original(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(videos_module, "score_video", counting)
    assert main(["eval-videos", str(tmp_path), "--out", str(out), "--no-features"]) == 1
    assert scored == ["broken.mp4"]  # finished videos are not redone; the failed one is retried
    assert "2 scored, 1 failed" in capsys.readouterr().out
    assert main(["eval-videos", str(tmp_path / "nothing")]) == 2


def test_frechet_distance_by_hand_and_its_direction() -> None:
    """FD of two Gaussians' samples: 0 for the same set, the squared mean shift for a shifted one;
    per-bucket stats from episodes add up, and a bigger change is further."""
    from eval.fd import add_stats, aggregate_fd, episode_fd_stats, frechet, stats

    g = np.random.default_rng(0)
    a = g.normal(0, 1, (4000, 3))
    assert frechet(stats(a), stats(a)) == pytest.approx(0, abs=1e-6)
    assert frechet(stats(a), stats(a + np.array([2.0, 0, 0]))) == pytest.approx(4.0, rel=1e-6)
    half = add_stats(add_stats(None, stats(a[:2000])), stats(a[2000:]))
    assert frechet(half, stats(a)) == pytest.approx(0, abs=1e-6)
    true = g.normal(0, 1, (3, 35, 8, 4, 4))  # 3 episodes x 35 frames of (C, h, w) latents
    rows = [{"fd_stats": episode_fd_stats(t + 0.1 * g.normal(size=t.shape), t, 17.5, (1, 2))} for t in true]
    far = [{"fd_stats": episode_fd_stats(t + 2.0, t, 17.5, (1, 2))} for t in true]
    near_fd, far_fd = aggregate_fd(rows), aggregate_fd(far)
    assert set(near_fd["fd"]) == {"@1s", "@2s"} and near_fd["fd"]["@1s"] < far_fd["fd"]["@1s"]
    lo, hi = far_fd["ci95"]["@1s"]
    assert lo <= far_fd["fd"]["@1s"] <= hi * 1.0001
