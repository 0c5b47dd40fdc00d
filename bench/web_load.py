"""How many visitors can stream answers at once from one `supportbot serve` on this machine?

Starts the real server (gunicorn, the real app, SQLite, the hashing embedder, the sample FAQ) on
127.0.0.1 with a scripted generator (``--tokens`` pieces, ``--token-delay`` apart) so the server,
not a model, is measured. Then, for N in ``--levels``: N visitors each open a session and a
conversation; then each posts a message at a random moment within ``--ramp`` seconds and reads
the streamed answer to its ``done`` event. Answers last longer than the ramp, so all N streams
are open at once (``peak_open`` counts them from the client side). Reports, per worker class,
the largest N held with zero errors and the p50/p95 time to first event (the ``meta`` event:
stored user message, retrieval, decision). The first worker class is the baseline of the ratios
printed at the end (same run, same machine).

The client is a small asyncio HTTP/1.1 client (one connection per visitor), so one client
process can hold thousands of streams without threads.

    python bench/web_load.py                       # gthread vs gevent, 100..1000 visitors
    python bench/web_load.py --worker-class gevent --levels 500
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORIGIN = "http://bench.local"
QUESTIONS = [
    "How much does shipping cost?", "Can I return used gear?", "How long does delivery take?",
    "Is a broken zipper covered by the warranty?", "How do I reset my password?",
]


# -- server side (runs in the child process) -----------------------------------------------------
class ScriptedGenerator:
    """Streams ``tokens`` pieces ``delay_s`` apart: a stand-in for a fast model."""

    model_id = "scripted-bench"
    tokenizer = None
    last_usage = None

    def __init__(self, tokens: int, delay_s: float):
        self.tokens, self.delay_s = tokens, delay_s

    def load(self):
        return self

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages, **params):
        from bot.generators.base import GenerationStream

        def pieces(handle):
            for i in range(self.tokens):
                time.sleep(self.delay_s)
                handle.usage["completion_tokens"] += 1
                yield f"word{i} "

        return GenerationStream(pieces, self.model_id)


def bench_settings(args):
    from bot.core.settings import Settings

    return Settings(
        data_dir=Path(args.data_dir),
        embedder={"model": "hashing"},
        generator={"backend": "extractive"},  # replaced by ScriptedGenerator in the workers
        dialogue={"answer_threshold": 0.0, "clarify_threshold": 0.0},
        web={"host": "127.0.0.1", "port": args.port, "workers": args.workers, "threads": args.threads,
             "worker_class": args.worker_class, "rate_limit_ip": "1000000 per minute",
             "rate_limit_visitor": "1000000 per minute", "heartbeat_s": 15.0},
    )


def serve(args) -> None:
    from web.demo import prepare_in_subprocess
    from web.server import gunicorn_options, run

    settings = bench_settings(args)
    key = prepare_in_subprocess(settings, "default", [ORIGIN])["site_key"]
    Path(args.data_dir, "site_key").write_text(key)

    def factory():
        from bot.components import Components
        from web import create_app

        comps = Components(settings, parts={"generator": ScriptedGenerator(args.tokens, args.token_delay)})
        return create_app(settings, comps)

    options = gunicorn_options(settings.web)
    options.update(errorlog=str(Path(args.data_dir) / "server.log"), loglevel="warning")
    run(factory, options)


# -- client side ---------------------------------------------------------------------------------
class HTTPError(Exception):
    pass


async def read_head(reader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise HTTPError("connection closed before a response")
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def body_chunks(reader, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


def request_bytes(method: str, path: str, body: dict | None, headers: dict) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Origin: {ORIGIN}",
             f"Content-Length: {len(payload)}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def call_json(reader, writer, method, path, body=None, headers=None) -> dict:
    writer.write(request_bytes(method, path, body, headers or {}))
    await writer.drain()
    status, head = await read_head(reader)
    data = b"".join([c async for c in body_chunks(reader, head)])
    if status >= 300:
        raise HTTPError(f"{method} {path}: HTTP {status} {data[:200]!r}")
    return json.loads(data)


class Visitor:
    def __init__(self, port: int, key: str, question: str):
        self.port, self.key, self.question = port, key, question
        self.ttfe = self.total = None
        self.tokens = 0
        self.error: str | None = None

    async def setup(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        s = await call_json(self.reader, self.writer, "POST", "/api/session", {"site_key": self.key})
        self.auth = {"Authorization": f"Bearer {s['visitor_token']}"}
        c = await call_json(self.reader, self.writer, "POST", "/api/conversations", {}, self.auth)
        self.cid = c["id"]

    async def ask(self, state: dict, delay_s: float):
        await asyncio.sleep(delay_s)
        t0 = time.perf_counter()
        self.writer.write(request_bytes("POST", f"/api/conversations/{self.cid}/messages",
                                        {"message": self.question}, self.auth))
        await self.writer.drain()
        status, head = await read_head(self.reader)
        if status != 200:
            body = b"".join([c async for c in body_chunks(self.reader, head)])
            raise HTTPError(f"HTTP {status} {body[:300]!r}")
        buf, done = b"", False
        async for chunk in body_chunks(self.reader, head):
            buf += chunk
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                if b"event: " not in frame:
                    continue  # retry line or heartbeat
                if self.ttfe is None:
                    self.ttfe = time.perf_counter() - t0
                    state["open"] += 1
                    state["peak"] = max(state["peak"], state["open"])
                if b"event: token" in frame:
                    self.tokens += 1
                elif b"event: error" in frame:
                    raise HTTPError(frame.decode(errors="replace"))
                elif b"event: done" in frame:
                    done = True
            if done:
                break
        if self.ttfe is not None:
            state["open"] -= 1
        if not done:
            raise HTTPError("stream ended without done")
        self.total = time.perf_counter() - t0

    def close(self):
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001
            pass


async def run_level(port: int, key: str, n: int, expect_tokens: int, timeout_s: float,
                    ramp_s: float = 0.0) -> dict:
    visitors = [Visitor(port, key, QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]
    gate = asyncio.Semaphore(64)  # sessions are opened before the clock starts, 64 at a time

    async def setup(v):
        async with gate:
            try:
                await asyncio.wait_for(v.setup(), timeout_s)
            except Exception as e:  # noqa: BLE001
                v.error = f"setup: {type(e).__name__}: {e}"

    await asyncio.gather(*(setup(v) for v in visitors))
    state = {"open": 0, "peak": 0}
    rng = random.Random(n)

    async def ask(v):
        if v.error:
            return
        delay = rng.uniform(0, ramp_s)
        try:
            await asyncio.wait_for(v.ask(state, delay), timeout_s + delay)
            if v.tokens != expect_tokens:
                v.error = f"got {v.tokens} tokens, expected {expect_tokens}"
        except Exception as e:  # noqa: BLE001
            v.error = f"{type(e).__name__}: {e}"

    t0 = time.perf_counter()
    await asyncio.gather(*(ask(v) for v in visitors))
    wall = time.perf_counter() - t0
    for v in visitors:
        v.close()
    ok = [v for v in visitors if not v.error]
    ttfe = sorted(v.ttfe for v in ok)
    errors = [v.error for v in visitors if v.error]
    return {
        "n": n, "ok": len(ok), "errors": len(errors), "first_error": errors[0] if errors else "",
        "ttfe_p50_ms": 1000 * statistics.median(ttfe) if ttfe else float("nan"),
        "ttfe_p95_ms": 1000 * ttfe[min(len(ttfe) - 1, int(0.95 * len(ttfe)))] if ttfe else float("nan"),
        "peak_open": state["peak"], "wall_s": wall,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, worker_class: str, data_dir: Path) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    cmd = [sys.executable, __file__, "_serve", "--worker-class", worker_class, "--port", str(port),
           "--data-dir", str(data_dir), "--workers", str(args.workers), "--threads", str(args.threads),
           "--tokens", str(args.tokens), "--token-delay", str(args.token_delay)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {data_dir / 'server.log'}")
        key_file = data_dir / "site_key"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b"200 OK" in s.recv(1024) and key_file.exists():
                    return proc, port, key_file.read_text().strip()
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "_serve"])
    p.add_argument("--worker-class", nargs="+", default=["gthread", "gevent"])
    p.add_argument("--levels", nargs="+", type=int, default=[100, 250, 500, 750, 1000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=600, help="gthread threads per worker")
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--token-delay", type=float, default=0.2)
    p.add_argument("--ramp", type=float, default=10.0, help="visitors start within this many seconds")
    p.add_argument("--timeout", type=float, default=90.0, help="per visitor, seconds")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--data-dir", default="")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.mode == "_serve":
        args.worker_class = args.worker_class[0]
        serve(args)
        return

    print(f"web_load: N visitors streaming at once; scripted generator {args.tokens} tokens x "
          f"{args.token_delay * 1000:.0f} ms; starts spread over {args.ramp:g} s; {args.workers} workers "
          f"(threads {args.threads} for gthread); {os.cpu_count()}-core CPU, shared with other work")
    print(f"{'worker':8} {'N':>5} {'ok':>5} {'errors':>6} {'ttfe_p50':>9} {'ttfe_p95':>9} {'peak_open':>9} {'wall_s':>7}")
    summary: dict[str, dict] = {}
    results = []
    for wc in args.worker_class:
        data_dir = Path(tempfile.mkdtemp(prefix=f"web-load-{wc}-"))
        proc, port, key = start_server(args, wc, data_dir)
        best = None
        try:
            # Untimed: every worker loads its index and models on its first requests.
            warm = asyncio.run(run_level(port, key, 4 * args.workers, args.tokens, args.timeout))
            if warm["errors"]:
                print(f"{wc:8} warm-up failed: {warm['first_error'][:160]}")
            for n in args.levels:
                r = asyncio.run(run_level(port, key, n, args.tokens, args.timeout, args.ramp))
                r["worker"] = wc
                results.append(r)
                print(f"{wc:8} {n:5d} {r['ok']:5d} {r['errors']:6d} {r['ttfe_p50_ms']:8.0f}ms "
                      f"{r['ttfe_p95_ms']:8.0f}ms {r['peak_open']:9d} {r['wall_s']:7.1f}", flush=True)
                if r["errors"]:
                    print(f"         first error: {r['first_error'][:160]}")
                    break
                best = r
        finally:
            stop_server(proc)
        summary[wc] = best or {"n": 0, "ttfe_p50_ms": float("nan"), "ttfe_p95_ms": float("nan")}
    print()
    for wc, b in summary.items():
        print(f"{wc}: largest N with zero errors {b['n']} (p50 time to first event {b['ttfe_p50_ms']:.0f} ms, "
              f"p95 {b['ttfe_p95_ms']:.0f} ms)")
    if len(summary) > 1:
        base_name, base = next(iter(summary.items()))
        for wc, b in list(summary.items())[1:]:
            held = b["n"] / base["n"] if base["n"] else float("nan")
            p95 = b["ttfe_p95_ms"] / base["ttfe_p95_ms"] if base["n"] and b["n"] else float("nan")
            print(f"{wc} vs {base_name} (baseline, same run): streams held x{held:.2f}, "
                  f"p95 time to first event x{p95:.2f} (at their own largest N)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
