"""`worldstream soak --short` in the suite: the hostile-client campaign of issue #16 against a real server."""

from __future__ import annotations

from app.attacks import hostile_messages
from app.play.protocol import ProtocolError, parse


def test_hostile_messages_are_all_refused_by_the_parser() -> None:
    messages = hostile_messages(500, seed=1)
    assert len(messages) == 500 and any(isinstance(m, bytes) for m in messages)
    for m in messages:
        try:
            parse(m)
        except ProtocolError:
            continue
        raise AssertionError(f"accepted: {m!r}")


def test_soak_short_campaign_holds() -> None:
    """`worldstream soak --short` against a tiny-preset server in a child process: every fuzzed
    message answered, no crash, no traceback, no session lost, frames dropped for the silent
    client, every recording decodes; the player keeps at least half its frame rate in every phase
    (a liveness bound, not a speed target: `worldstream soak` prints the real numbers)."""
    from app.soak import SHORT, SoakArgs, run_soak

    r = run_soak(SoakArgs(preset="tiny", **SHORT))  # type: ignore[arg-type]
    assert r["ok"], r
    phases = {p["phase"].split(" (")[0]: p for p in r["phases"]}
    assert phases["slow reader"]["frames_dropped"] > 0
    assert phases["flood"]["blast_closed"].startswith("1008")
    assert r["recordings"] >= 6 and r["recordings_ok"] == r["recordings"]
    base = phases["before"]["player_fps"]
    assert all(p["player_fps"] is None or p["player_fps"] >= 0.5 * base for p in r["phases"]), r["phases"]
    assert all(p["server_alive"] for p in r["phases"])
