"""The database: SQLAlchemy models for knowledge and dialogues, Alembic migrations."""
from bot.core.store.db import Database
from bot.core.store import models

__all__ = ["Database", "models"]
