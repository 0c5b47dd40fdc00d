"""The migrations and the models describe the same schema (Alembic's autogenerate finds no
difference between a database upgraded to head and ``Base.metadata``)."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bot.core.store.db import Database
from bot.core.store.models import Base


def test_migrations_match_models(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'schema.db'}")
    db.migrate()
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_old_statuses_are_mapped(tmp_path):
    from alembic import command
    from sqlalchemy import text

    from bot.core.store.db import alembic_config

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config(db.url)
    command.upgrade(config, "0003")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO bots (id, name, created_at) VALUES (77, 'old-bot', '2026-01-01')"))
        for cid, status in (("a", "open"), ("b", "handed_off"), ("c", "resolved")):
            conn.execute(text(
                "INSERT INTO conversations (id, bot_id, visitor_id, status, metadata, created_at, updated_at) "
                "VALUES (:i, 77, '', :s, '{}', '2026-01-01', '2026-01-01')"), {"i": cid, "s": status})
    command.upgrade(config, "head")
    with db.engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, status FROM conversations")).all())
    assert rows == {"a": "bot", "b": "waiting", "c": "resolved"}
