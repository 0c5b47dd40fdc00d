"""Events streamed by ``DialogueManager.respond`` and relayed as Server-Sent Events.

``type`` is one of: meta, token, sources, done, handoff, error. ``data`` is JSON-serialisable.
  meta     {"conversation_id", "message_id", "decision": "answer"|"clarify"|"handoff", "model"}
  token    {"text": "..."}
  sources  {"sources": [{"n": 1, "chunk_id", "doc_id", "title", "source", "confidence"}]}
  handoff  {"reason": "...", "message": "..."}
  done     {"message_id", "latency_ms", "ttft_ms", "completion_tokens"}
  error    {"message": "..."}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def sse(self, event_id: str | int | None = None) -> str:
        """The event as one Server-Sent Events frame."""
        head = f"id: {event_id}\n" if event_id is not None else ""
        return f"{head}event: {self.type}\ndata: {json.dumps(self.data, ensure_ascii=False)}\n\n"


def text(events) -> str:
    """Join the token events of a stream into the reply text (like simonw/llm's ``text()``)."""
    return "".join(e.data.get("text", "") for e in events if e.type == "token")
