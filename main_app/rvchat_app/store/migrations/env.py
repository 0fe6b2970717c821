"""Alembic environment: migrations run on the connection the Store hands over (``Store.open``).

The Store runs them at start-up inside its own transaction (and, on PostgreSQL, under an advisory
lock, so replicas starting together migrate once). To write a new revision, from the repository root:
``.venv/bin/alembic -c main_app/rvchat_app/store/alembic.ini revision -m "what changes"``.
"""

from __future__ import annotations

from alembic import context

from rvchat_app.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through rvchat_app.store.Store.open (it passes the connection)")

context.configure(connection=connection, target_metadata=metadata,
                  # SQLite alters tables by copying them; Alembic's batch mode does that for us.
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
