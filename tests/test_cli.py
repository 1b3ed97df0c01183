"""The CLI: bench prints the documented JSON; planned commands say they are not there yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main

REQUIRED = {"preset", "device", "frames", "steps", "fps", "ms_per_frame", "cache_speedup", "params", "peak_rss_mb"}


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--preset", "tiny", "--frames", "6", "--steps", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert REQUIRED <= set(result)
    assert result["preset"] == "tiny" and result["frames"] == 6 and result["steps"] == 2
    assert {"model", "decode", "total", "jpeg"} <= set(result["ms_per_frame"])  # end to end, as play serves
    assert result["fps"] > 0 and result["cache_speedup"] > 0 and result["params"] > 0


def test_bench_sweep_times_other_sampler_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--preset", "tiny", "--frames", "3", "--no-recompute", "--sweep", "1,euler:4",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = [(r["sampler"], r["steps"]) for r in result["sweep"]]
    assert rows == [("consistency", 1), ("euler", 4)]  # tiny's own sampler is consistency x 2
    assert all(r["fps"] > 0 and "jpeg" in r["ms_per_frame"] for r in result["sweep"])
    assert main(["bench", "--preset", "tiny", "--frames", "3", "--no-recompute", "--sweep", "1,2"]) == 0
    assert "| consistency | 1 |" in capsys.readouterr().out
    assert main(["bench", "--preset", "tiny", "--sweep", "heun:2"]) == 2
    assert "--sweep" in capsys.readouterr().err


def test_bench_table_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--preset", "tiny", "--frames", "3", "--no-recompute"]) == 0
    out = capsys.readouterr().out
    assert "FPS" in out and "cache speed-up" not in out
    assert main(["bench", "--preset", "tiny", "--frames", "0"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["bench", "--model", "/nonexistent"]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "huge"])


def test_bench_sessions_and_speculation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--sessions: one alone vs N together in one run; --speculate: a trace (here a recording's
    actions.jsonl, held keys) in real time without and with drafting."""
    trace = tmp_path / "t.actions.jsonl"
    steps = [json.dumps({"event": "step", "buttons": ["forward"] if i < 30 else ["turn_left"]}) for i in range(40)]
    trace.write_text("\n".join([json.dumps({"event": "reset", "seed": 0}), *steps]) + "\n")
    assert main(["bench", "--preset", "tiny", "--frames", "24", "--no-recompute", "--sessions", "3",
                 "--speculate", "2", "--trace", str(trace), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    s = r["sessions"]
    assert s["many"]["sessions"] == 3 and s["one"]["sessions"] == 1
    assert s["ratio_to_one"] == pytest.approx(s["many"]["aggregate_fps"] / s["one"]["aggregate_fps"])
    p = r["speculation"]
    assert p["off"]["drafted"] == 0 and p["off"]["frames"] == p["on"]["frames"] == 24
    assert p["on"]["drafted"] > 0 and p["on"]["accepted"] > 0 and 0 < p["on"]["acceptance"] <= 1
    assert main(["bench", "--preset", "tiny", "--speculate", "1", "--trace", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny", "--sessions", "0"]) == 2
    assert "--sessions" in capsys.readouterr().err


def test_play_and_record_reject_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["play", "--preset", "tiny", "--max-sessions", "0"]) == 2
    assert "--max-sessions" in capsys.readouterr().err
    assert main(["play", "--model", "/nonexistent"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["record", "--preset", "tiny", "--out", "x.avi"]) == 2
    assert "--out must end in .mp4" in capsys.readouterr().err
    assert main(["record", "--replay", "/nonexistent/x.actions.jsonl"]) == 2
    assert "--replay needs" in capsys.readouterr().err


def test_cli_needs_no_game_to_parse() -> None:
    """A training machine may lack ViZDoom and gymnasium: building the parser and parsing a train
    command must not import them (app.collect / world.doom are imported only to run)."""
    import subprocess
    import sys

    code = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('gymnasium', 'vizdoom'):\n"
        "        raise ImportError('blocked ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from app.cli import build_parser\n"
        "a = build_parser().parse_args(['train', 'distill', '--teacher', 't', '--data', 'd', '--out', 'o'])\n"
        "assert a.what == 'distill' and a.student_steps == 2\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_maps_expand_ranges_and_reject_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    """ViZDoom waits forever on a map it does not know (it took ``MAP01..MAP08`` as one name), so
    collect and eval must expand ranges and refuse anything else before a game starts."""
    from world.maps import parse_maps

    assert parse_maps("MAP01..MAP03, map11,MAP02") == ("MAP01", "MAP02", "MAP03", "MAP11")
    assert parse_maps("e1m1..E1M2") == ("E1M1", "E1M2")
    for bad in ("MAP1", "MAP01..E1M2", "E1M1..E2M3", "MAP08..MAP01", "DOOM", " , "):
        with pytest.raises(ValueError):
            parse_maps(bad)
    with pytest.raises(SystemExit) as exit_:
        main(["collect", "--episodes", "1", "--seconds", "1", "--seed", "0", "--out", "x", "--maps", "MAP01..E1M2"])
    assert exit_.value.code == 2
    assert "--maps" in capsys.readouterr().err
