"""The history's tables as SQLAlchemy Core objects: what the queries are written against.

The migrations in ``migrations/versions`` create them (on SQLite and PostgreSQL alike);
``tests`` check that a migrated database matches these definitions, so the two cannot drift.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

conversations = sa.Table(
    "conversations", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
    # Seconds since the epoch, as the API has always returned them.
    sa.Column("created_at", sa.Float(precision=53), nullable=False),
    sa.Column("updated_at", sa.Float(precision=53), nullable=False),
)

messages = sa.Table(
    "messages", metadata,
    # INTEGER on SQLite (the rowid alias, AUTOINCREMENT: ids are never reused), BIGINT elsewhere.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.Text, sa.ForeignKey("conversations.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("interrupted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("source", sa.Text, nullable=False, server_default="text"),
    sa.Column("meta", sa.Text),  # JSON text: one representation on both backends
    sa.Column("created_at", sa.Float(precision=53), nullable=False),
    sa.Index("messages_by_conversation", "conversation_id", "id"),
    sqlite_autoincrement=True,
)
