"""``openai`` backend: any OpenAI-compatible server (vLLM, TGI, Ollama, OpenAI) over HTTP.

``POST {base_url}/chat/completions`` with ``stream: true``; the answer arrives as Server-Sent
Events, one ``data: {json}`` line per chunk, ending with ``data: [DONE]``. Each chunk's
``choices[0].delta.content`` is yielded as it comes. ``stream_options.include_usage`` asks for a
final usage chunk; servers that do not send one get approximate counts.

Errors: the request is sent by ``stream()`` itself, so an unreachable server, a timeout or a
non-200 answer raises ``GeneratorError`` before any text (the dialogue manager can hand off
cleanly); an error reported mid-stream raises from the iteration. Stop strings are sent to the
server and also applied here, so the contract holds with servers that ignore them.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Iterator, Sequence

from bot.core.errors import GeneratorError
from bot.generators.base import (
    GenerationStream,
    StopMatcher,
    UsageMixin,
    approx_count_tokens,
    stop_list,
    validate_messages,
)


class OpenAIGenerator(UsageMixin):
    """Client of an OpenAI-compatible chat-completions server. Cheap to build; ``load`` is a no-op."""

    tokenizer = None

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str = "",
        timeout_s: float = 60.0,
        max_new_tokens: int = 160,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ):
        self.model_id = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.defaults = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self._usage_local = threading.local()

    def load(self) -> "OpenAIGenerator":
        return self

    def count_tokens(self, text: str) -> int:
        """Approximate: the server's tokenizer is not available here."""
        return approx_count_tokens(text)

    def _request_body(self, messages: list[dict], opts: dict, stop: list[str]) -> dict:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": int(opts["max_new_tokens"]),
            "temperature": float(opts["temperature"]),
            "top_p": float(opts["top_p"]),
        }
        if stop:
            body["stop"] = stop[:4]  # the OpenAI API takes at most four
        if opts.get("seed") is not None:
            body["seed"] = int(opts["seed"])
        return body

    def _post(self, body: dict):
        import requests

        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            resp = requests.post(
                self.url, json=body, headers=headers, stream=True,
                timeout=(min(10.0, self.timeout_s), self.timeout_s),
            )
        except requests.Timeout as exc:
            raise GeneratorError(f"generator server {self.url} timed out after {self.timeout_s} s") from exc
        except requests.RequestException as exc:
            raise GeneratorError(f"cannot reach the generator server at {self.url}: {exc}") from exc
        if resp.status_code != 200:
            detail = resp.text[:300].strip()
            resp.close()
            raise GeneratorError(
                f"generator server {self.url} answered HTTP {resp.status_code}: {detail or resp.reason}"
            )
        return resp

    def stream(self, messages: Sequence[dict], **params: Any) -> GenerationStream:
        """Stream the reply. Params: max_new_tokens, temperature, top_p, stop, seed."""
        messages = validate_messages(messages)
        opts = {**self.defaults, **{k: v for k, v in params.items() if v is not None}}
        stop = stop_list(opts.get("stop"))
        resp = self._post(self._request_body(messages, opts, stop))
        prompt_estimate = sum(approx_count_tokens(m["content"]) for m in messages)

        def pieces(handle: GenerationStream) -> Iterator[str]:
            handle.usage["prompt_tokens"] = prompt_estimate
            try:
                yield from self._read_events(resp, handle, StopMatcher(stop))
            finally:
                resp.close()

        return GenerationStream(pieces, self.model_id, on_finish=self._record_usage)

    def _read_events(self, resp, handle: GenerationStream, matcher: StopMatcher) -> Iterator[str]:
        import requests

        server_usage = None
        try:
            for raw in resp.iter_lines():
                line = raw.decode("utf-8", errors="replace").strip() if raw else ""
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": keep-alive"), event: lines
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise GeneratorError(f"generator server {self.url} sent a malformed event: {data[:120]}") from exc
                if "error" in chunk:
                    err = chunk["error"]
                    msg = err.get("message", err) if isinstance(err, dict) else err
                    raise GeneratorError(f"generator server {self.url} failed mid-answer: {msg}")
                if chunk.get("usage"):
                    server_usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content") or ""
                    if content:
                        handle.usage["completion_tokens"] += 1
                        piece = matcher.feed(content)
                        if piece:
                            yield piece
                        if matcher.stopped:
                            handle.finish_reason = "stop"
                            return
                    if choice.get("finish_reason"):
                        handle.finish_reason = choice["finish_reason"]
        except requests.RequestException as exc:
            raise GeneratorError(f"generator server {self.url} connection failed mid-answer: {exc}") from exc
        finally:
            if server_usage:
                handle.usage["prompt_tokens"] = int(server_usage.get("prompt_tokens") or 0)
                handle.usage["completion_tokens"] = int(server_usage.get("completion_tokens") or 0)
        tail = matcher.flush()
        if tail:
            yield tail
