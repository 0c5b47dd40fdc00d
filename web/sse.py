"""Server-Sent Events over WSGI: framing, heartbeats and proxy-safe headers.

A stream is a generator of ``str`` frames. ``with_heartbeats`` turns a source that may block for
longer than the heartbeat interval into one that never stays silent that long: the source yields
``None`` when it has waited ``heartbeat_s`` without news, and that becomes an SSE comment line,
which keeps proxies and load balancers from closing an idle connection and lets the server notice
a client that went away (the write fails).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from flask import Response, stream_with_context

from bot.core.events import Event

HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    # nginx (and compatible proxies) must pass each frame on at once, not buffer the response.
    "X-Accel-Buffering": "no",
}
# Tells EventSource clients how long to wait before reconnecting (ms).
RETRY_MS = 2000


def frame(event: Event, event_id: str | None = None) -> str:
    return event.sse(event_id)


def comment(text: str = "ping") -> str:
    return f": {text}\n\n"


def with_heartbeats(batches: Iterable[list[tuple[Event, str | None]] | None]) -> Iterator[str]:
    """SSE text for batches of ``(event, id)`` pairs, one write per batch (under load a follower
    finds several events ready: one write instead of many); each ``None`` becomes a heartbeat."""
    yield f"retry: {RETRY_MS}\n\n"
    for batch in batches:
        if batch is None:
            yield comment()
        else:
            yield "".join(frame(event, eid) for event, eid in batch)


def sse_response(frames: Iterable[str], status: int = 200) -> Response:
    """A streaming ``text/event-stream`` response that keeps the request context for the stream."""
    resp = Response(stream_with_context(iter(frames)), status=status, mimetype="text/event-stream")
    resp.headers.update(HEADERS)
    return resp


def parse(body: str) -> list[tuple[str | None, str, str]]:
    """Parse an SSE body into ``(id, event, data)`` triples (comments and retry lines skipped).

    Used by the tests and the load benchmark; follows the HTML spec's field rules for the fields
    this server sends.
    """
    out = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        ev_id, ev_type, data = None, "message", []
        seen = False
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                ev_id, seen = value, True
            elif name == "event":
                ev_type, seen = value, True
            elif name == "data":
                data.append(value)
                seen = True
        if seen and data:
            out.append((ev_id, ev_type, "\n".join(data)))
    return out
