"""Uploaded files are parsed in a child process, under a time and a memory limit.

A file a visitor of the admin console uploads is hostile until read: a 38 KB DOCX can unzip to
150,000 empty paragraphs, a PDF can nest compressed streams. The parsers refuse what their size
and element limits can see before reading (``retrieval.parsers_office.check_docx_limits``); what
is left runs here, outside the request's thread and process:

* a ``forkserver`` (started once, with the parsers imported) forks one child per file, so the
  child never inherits the web worker's threads, locks or model weights;
* the child's address space is capped at ``ingest.parse_memory_mb`` above what it starts with;
* the request thread waits ``ingest.parse_timeout_s`` for the result, then kills the child.

At most ``MAX_PARALLEL`` files parse at once per worker process; more uploads wait their turn.
The child returns the parsed documents (plain dataclasses) or the ``IngestError`` that names the
file; nothing else crosses back.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from typing import Any

from bot.core.errors import FileTooLarge, IngestError, SupportbotError, UnsupportedFileType
from bot.core.settings import IngestSettings

log = logging.getLogger(__name__)

MAX_PARALLEL = 2
START_TIMEOUT_S = 60.0  # the forkserver's first start imports the parsers
_ERRORS = {cls.__name__: cls for cls in (IngestError, FileTooLarge, UnsupportedFileType)}
_slots = threading.BoundedSemaphore(MAX_PARALLEL)
_lock = threading.Lock()
_context: Any = None


def _mp_context():
    global _context
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["retrieval.parsers"])
            _context = ctx
        return _context


def warm_up() -> None:
    """Start the forkserver now (it imports the parsers once), so the first upload does not wait."""
    try:
        from multiprocessing import forkserver

        _mp_context()
        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - the first upload tries again and reports a failure
        log.warning("could not start the upload parser's forkserver", exc_info=True)


def _limit_memory(extra_mb: int) -> None:
    import resource

    if extra_mb <= 0:
        return
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + int(extra_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(conn, name: str, data: bytes, settings: IngestSettings) -> None:
    try:
        conn.send(("started",))
        try:
            _limit_memory(settings.parse_memory_mb)
        except (OSError, ValueError):  # no /proc, or a hard limit already lower: parse anyway
            pass
        from retrieval.parsers import parse_bytes

        conn.send(("ok", parse_bytes(name, data, settings)))
    except IngestError as exc:
        conn.send(("ingest", type(exc).__name__, exc.path, exc.reason))
    except SupportbotError as exc:
        conn.send(("error", exc.message))
    except MemoryError:
        conn.send(("memory",))
    except BaseException as exc:  # noqa: BLE001 - reported by name, without internals
        conn.send(("crash", type(exc).__name__))
    finally:
        conn.close()


def parse_upload(name: str, data: bytes, settings: IngestSettings) -> list:
    """Parse one uploaded file's bytes in a child process; ``IngestError`` naming it otherwise.

    ``ingest.parse_timeout_s <= 0`` parses in the calling thread (no limits but the parsers' own).
    """
    from retrieval.parsers import _parser_for, parse_bytes

    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    _parser_for(name)  # an unsupported type is refused before any process starts
    timeout = float(settings.parse_timeout_s)
    if timeout <= 0:
        return parse_bytes(name, data, settings)
    ctx = _mp_context()
    with _slots:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(child, name, data, settings), daemon=True,
                           name="supportbot-parse")
        try:
            proc.start()
            child.close()
            if not parent.poll(START_TIMEOUT_S):
                raise IngestError(name, "could not be read: the parser did not start; try again")
            parent.recv()  # "started": the time limit counts from here
            if not parent.poll(timeout):
                log.warning("parsing %s took longer than %g s: stopped", name, timeout)
                raise IngestError(name, f"took longer than {timeout:g} s to read (the limit); "
                                        "split it into smaller documents")
            reply = parent.recv()
        except EOFError:
            log.warning("parsing %s: the parser process died (exit code %s)", name, proc.exitcode)
            raise IngestError(name, f"could not be read within the parser's memory limit "
                                    f"({settings.parse_memory_mb} MB); split it into smaller documents") from None
        finally:
            parent.close()
            if proc.is_alive():
                proc.kill()
            proc.join(5)
    kind = reply[0]
    if kind == "ok":
        return reply[1]
    if kind == "ingest":
        raise _ERRORS.get(reply[1], IngestError)(reply[2], reply[3])
    if kind == "error":
        raise IngestError(name, reply[1])
    if kind == "memory":
        raise IngestError(name, f"could not be read within the parser's memory limit "
                                f"({settings.parse_memory_mb} MB); split it into smaller documents")
    log.warning("parsing %s failed in the parser process: %s", name, reply[1])
    raise IngestError(name, "could not be read (the parser failed on it)")
