"""Shared fixtures: a temp data dir with settings, and a throwaway PostgreSQL server.

Helpers add fixtures here append-only; keep each small.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Most tests run tiny parts (a hashing embedder, scripted generators) that the bundled support
# checker was not fitted for: they test the unchecked reply path, and the tests of grounded replies
# (tests/test_grounding.py) set dialogue.checker themselves (keyword settings beat the environment).
os.environ.setdefault("SUPPORTBOT_DIALOGUE__CHECKER", "")
# Likewise the FAQ matcher (bot/faq_match.py), fitted behind the real embedder: tests/test_faq_match.py
# turns it on where it tests it.
os.environ.setdefault("SUPPORTBOT_DIALOGUE__FAQ_MATCHER", "")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_FAQ = REPO / "samples" / "faq"


@pytest.fixture
def settings(tmp_path):
    from bot.core.settings import Settings

    return Settings(data_dir=tmp_path / "var")


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "initdb").exists():
            return base
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_url():
    """URL of a fresh PostgreSQL server on a loopback port, stopped after the session.

    Skips only when PostgreSQL is not installed (`.ci/run` installs it, so CI always runs these).
    """
    pg = _pg_bin()
    if pg is None:
        if os.environ.get("SUPPORTBOT_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (SUPPORTBOT_REQUIRE_POSTGRES) but initdb is missing")
        pytest.skip("PostgreSQL binaries not installed")
    root = Path(tempfile.mkdtemp(prefix="supportbot-pg-"))
    data, port = root / "data", _free_port()
    as_root = os.geteuid() == 0
    run_as: list[str] = []
    if as_root:  # initdb refuses to run as root: run the server as the postgres user
        shutil.chown(root, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        run_as + [str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True, capture_output=True,
    )
    log = root / "log"
    subprocess.run(
        run_as + [str(pg / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                  f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                  "start"],
        check=True, capture_output=True,
    )
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        deadline = time.time() + 30
        import sqlalchemy as sa

        while True:
            try:
                sa.create_engine(url).connect().close()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run(run_as + [str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sqlite_db(tmp_path):
    """A fresh, migrated SQLite store (one per test)."""
    from bot.core.store import Database

    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    db.migrate()
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request):
    """The store on SQLite and, where PostgreSQL runs, on PostgreSQL (a test module may define
    its own ``db``)."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_db")
    return request.getfixturevalue("pg_database")


@pytest.fixture
def pg_database(pg_url):
    """A fresh, migrated database on the session's PostgreSQL server (one per test)."""
    import uuid

    import sqlalchemy as sa

    from bot.core.store import Database

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    db = Database(pg_url.rsplit("/", 1)[0] + "/" + name)
    db.migrate()
    try:
        yield db
    finally:
        db.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A real tiny causal LM folder (2-layer Llama + byte-level BPE tokenizer with a chat template)."""
    from tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


# Imported before any test module imports torch: sets OpenMP's passive waiting (bot/__init__.py),
# which keeps tiny-model tests from burning CPU in spinning OpenMP workers on a shared machine.
import bot  # noqa: E402,F401


@pytest.fixture(scope="session")
def minilm():
    """The real default embedder (the bundled all-MiniLM-L6-v2), loaded once per test run."""
    from bot.core.settings import EmbedderSettings
    from retrieval.embedder import build_embedder

    return build_embedder(EmbedderSettings()).load()


@pytest.fixture(scope="session")
def checker(minilm):
    """The bundled calibrated support checker on the real default embedder."""
    from bot.checker import load_checker

    return load_checker("default", minilm)
