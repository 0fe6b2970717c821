"""Conversation history: SQLite (one file, the embedded default) or PostgreSQL (shared by replicas).

One set of queries (SQLAlchemy Core over aiosqlite or asyncpg) and one schema source (the Alembic
migrations in ``migrations/``, applied by :meth:`Store.open`) for both backends, so a schema change
is written once and tested on both.

SQLite runs in WAL mode with a configurable ``synchronous`` level: every commit is in the WAL
before the call returns, so a main_app killed with SIGKILL loses no committed row (the session
writes a reply's row while it plays). ``NORMAL`` survives a process kill; ``FULL`` (the default)
also a power cut, for one fsync per commit (one per spoken sentence).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .schema import conversations, messages

TITLE_CHARS = 60
MIGRATIONS = Path(__file__).parent / "migrations"
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
# pg_advisory_xact_lock key: replicas that start together apply the migrations once, one at a time.
_MIGRATION_LOCK = 0x72766368  # "rvch"
# How long a SQLite writer waits for another process's write lock (two main_apps on one file).
_SQLITE_BUSY_S = 10.0

__all__ = ["Store", "TITLE_CHARS", "database_url"]


T = TypeVar("T")
log = logging.getLogger("rvchat.app.store")


def _runs_to_the_end(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A store call finishes even if its caller is cancelled; the caller still gets its CancelledError.

    A barge-in cancels the reply task while it saves its row. Cancelled inside a call, SQLAlchemy's
    connection (SQLite's one) was left checked out, and every later call of the app waited for it:
    the session hung with its turn half-saved. The call now runs in a task of its own, shielded."""

    @functools.wraps(method)
    async def call(self: Store, *args: Any, **kwargs: Any) -> T:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report_orphan)  # nobody waits for its outcome any more
            raise

    return call


def _report_orphan(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("history call failed after its caller was cancelled: %r", task.exception())


def database_url(target: str) -> str:
    """The SQLAlchemy URL for a SQLite path, ``sqlite:///...`` or ``postgresql://...`` (asyncpg driver)."""
    if target == ":memory:":
        return "sqlite+aiosqlite:///:memory:"
    if "://" not in target:
        return f"sqlite+aiosqlite:///{Path(target).expanduser()}"
    scheme, rest = target.split("://", 1)
    base = scheme.split("+", 1)[0]
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ValueError(f"unsupported database URL {target!r}: use a SQLite path or postgresql://...")


class Store:
    """Async access to the history database; a connection pool per app.

    ``target`` is a SQLite file path (or ``:memory:``) or a database URL (``postgresql://user:pw@host/db``).
    """

    def __init__(self, target: str, *, synchronous: str = "FULL", pool_size: int = 5) -> None:
        self.target = target
        self.url = database_url(target)
        self.synchronous = synchronous.upper()
        if self.synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")
        self.pool_size = pool_size
        self.engine: AsyncEngine | None = None
        # SQLite: calls are served one at a time in the order they were made (asyncio.Lock is FIFO and
        # is taken before the first suspension), so a read sees every write started before it, as with
        # one aiosqlite connection: a reply's row is saved just after its audio is sent, and whoever
        # reads the history next finds it. PostgreSQL serves calls concurrently from its pool.
        self._serial = asyncio.Lock() if sa.make_url(self.url).get_backend_name() == "sqlite" else None
        self._calls: set[asyncio.Future] = set()  # calls under way (see _runs_to_the_end)

    @property
    def path(self) -> str:
        """The SQLite file ("" for another backend); kept for callers of the SQLite-only store."""
        return self.target if "://" not in self.target else ""

    @property
    def backend(self) -> str:
        return sa.make_url(self.url).get_backend_name()

    async def open(self) -> None:
        url = sa.make_url(self.url)
        if self.backend == "sqlite":
            db = url.database or ""
            pool: dict[str, Any] = {}  # in memory: one shared connection already (StaticPool)
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(_wal_mode, db)
                # One connection (SQLite has one writer anyway), taken in call order: see _serial.
                pool = {"pool_size": 1, "max_overflow": 0}
            engine = create_async_engine(url, connect_args={"timeout": _SQLITE_BUSY_S}, **pool)
            sa.event.listen(engine.sync_engine, "connect", self._sqlite_pragmas)
        else:
            # pre_ping: a PostgreSQL server that restarted costs one reconnect, not a failed turn.
            engine = create_async_engine(url, pool_size=self.pool_size, max_overflow=self.pool_size,
                                         pool_pre_ping=True)
        try:
            async with engine.begin() as conn:
                if self.backend == "sqlite":
                    # Take the write lock before Alembic reads the version: two processes opening one
                    # file together then migrate one after the other, never both from the same start.
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif self.backend == "postgresql":
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                       {"key": _MIGRATION_LOCK})
                await conn.run_sync(_upgrade)
        except BaseException:
            await engine.dispose()
            raise
        self.engine = engine

    def _sqlite_pragmas(self, dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        # WAL: readers never block the writer, and a commit is one append to the log.
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {self.synchronous}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_S * 1000)}")
        cur.close()

    async def close(self) -> None:
        if self._calls:  # calls whose callers were cancelled: let them finish before the pool goes
            await asyncio.wait(list(self._calls), timeout=_SQLITE_BUSY_S)
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def ping(self) -> str | None:
        """None when the database answers, else why not (for /readyz)."""
        if self.engine is None:
            return "database is not open"
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return f"database error: {type(exc).__name__}: {exc}"
        return None

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed at the end."""
        async with self._turn():
            async with self._engine().begin() as conn:
                yield conn

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        async with self._turn():
            async with self._engine().connect() as conn:
                yield conn

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._serial is None:
            yield
        else:
            async with self._serial:
                yield

    def _engine(self) -> AsyncEngine:
        if self.engine is None:
            raise RuntimeError("store is not open")
        return self.engine

    # ----------------------------------------------------------------- conversations
    @_runs_to_the_end
    async def create_conversation(self, title: str = "") -> dict:
        now = time.time()
        cid = uuid.uuid4().hex[:16]
        title = title[:TITLE_CHARS]
        async with self._begin() as conn:
            await conn.execute(sa.insert(conversations).values(id=cid, title=title, created_at=now,
                                                               updated_at=now))
        return {"id": cid, "title": title, "created_at": now, "updated_at": now, "message_count": 0}

    @_runs_to_the_end
    async def list_conversations(self, limit: int = 100) -> list[dict]:
        count = (sa.select(sa.func.count(messages.c.id))
                 .where(messages.c.conversation_id == conversations.c.id).scalar_subquery())
        query = (sa.select(conversations.c.id, conversations.c.title, conversations.c.created_at,
                           conversations.c.updated_at, count.label("message_count"))
                 .order_by(conversations.c.updated_at.desc()).limit(limit))
        async with self._connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    @_runs_to_the_end
    async def get_conversation(self, cid: str) -> dict | None:
        async with self._connect() as conn:
            row = (await conn.execute(sa.select(conversations).where(conversations.c.id == cid))).first()
            if row is None:
                return None
            conv = dict(row._mapping)
            conv["messages"] = await _messages(conn, cid, None)
        conv["message_count"] = len(conv["messages"])
        return conv

    @_runs_to_the_end
    async def exists(self, cid: str) -> bool:
        async with self._connect() as conn:
            row = await conn.execute(sa.select(sa.literal(1)).where(conversations.c.id == cid))
            return row.first() is not None

    @_runs_to_the_end
    async def delete_conversation(self, cid: str) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(sa.delete(conversations).where(conversations.c.id == cid))
        return result.rowcount > 0

    # ----------------------------------------------------------------- messages
    @_runs_to_the_end
    async def messages(self, cid: str, last: int | None = None) -> list[dict]:
        async with self._connect() as conn:
            return await _messages(conn, cid, last)

    @_runs_to_the_end
    async def add_message(self, cid: str, role: str, content: str, *, interrupted: bool = False,
                          source: str = "text", meta: dict | None = None) -> dict:
        now = time.time()
        async with self._begin() as conn:
            mid = (await conn.execute(
                sa.insert(messages).values(conversation_id=cid, role=role, content=content,
                                           interrupted=interrupted, source=source,
                                           meta=json.dumps(meta) if meta else None, created_at=now)
                .returning(messages.c.id))).scalar_one()
            values: dict[str, Any] = {"updated_at": now}
            if role == "user":  # the first user message names the conversation
                values["title"] = sa.case((conversations.c.title == "", _title(content)),
                                          else_=conversations.c.title)
            await conn.execute(sa.update(conversations).where(conversations.c.id == cid).values(**values))
        return {"id": mid, "conversation_id": cid, "role": role, "content": content,
                "interrupted": interrupted, "source": source, "meta": meta, "created_at": now}

    @_runs_to_the_end
    async def update_message(self, mid: int, *, content: str | None = None, interrupted: bool | None = None,
                             meta: dict | None = None) -> None:
        values: dict[str, Any] = {}
        if content is not None:
            values["content"] = content
        if interrupted is not None:
            values["interrupted"] = interrupted
        if meta is not None:
            values["meta"] = json.dumps(meta)
        if not values:
            return
        async with self._begin() as conn:
            await conn.execute(sa.update(messages).where(messages.c.id == mid).values(**values))


def _wal_mode(path: str, timeout_s: float = _SQLITE_BUSY_S) -> None:
    """Put the file in WAL mode (it stays so) before any pooled connection opens it.

    Switching needs the file to itself, and SQLite answers "database is locked" at once, without
    waiting, when two processes opening a new file each hold a read lock and want that: retried here.
    Once in WAL, the connections' own ``PRAGMA journal_mode = WAL`` takes no lock.
    """
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with sqlite3.connect(path, timeout=timeout_s) as db:
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _upgrade(sync_conn: sa.Connection) -> None:
    """Apply the Alembic migrations on this (already open, in-transaction) connection."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def _messages(conn: AsyncConnection, cid: str, last: int | None) -> list[dict]:
    query = sa.select(messages).where(messages.c.conversation_id == cid)
    if last is None:
        rows = await conn.execute(query.order_by(messages.c.id))
        return [_message(r) for r in rows]
    rows = await conn.execute(query.order_by(messages.c.id.desc()).limit(last))
    return [_message(r) for r in reversed(rows.all())]


def _title(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"


def _message(row: Any) -> dict:
    d = dict(row._mapping)
    d["interrupted"] = bool(d["interrupted"])
    d["meta"] = json.loads(d["meta"]) if d.get("meta") else None
    return d
