"""Conversation history in SQLite (one file; survives restarts)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'text',
    meta TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""

TITLE_CHARS = 60


class Store:
    """Async access to the history database; one connection per app (aiosqlite runs it in a thread)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.db = await aiosqlite.connect(self.path)
        self.db.row_factory = aiosqlite.Row
        await self.db.executescript(SCHEMA)
        await self.db.commit()

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def ping(self) -> str | None:
        """None when the database answers, else why not (for /readyz)."""
        if self.db is None:
            return "database is not open"
        try:
            async with self.db.execute("SELECT 1") as cur:
                await cur.fetchone()
        except Exception as exc:
            return f"database error: {exc}"
        return None

    @property
    def _db(self) -> aiosqlite.Connection:
        if self.db is None:
            raise RuntimeError("store is not open")
        return self.db

    async def create_conversation(self, title: str = "") -> dict:
        now = time.time()
        cid = uuid.uuid4().hex[:16]
        await self._db.execute(
            "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (cid, title[:TITLE_CHARS], now, now),
        )
        await self._db.commit()
        return {"id": cid, "title": title[:TITLE_CHARS], "created_at": now, "updated_at": now,
                "message_count": 0}

    async def list_conversations(self, limit: int = 100) -> list[dict]:
        sql = (
            "SELECT c.id, c.title, c.created_at, c.updated_at, COUNT(m.id) AS message_count "
            "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
            "GROUP BY c.id ORDER BY c.updated_at DESC LIMIT ?"
        )
        async with self._db.execute(sql, (limit,)) as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def get_conversation(self, cid: str) -> dict | None:
        async with self._db.execute(
            "SELECT id, title, created_at, updated_at FROM conversations WHERE id = ?", (cid,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        conv = dict(row)
        conv["messages"] = await self.messages(cid)
        conv["message_count"] = len(conv["messages"])
        return conv

    async def exists(self, cid: str) -> bool:
        async with self._db.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)) as cur:
            return await cur.fetchone() is not None

    async def delete_conversation(self, cid: str) -> bool:
        cur = await self._db.execute("DELETE FROM conversations WHERE id = ?", (cid,))
        await self._db.commit()
        return cur.rowcount > 0

    async def messages(self, cid: str, last: int | None = None) -> list[dict]:
        if last is None:
            sql, args = "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (cid,)
        else:
            sql = ("SELECT * FROM (SELECT * FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT ?) "
                   "ORDER BY id")
            args = (cid, last)
        async with self._db.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [_message(r) for r in rows]

    async def add_message(self, cid: str, role: str, content: str, *, interrupted: bool = False,
                          source: str = "text", meta: dict | None = None) -> dict:
        now = time.time()
        cur = await self._db.execute(
            "INSERT INTO messages (conversation_id, role, content, interrupted, source, meta, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cid, role, content, int(interrupted), source, json.dumps(meta) if meta else None, now),
        )
        # The first user message names the conversation.
        await self._db.execute(
            "UPDATE conversations SET updated_at = ?, "
            "title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END WHERE id = ?",
            (now, role, _title(content), cid),
        )
        await self._db.commit()
        return {"id": cur.lastrowid, "conversation_id": cid, "role": role, "content": content,
                "interrupted": interrupted, "source": source, "meta": meta, "created_at": now}

    async def update_message(self, mid: int, *, content: str | None = None, interrupted: bool | None = None,
                             meta: dict | None = None) -> None:
        sets, args = [], []
        if content is not None:
            sets.append("content = ?")
            args.append(content)
        if interrupted is not None:
            sets.append("interrupted = ?")
            args.append(int(interrupted))
        if meta is not None:
            sets.append("meta = ?")
            args.append(json.dumps(meta))
        if not sets:
            return
        await self._db.execute(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", (*args, mid))
        await self._db.commit()


def _title(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"


def _message(row: Any) -> dict:
    d = dict(row)
    d["interrupted"] = bool(d["interrupted"])
    d["meta"] = json.loads(d["meta"]) if d.get("meta") else None
    return d
