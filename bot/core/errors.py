"""User-facing errors, in one place.

Raised anywhere inside the library; translated at the edges only: to an HTTP status in the web
views, to ``click.ClickException`` in the CLI. The message is written for the person who sees it.
"""
from __future__ import annotations


class SupportbotError(Exception):
    """Base of every error a user may see. ``status`` is the HTTP status the web layer uses."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class ConfigError(SupportbotError):
    """A setting is missing or invalid."""

    status = 500


class IngestError(SupportbotError):
    """A file cannot be ingested. Always names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsupportedFileType(IngestError):
    status = 415


class FileTooLarge(IngestError):
    status = 413


class NotFound(SupportbotError):
    status = 404


class Forbidden(SupportbotError):
    status = 403


class Unauthorized(SupportbotError):
    status = 401


class RateLimited(SupportbotError):
    status = 429


class GeneratorError(SupportbotError):
    """The generator backend failed (model missing, server unreachable, ...)."""

    status = 502


class IndexCorrupt(SupportbotError):
    """Saved index files cannot be used (missing, truncated, another format version or embedder).
    The knowledge base rebuilds the index from the database when it sees this."""

    status = 500
