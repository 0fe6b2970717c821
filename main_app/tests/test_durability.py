"""History durability with real processes over the four real services, on SQLite and PostgreSQL.

A main_app killed with SIGKILL mid-reply, or a page that leaves mid-reply, loses no turn: the
user's message and the part of the reply that had gone out are in the history, marked interrupted.
And (PostgreSQL) two main_app processes share one history: a conversation started on one goes on
on the other, also after the first was killed mid-reply.
"""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
import websockets

from rvchat_app.testing import app_env
from rvchat_common.testing import ServiceProcess

pytestmark = pytest.mark.models

# A reply of many sentences (no sentence cap), so there is always a "mid-reply" to stop it in.
LONG_REPLIES = {"APP_MAX_REPLY_SENTENCES": "0", "APP_MAX_TOKENS": "300"}
ASK = "Tell me a long story about a brave little dragon who learns to fly."


def main_app(services: dict, database: str, tmp_path, **env: str) -> ServiceProcess:
    """main_app over the real services, its history in ``database`` (a SQLite path or a postgresql:// URL)."""
    extra = {**LONG_REPLIES, **env}
    if database.startswith("postgresql://"):
        extra["APP_DATABASE_URL"] = database
    return ServiceProcess("rvchat_app", "APP_", app_env(services, tmp_path / "unused.sqlite3", **extra)
                          if database.startswith("postgresql://") else app_env(services, database, **extra))


async def open_page(app: ServiceProcess, conversation_id: str | None = None):
    query = f"?conversation_id={conversation_id}" if conversation_id else ""
    ws = await websockets.connect(f"{app.ws_url}/ws{query}", max_size=None)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    services = hello["services"]
    while not all(s["up"] for s in services["services"].values()):
        ev = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if ev["type"] == "services":
            services = ev
    return ws


async def ask_until_audio(ws, text: str = ASK, chunks: int = 1, timeout: float = 90) -> dict:
    """Type a message; read until ``chunks`` reply audio chunks have arrived. What came, by kind."""
    await ws.send(json.dumps({"type": "text", "text": text}))
    got: dict = {"audio_texts": [], "conversation_id": None, "events": []}

    async def read() -> None:
        async for msg in ws:
            if isinstance(msg, bytes):
                continue
            ev = json.loads(msg)
            got["events"].append(ev)
            if ev["type"] in ("conversation_created", "conversation") and ev.get("id"):
                got["conversation_id"] = ev["id"]
            elif ev["type"] == "audio":
                got["audio_texts"].append(ev["text"])
                if len(got["audio_texts"]) >= chunks:
                    return
            elif ev["type"] in ("reply_end", "error"):
                raise AssertionError(f"the reply ended before {chunks} audio chunk(s): {ev}")

    await asyncio.wait_for(read(), timeout)
    return got


async def history(app: ServiceProcess, cid: str) -> list[dict]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{app.url}/api/conversations/{cid}")
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def assert_partial_reply(messages: list[dict], sent: list[str]) -> dict:
    """The user's message, then the reply as far as it had gone out, marked interrupted."""
    assert [m["role"] for m in messages] == ["user", "assistant"], messages
    assert messages[0]["content"] == ASK
    reply = messages[1]
    assert reply["interrupted"] is True and reply["content"].strip()
    # What had gone out: all of it (the row may hold one sentence more than the page had read when it
    # stopped), or the part of it the page had played (by the clock) when the page left.
    content, out = reply["content"].strip(), " ".join(t.strip() for t in sent)
    assert content.startswith(out) or out.startswith(content), (content, sent)
    return reply


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "durable.sqlite3")
    return request.getfixturevalue("postgres").create_database("durable")


async def test_sigkill_mid_reply_keeps_the_turn(services, db, tmp_path):
    app = main_app(services, db, tmp_path).start()
    try:
        ws = await open_page(app)
        # A chunk's row is committed before the next chunk is sent: with two received, the first is safe
        # (the page can only have heard more than the history holds for the ~1 ms of a commit).
        got = await ask_until_audio(ws, chunks=2)
        app.proc.send_signal(signal.SIGKILL)  # no shutdown hook runs: only what was committed survives
        app.proc.wait(10)
        await ws.close()
    finally:
        app.stop()
    # Read it back through a new main_app on the same database.
    again = main_app(services, db, tmp_path).start()
    try:
        reply = assert_partial_reply(await history(again, got["conversation_id"]), got["audio_texts"])
        assert reply["meta"] == {"in_progress": True}  # it never ended: it stays marked so
        assert len(reply["content"]) >= len(got["audio_texts"][0])
    finally:
        again.stop()


async def test_a_page_that_leaves_mid_reply_keeps_what_was_heard(services, db, tmp_path):
    app = main_app(services, db, tmp_path).start()
    try:
        ws = await open_page(app)
        got = await ask_until_audio(ws, chunks=1)
        # The page plays a moment of the first sentence (a word or two: Piper leads with ~0.2 s of silence, and
        # after 0.3 s no word had played in 2 of 6 runs here), then the tab is closed.
        await asyncio.sleep(0.6)
        await ws.close()
        for _ in range(100):  # the session records the interruption as it closes
            messages = await history(app, got["conversation_id"])
            if messages[-1]["role"] == "assistant" and (messages[-1]["meta"] or {}).get("reason"):
                break
            await asyncio.sleep(0.1)
        reply = assert_partial_reply(messages, got["audio_texts"])
        assert reply["meta"]["reason"] == "session closed", (reply, app.log_tail())
        assert reply["meta"]["full_text"].startswith(reply["content"].split()[0])
        assert reply["meta"]["played_ms"] > 0
    finally:
        app.stop()


async def test_two_main_apps_share_one_postgresql_history(services, postgres, tmp_path):
    url = postgres.create_database("shared")
    a = main_app(services, url, tmp_path).start()
    b = main_app(services, url, tmp_path).start()
    try:
        # Started on A: its reply is cut by a SIGKILL of A mid-reply.
        ws = await open_page(a)
        # Two chunks: the first one's row is committed before the second is sent (see the SIGKILL test).
        got = await ask_until_audio(ws, chunks=2)
        cid = got["conversation_id"]
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        await ws.close()
        # The page reconnects to B with the same conversation: B has all of it.
        ws = await open_page(b, cid)
        assert_partial_reply(await history(b, cid), got["audio_texts"])
        await ws.send(json.dumps({"type": "text", "text": "What was the dragon's name?", "voice": False}))
        while (ev := json.loads(await asyncio.wait_for(ws.recv(), 90)))["type"] != "reply_end":
            assert ev["type"] != "error", ev
        await ws.close()
        messages = await history(b, cid)
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[2]["content"] == "What was the dragon's name?"
        assert messages[3]["content"] == ev["text"]
        assert messages[3]["interrupted"] is False
        # A replica started afterwards sees the same conversation, in the list too.
        a2 = main_app(services, url, tmp_path).start()
        try:
            assert [m["content"] for m in await history(a2, cid)] == [m["content"] for m in messages]
            async with httpx.AsyncClient(timeout=10) as client:
                listed = (await client.get(f"{a2.url}/api/conversations")).json()["conversations"]
            assert [(c["id"], c["message_count"]) for c in listed] == [(cid, 4)]
        finally:
            a2.stop()
    finally:
        a.stop()
        b.stop()


async def test_sigterm_mid_reply_lets_the_reply_finish_then_the_page_is_told(services, tmp_path):
    """Graceful shutdown (a Kubernetes rollout): the reply in progress is finished and heard to the end,
    new pages are turned away, then each page is told it is being moved, and the process exits."""
    app = main_app(services, str(tmp_path / "drain.sqlite3"), tmp_path, APP_MAX_TOKENS="60",
                   APP_DRAIN_TIMEOUT_S="60").start()
    try:
        ws = await open_page(app)
        got = await ask_until_audio(ws, chunks=1)
        app.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{app.url}/readyz")).status_code == 503
        late = await websockets.connect(f"{app.ws_url}/ws")
        refused = json.loads(await late.recv())
        assert refused["type"] == "error" and refused["error"]["code"] == "restarting"
        await late.close()
        events = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                msg = await asyncio.wait_for(ws.recv(), 90)
                if isinstance(msg, str):
                    events.append(json.loads(msg))
        kinds = [e["type"] for e in events]
        assert "reply_end" in kinds and "interrupted" not in kinds and "error" not in kinds, kinds
        notice = [e for e in events if e["type"] == "notice"]
        assert kinds.index("reply_end") < kinds.index("notice") and "restarting" in notice[0]["message"]
        assert closed.value.rcvd is None or closed.value.rcvd.code in (1001, 1012)
        await asyncio.to_thread(app.proc.wait, 30)
        end = next(e for e in events if e["type"] == "reply_end")
    finally:
        app.stop()
    again = main_app(services, str(tmp_path / "drain.sqlite3"), tmp_path).start()
    try:
        messages = await history(again, got["conversation_id"])
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == end["text"] and messages[1]["interrupted"] is False
    finally:
        again.stop()
