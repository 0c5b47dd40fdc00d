"""A small local stand-in for an OpenAI-compatible chat-completions server (vLLM, TGI, Ollama).

``with OpenAIStandin() as server:`` serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free
port) from a thread; ``server.base_url`` is the ``/v1`` URL. Replies are scripted: the reply is
``server.reply`` or, when ``None``, ``"You said: " + last user message``. Streaming sends one SSE
chunk per word (``data: {...}`` lines, ``data: [DONE]`` at the end) and a usage chunk when
``stream_options.include_usage`` is set; ``max_tokens`` counts words; ``stop`` strings cut the
reply like a real server. ``server.requests`` records every request body.

Failure modes for tests, chosen by the request's ``model``: ``fail-500`` answers HTTP 500,
``mid-error`` sends two chunks then an ``error`` event, ``garbage`` sends a malformed event,
``slow`` waits ``server.delay_s`` before answering. ``honor_stop=False`` plays a server that
ignores ``stop``.
``api_key`` (when set) must arrive as ``Authorization: Bearer <key>`` or the answer is 401.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _event(self, payload) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        standin = self.server.standin
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if standin.api_key and self.headers.get("Authorization") != f"Bearer {standin.api_key}":
            return self._json(401, {"error": {"message": "invalid api key"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except json.JSONDecodeError:
            return self._json(400, {"error": {"message": "malformed JSON"}})
        standin.requests.append(body)
        model = body.get("model", "")
        if model == "slow":
            time.sleep(standin.delay_s)
        if model == "fail-500":
            return self._json(500, {"error": {"message": "model crashed"}})
        words = standin.words_for(body)
        if not body.get("stream"):
            return self._json(200, {
                "id": "cmpl-1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": standin.prompt_tokens, "completion_tokens": len(words)},
            })
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b": keep-alive\n\n")  # a comment line, as real servers send
        base = {"id": "cmpl-1", "object": "chat.completion.chunk", "model": model}
        self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for i, word in enumerate(words):
            if model == "mid-error" and i == 2:
                self._event({"error": {"message": "out of memory", "code": 500}})
                return
            if model == "garbage" and i == 1:
                self._event("{not json")
                return
            self._event({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
        self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({**base, "choices": [], "usage": {
                "prompt_tokens": standin.prompt_tokens, "completion_tokens": len(words),
                "total_tokens": standin.prompt_tokens + len(words)}})
        self._event("[DONE]")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: "OpenAIStandin"

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a client that hung up is expected


class OpenAIStandin:
    """The stand-in server; a context manager that starts and stops it."""

    prompt_tokens = 17  # reported in usage, so tests can tell server counts from estimates

    def __init__(self, reply: str | None = None, api_key: str = "", honor_stop: bool = True):
        self.reply = reply
        self.api_key = api_key
        self.honor_stop = honor_stop
        self.delay_s = 2.0
        self.requests: list[dict] = []
        self._httpd: _Server | None = None

    def words_for(self, body: dict) -> list[str]:
        messages = body.get("messages") or []
        last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        text = self.reply if self.reply is not None else f"You said: {last_user}"
        for stop in (body.get("stop") or []) if self.honor_stop else []:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = re.findall(r"\s*\S+|\s+", text)
        if body.get("max_tokens") is not None:
            words = words[: int(body["max_tokens"])]
        return words

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "OpenAIStandin":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.standin = self
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
