"""``supportbot serve``: the app under gunicorn, configured from the settings.

Why gthread (the default), from bench/web_load.py on a 2-core machine shared with other work
(2 workers, SQLite, long answers so that all streams overlap; figures in the README): gthread
held more concurrent streams with zero errors than gevent, and in the same run its time to first
event was several times shorter. SQLite's busy wait and the CPU-bound retrieval block a whole
gevent worker, while in gthread they block one thread (and release the GIL).

gthread also keeps streaming while a local (CPU-bound) model generates in another thread;
under gevent a generating greenlet would stall every other stream of its worker. gevent stays
available (``--worker-class gevent``) for the ``openai`` backend with PostgreSQL.
Past ~500 streams per worker the database pool (SQLite: one writer) becomes the limit: use
several workers, and PostgreSQL for more.
"""
from __future__ import annotations

from typing import Any, Callable

from gunicorn.app.base import BaseApplication

from bot.core.settings import WebSettings

WORKER_CLASSES = ("gthread", "gevent")


class Server(BaseApplication):
    """gunicorn running ``factory()`` in each worker (built after the fork, never in the master)."""

    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]):
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        return self.factory()


def gunicorn_options(ws: WebSettings, access_log: bool = False) -> dict[str, Any]:
    if ws.worker_class not in WORKER_CLASSES:
        raise ValueError(f"web.worker_class must be one of {WORKER_CLASSES}, got {ws.worker_class!r}")
    options: dict[str, Any] = {
        "bind": f"{ws.host}:{ws.port}",
        "workers": ws.workers,
        "worker_class": ws.worker_class,
        # gthread: one thread per open stream; gevent: one greenlet per connection.
        "threads": ws.threads,
        "worker_connections": max(1000, ws.threads * 2),
        # Streams last long; a worker is restarted only when it stops answering the master.
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 75,
        "backlog": 2048,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        # gunicorn's control socket lives at one fixed path per user; several servers (workers of
        # different bots, tests, the benchmark) would fight over it, and nothing here uses it.
        "control_socket_disable": True,
    }
    return options


def run(factory: Callable[[], Any], options: dict[str, Any]) -> None:
    Server(factory, options).run()
