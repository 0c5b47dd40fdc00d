"""The database: SQLAlchemy models for knowledge and dialogues, Alembic migrations."""
from bot.store.db import Database
from bot.store import models

__all__ = ["Database", "models"]
