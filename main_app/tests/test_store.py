"""The history store on both backends: SQLite (the embedded default) and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import pytest_asyncio
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from rvchat_app.store import Store, database_url
from rvchat_app.store.schema import metadata


# asyncpg connections belong to the loop that opened them: the store lives in the test's own loop.
@pytest_asyncio.fixture(loop_scope="function")
async def store(database):
    s = Store(database)
    await s.open()
    yield s
    await s.close()


async def test_conversations_and_messages(store):
    assert await store.list_conversations() == []
    a = await store.create_conversation()
    b = await store.create_conversation("Trip planning " * 10)
    assert len(b["title"]) == 60 and b["message_count"] == 0
    assert await store.exists(a["id"]) and not await store.exists("nope")

    user = await store.add_message(a["id"], "user", "  What is the   capital of France?  ", source="voice")
    reply = await store.add_message(a["id"], "assistant", "Paris", interrupted=True,
                                    meta={"in_progress": True})
    assert isinstance(user["id"], int) and reply["id"] > user["id"]
    await store.update_message(reply["id"], content="Paris is the capital.", interrupted=False,
                               meta={"latency": {"total_ms": 800}})
    await store.add_message(a["id"], "user", "And Italy?")

    conv = await store.get_conversation(a["id"])
    assert conv["title"] == "What is the capital of France?"  # the first user message names it
    assert conv["message_count"] == 3
    first, second, third = conv["messages"]
    assert (first["role"], first["source"], first["interrupted"]) == ("user", "voice", False)
    assert first["meta"] is None
    assert second["content"] == "Paris is the capital." and second["interrupted"] is False
    assert second["meta"] == {"latency": {"total_ms": 800}}
    last_two = await store.messages(a["id"], last=2)
    assert [m["content"] for m in last_two] == ["Paris is the capital.", "And Italy?"]

    listed = await store.list_conversations()
    assert [c["id"] for c in listed] == [a["id"], b["id"]]  # most recently updated first
    assert [c["message_count"] for c in listed] == [3, 0]
    assert len(await store.list_conversations(limit=1)) == 1

    assert await store.delete_conversation(a["id"]) is True
    assert await store.delete_conversation(a["id"]) is False
    assert await store.get_conversation(a["id"]) is None
    assert await store.messages(a["id"]) == []  # deleted with it (ON DELETE CASCADE)
    assert await store.ping() is None


async def test_migrated_schema_matches_the_tables_the_queries_use(store):
    """The Alembic migrations and schema.py describe the same tables (on both backends)."""
    def diff(sync_conn: sa.Connection) -> list:
        return compare_metadata(MigrationContext.configure(sync_conn), metadata)

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert version == "0001"


async def test_reopening_applies_nothing_twice(database):
    first = Store(database)
    await first.open()
    cid = (await first.create_conversation("kept"))["id"]
    await first.close()
    second = Store(database)
    await second.open()
    assert (await second.get_conversation(cid))["title"] == "kept"
    await second.close()


async def test_replicas_starting_together_migrate_once(database):
    stores = [Store(database) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    cid = (await stores[0].create_conversation("shared"))["id"]
    assert all([await s.exists(cid) for s in stores])
    for s in stores:
        await s.close()


def test_database_urls():
    assert database_url("./data/x.sqlite3").startswith("sqlite+aiosqlite:///")
    assert database_url(":memory:") == "sqlite+aiosqlite:///:memory:"
    assert database_url("postgresql://u:p@db:5432/rv") == "postgresql+asyncpg://u:p@db:5432/rv"
    assert database_url("postgres://u@db/rv") == "postgresql+asyncpg://u@db/rv"
    assert database_url("postgresql+psycopg://u@db/rv") == "postgresql+asyncpg://u@db/rv"
    with pytest.raises(ValueError):
        database_url("mysql://u@db/rv")
    with pytest.raises(ValueError):
        Store("x.sqlite3", synchronous="SOMETIMES")


# --------------------------------------------------------------------------- SQLite specifics
LEGACY_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL,
    updated_at REAL NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, role TEXT NOT NULL,
    content TEXT NOT NULL, interrupted INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT 'text',
    meta TEXT, created_at REAL NOT NULL);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
INSERT INTO conversations VALUES ('old1', 'Before Alembic', 1.0, 2.0);
INSERT INTO messages (conversation_id, role, content, interrupted, source, meta, created_at)
    VALUES ('old1', 'user', 'hello', 0, 'voice', NULL, 1.5),
           ('old1', 'assistant', 'hi th', 1, 'voice', '{"reason": "barge-in"}', 1.6);
"""


async def test_a_history_file_from_before_migrations_is_kept(tmp_path):
    path = tmp_path / "legacy.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
    store = Store(str(path))
    await store.open()
    try:
        conv = await store.get_conversation("old1")
        assert conv["title"] == "Before Alembic"
        assert [(m["content"], m["interrupted"], m["meta"]) for m in conv["messages"]] == [
            ("hello", False, None), ("hi th", True, {"reason": "barge-in"})]
        new = await store.add_message("old1", "user", "again")
        assert new["id"] == 3
    finally:
        await store.close()


@pytest.mark.parametrize("level,code", [("NORMAL", 1), ("FULL", 2)])
async def test_sqlite_runs_in_wal_mode_with_the_durability_asked_for(tmp_path, level, code):
    store = Store(str(tmp_path / "wal.sqlite3"), synchronous=level)
    await store.open()
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(sa.text("PRAGMA synchronous"))).scalar_one() == code
            assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar_one() == 1
    finally:
        await store.close()


async def test_a_call_whose_caller_is_cancelled_finishes_and_the_store_goes_on(store):
    """A barge-in cancels the reply task while it saves its row. Cancelled inside a call, the store was
    left with its connection checked out, and every later call of the app waited for it (a flaky session
    test hung after an interruption)."""
    cid = (await store.create_conversation())["id"]
    mid = (await store.add_message(cid, "user", "hi", source="voice"))["id"]
    for i in range(60):
        saving = [asyncio.create_task(store.update_message(mid, content=f"edit {i}")),
                  asyncio.create_task(store.add_message(cid, "assistant", f"reply {i}", source="voice"))]
        await asyncio.sleep(0.0005 * (i % 8))  # cancelled before, at and after the query
        for task in saving:
            task.cancel()
        await asyncio.wait_for(store.update_message(mid, content=f"after {i}"), 5)
    assert (await asyncio.wait_for(store.messages(cid), 5))[0]["content"] == "after 59"


async def test_a_call_that_fails_after_its_caller_left_is_logged(store, caplog):
    """Nobody waits for its outcome any more: the store says it failed (a message for a conversation that does
    not exist breaks its foreign key)."""
    task = asyncio.create_task(store.add_message("no-such-conversation", "user", "hi", source="voice"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(_until_logged(caplog, "history call failed after its caller was cancelled"), 5)


async def _until_logged(caplog, text: str) -> None:
    while not any(text in r.getMessage() for r in caplog.records):
        await asyncio.sleep(0.01)
