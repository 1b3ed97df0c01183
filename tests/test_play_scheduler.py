"""The play server on the scheduler: every session's frame of a tick in one batched forward; a
stalled client costs the others nothing; held keys are drafted and the drafts are shown."""

from __future__ import annotations

import json

from tests.conftest import MakeClient
from tests.test_play import next_frame, sessions_drop_to

HOLD_W = json.dumps({"type": "input", "seq": 1, "ts": 1.0, "keys": ["KeyW"]})


def _indices(ws, n: int) -> list[int]:
    return [next_frame(ws)[0]["index"] for _ in range(n)]


def test_sessions_share_one_batched_step(make_client: MakeClient) -> None:
    client = make_client(max_sessions=3)
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        next_frame(a)
        next_frame(b)
        a.send_text(HOLD_W)
        ia, ib = _indices(a, 15), _indices(b, 15)
        assert ia == list(range(ia[0], ia[0] + 15)) and ib == list(range(ib[0], ib[0] + 15))
        health = client.get("/healthz").json()
        assert health["sessions"] == 2 and health["scheduler"]["batched"] > 0, health
    assert sessions_drop_to(client, 0)


def test_a_stalled_client_does_not_hold_back_the_others(make_client: MakeClient) -> None:
    """One client reads nothing; the other still gets a frame every tick (consecutive indices),
    and the stalled one's world keeps being stepped (its frames are dropped, not queued)."""
    client = make_client(max_sessions=2)
    hub = client.app.state.hub
    with client.websocket_connect("/ws") as stalled:
        next_frame(stalled)
        with client.websocket_connect("/ws") as reader:
            next_frame(reader)
            seen = _indices(reader, 40)
            assert seen == list(range(seen[0], seen[0] + 40))
            stepped = {c.session.id: c.session.engine.frame_index for c in hub.active}
            assert len(stepped) == 2 and min(stepped.values()) >= 30, stepped


def test_held_keys_are_drafted_and_drafts_are_shown(make_client: MakeClient) -> None:
    client = make_client(speculate=1)
    with client.websocket_connect("/ws") as ws:
        next_frame(ws)
        ws.send_text(HOLD_W)
        seen = _indices(ws, 40)
        assert seen == list(range(seen[0], seen[0] + 40))  # drafts taken in order: no frame skipped
        stats = client.get("/healthz").json()["scheduler"]
        assert stats["drafted"] > 0 and stats["accepted"] > 0 and stats["acceptance"] > 0.5, stats
