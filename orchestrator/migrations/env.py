"""Alembic environment: runs on the connection `orchestrator.store.migrate` hands over."""

from __future__ import annotations

from alembic import context

from orchestrator.store import METADATA

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` on the command line: build an engine from DATABASE_URL
    from orchestrator.settings import Settings
    from orchestrator.store import make_engine

    engine = make_engine(Settings.from_env().database_url)
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
