"""The history as it was before migrations: conversations and messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-20

A SQLite file written by main_app before Alembic already has these tables (and no version
table): they are kept as they are and the file is stamped, so upgrading loses nothing.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "conversations" not in existing:
        op.create_table(
            "conversations",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("title", sa.Text, nullable=False, server_default=""),
            sa.Column("created_at", sa.Float(precision=53), nullable=False),
            sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        )
    if "messages" not in existing:
        op.create_table(
            "messages",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                      autoincrement=True),
            sa.Column("conversation_id", sa.Text, sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                      nullable=False),
            sa.Column("role", sa.Text, nullable=False),
            sa.Column("content", sa.Text, nullable=False),
            sa.Column("interrupted", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("source", sa.Text, nullable=False, server_default="text"),
            sa.Column("meta", sa.Text),
            sa.Column("created_at", sa.Float(precision=53), nullable=False),
            sqlite_autoincrement=True,
        )
    op.create_index("messages_by_conversation", "messages", ["conversation_id", "id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("messages_by_conversation", "messages")
    op.drop_table("messages")
    op.drop_table("conversations")
