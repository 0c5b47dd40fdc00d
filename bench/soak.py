"""Soak: visitors chatting and an admin uploading documents against the real server, with one
worker killed (SIGKILL) in the middle.

Starts ``supportbot serve`` (gunicorn, ``--workers 2``, the extractive generator, the hashing
embedder, SQLite, the sample FAQ) on 127.0.0.1. Then for ``--duration`` seconds:

* ``--visitors`` visitors (threads) each open a session and a conversation and ask questions, a
  few seconds apart, reading each streamed answer to its end. Like the widget, a visitor whose
  stream breaks resumes it with ``Last-Event-ID`` (up to 3 times), renews an expired token, and
  waits ``Retry-After`` on a 429. Each visitor has its own address (``X-Forwarded-For`` behind
  ``web.trusted_proxies = 1``), so the per-IP limit is per visitor, as in production.
* an admin logs in to the console and uploads a new Markdown document every ``--upload-every``
  seconds (each upload publishes a new index, which every worker swaps in).
* at ``--kill-at`` (a fraction of the duration) one gunicorn worker is killed with SIGKILL;
  gunicorn starts a new one. The kill window runs from the kill until ``--window`` seconds later.

``--slow-words N`` replaces the extractive generator with the ``openai`` backend pointed at a
stand-in server in this process that streams N words 0.1 s apart (and turns direct FAQ replies
off), so that answers last seconds and the kill cuts some of them mid-stream.

Then it prints: requests sent, 5xx responses and connection errors outside and inside the kill
window (target: 0 outside), user messages stored vs sent (each message accepted with a 200 is
looked up in the database; target: equal), answers completed, answers that ended with an error
event (the ones cut by the kill: resumed on the other worker, which saw the dead producer's
heartbeat stop), and unfinished bot rows left in the database (target: 0).

    python bench/soak.py                      # 5 minutes, 50 visitors
    python bench/soak.py --duration 120       # 2 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "How much does shipping cost?", "Can I return used gear?", "How long does delivery take?",
    "Is a broken zipper covered by the warranty?", "How do I reset my password?",
    "Do you ship to Canada?", "How do I track my order?", "Can I change my order?",
    "When will I get my refund?", "I want to talk to a human please",
]
ADMIN_PASSWORD = "soak test password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(slow_url: str = "") -> dict:
    env = {**os.environ, "SUPPORTBOT_EMBEDDER__MODEL": "hashing", "SUPPORTBOT_GENERATOR__BACKEND": "extractive",
           "SUPPORTBOT_DIALOGUE__CHECKER": "", "SUPPORTBOT_WEB__TRUSTED_PROXIES": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if slow_url:
        env.update({"SUPPORTBOT_GENERATOR__BACKEND": "openai", "SUPPORTBOT_GENERATOR__BASE_URL": slow_url,
                    "SUPPORTBOT_GENERATOR__MODEL": "slow", "SUPPORTBOT_DIALOGUE__DIRECT_ANSWER_THRESHOLD": "2"})
    return env


def slow_generator(words: int, delay_s: float = 0.1) -> str:
    """A stand-in OpenAI-compatible server streaming ``words`` words ``delay_s`` apart; its /v1 URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for i in range(words):
                    time.sleep(delay_s)
                    chunk = {"choices": [{"index": 0, "delta": {"content": f" word{i}"}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
                self.wfile.write(b"data: [DONE]\n\n")
            except OSError:
                pass  # the worker that asked was killed

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def prepare(data_dir: Path, origin: str) -> str:
    """Ingest the sample FAQ, create the admin and a site key; returns the key."""
    os.environ.update({k: v for k, v in server_env().items() if k.startswith("SUPPORTBOT_")})
    from bot.components import Components
    from bot.core.settings import load_settings
    from web.auth import create_user
    from web.keys import SiteKeys

    comps = Components(load_settings(data_dir=data_dir))
    comps.knowledge.ingest("default", [REPO / "samples" / "faq"])
    create_user(comps.db, "soak", ADMIN_PASSWORD)
    key = SiteKeys(comps.db).create("default", [origin]).key
    comps.db.dispose()
    return key


def worker_pids(master: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) != master:
            continue
        try:
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing" in cmdline:  # the resource tracker of the start-up step, not a worker
            continue
        out.append(int(stat.parent.name))
    return sorted(out)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.status = Counter()
        self.errors: list[tuple[float, str]] = []  # (time, what): 5xx and connection errors
        self.kill_at: float | None = None
        self.window = 0.0
        self.sent: list[tuple[str, str]] = []  # (conversation, text) accepted with a 200
        self.unsure: list[tuple[str, str]] = []  # the connection broke before a status
        self.completed = self.errored = self.resumed = self.rate_limited = self.renewed = 0
        self.broken = 0  # streams that could not be finished even by resuming
        self.uploads = Counter()

    def count(self, status: int | None, what: str) -> None:
        with self.lock:
            self.requests += 1
            if status is None or status >= 500:
                self.errors.append((time.monotonic(), f"{status or 'conn'} {what}"))
            if status is not None:
                self.status[status] += 1

    def in_window(self, t: float) -> bool:
        return self.kill_at is not None and self.kill_at <= t <= self.kill_at + self.window


def parse_sse(lines):
    kind, eid = None, None
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, eid, json.loads(line[6:])
            kind = None


class Visitor(threading.Thread):
    def __init__(self, n: int, base: str, origin: str, key: str, stats: Stats, stop: threading.Event,
                 think: tuple[float, float]):
        super().__init__(daemon=True, name=f"visitor-{n}")
        self.n, self.base, self.key, self.stats, self.stop_event, self.think = n, base, key, stats, stop, think
        self.http = requests.Session()
        self.http.headers.update({"Origin": origin, "X-Forwarded-For": f"10.{n // 250}.{n % 250}.7"})
        self.token = None
        self.cid = None
        self.asked = 0

    def call(self, method: str, path: str, what: str, **kw):
        for attempt in range(4):
            headers = dict(kw.pop("headers", {}) or {})
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                r = self.http.request(method, self.base + path, headers=headers, timeout=60, **kw)
            except requests.RequestException:
                self.stats.count(None, what)
                raise
            self.stats.count(r.status_code, what)
            if r.status_code in (401, 429) and attempt < 3:
                r.close()
            if r.status_code == 429 and attempt < 3:
                with self.stats.lock:
                    self.stats.rate_limited += 1
                time.sleep(int(r.headers.get("Retry-After", "5")) + 1)
                kw["headers"] = headers
                continue
            if r.status_code == 401 and path != "/api/session" and attempt < 3:
                self.session()
                with self.stats.lock:
                    self.stats.renewed += 1
                kw["headers"] = headers
                continue
            return r
        return r

    def session(self):
        r = self.call("POST", "/api/session", "session", json={"site_key": self.key, "visitor_token": self.token})
        r.raise_for_status()
        self.token = r.json()["visitor_token"]

    def run(self):
        try:
            self.session()
            r = self.call("POST", "/api/conversations", "conversation", json={"page": "soak"})
            r.raise_for_status()
            self.cid = r.json()["id"]
        except Exception:  # noqa: BLE001 - counted
            return
        while not self.stop_event.is_set():
            self.ask()
            self.stop_event.wait(random.uniform(*self.think))

    def ask(self):
        self.asked += 1
        text = f"{random.choice(QUESTIONS)} (visitor {self.n}, question {self.asked})"
        try:
            r = self.call("POST", f"/api/conversations/{self.cid}/messages", "message",
                          json={"message": text}, stream=True)
        except requests.RequestException:
            with self.stats.lock:
                self.stats.unsure.append((self.cid, text))
            return
        if r.status_code != 200:
            r.close()
            return
        with self.stats.lock:
            self.stats.sent.append((self.cid, text))
        last_id = None
        for attempt in range(4):
            try:
                for kind, eid, _ in parse_sse(r.iter_lines()):
                    last_id = eid or last_id
                    if kind in ("done", "error"):
                        with self.stats.lock:
                            if kind == "done":
                                self.stats.completed += 1
                            else:
                                self.stats.errored += 1
                        r.close()
                        return
            except requests.RequestException:
                pass
            r.close()
            if not last_id or attempt == 3:
                break
            time.sleep(0.5 * (attempt + 1))  # the stream broke: resume it, like the widget
            with self.stats.lock:
                self.stats.resumed += 1
            try:
                r = self.call("GET", f"/api/conversations/{self.cid}/events", "resume",
                              headers={"Last-Event-ID": last_id}, stream=True)
            except requests.RequestException:
                continue
        with self.stats.lock:
            self.stats.broken += 1


class Admin(threading.Thread):
    def __init__(self, base: str, stats: Stats, stop: threading.Event, every_s: float):
        super().__init__(daemon=True, name="admin")
        self.base, self.stats, self.stop_event, self.every_s = base, stats, stop, every_s
        self.http = requests.Session()
        self.http.headers["X-Forwarded-For"] = "10.255.0.1"

    def login(self) -> str:
        page = self.http.get(self.base + "/admin/login", timeout=30)
        self.stats.count(page.status_code, "admin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = self.http.post(self.base + "/admin/login", data={"username": "soak", "password": ADMIN_PASSWORD,
                                                             "csrf_token": token}, timeout=30, allow_redirects=False)
        self.stats.count(r.status_code, "admin")
        page = self.http.get(self.base + "/admin/documents", timeout=30)
        self.stats.count(page.status_code, "admin")
        return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)

    def run(self):
        n = 0
        token = None
        while not self.stop_event.is_set():
            n += 1
            doc = (f"# Soak topic {n}\n\n## What is soak topic {n}?\n"
                   f"Soak topic {n} is a made-up subject number {n} for the load test, "
                   f"uploaded at {time.time():.0f}.\n").encode()
            try:
                token = token or self.login()
                r = self.http.post(self.base + "/admin/documents/upload",
                                   files={"files": (f"soak-{n}.md", doc, "text/markdown")},
                                   headers={"X-Requested-With": "fetch", "X-CSRFToken": token}, timeout=120)
                self.stats.count(r.status_code, "upload")
                self.stats.uploads["ok" if r.status_code == 200 else str(r.status_code)] += 1
            except requests.RequestException:
                self.stats.count(None, "upload")
                self.stats.uploads["connection error"] += 1
                token = None
            except Exception:  # noqa: BLE001 - a login page without a token (mid-restart)
                self.stats.uploads["login failed"] += 1
                token = None
            self.stop_event.wait(self.every_s)


def stored_user_messages(data_dir: Path) -> set[tuple[str, str]]:
    import sqlite3

    con = sqlite3.connect(data_dir / "supportbot.db")
    rows = con.execute("SELECT conversation_id, text FROM messages WHERE role = 'user'").fetchall()
    con.close()
    return {(c, t) for c, t in rows}


def unfinished_rows(data_dir: Path) -> tuple[int, int]:
    import sqlite3

    con = sqlite3.connect(data_dir / "supportbot.db")
    open_rows = con.execute("SELECT count(*) FROM messages WHERE role != 'user' AND complete = 0").fetchone()[0]
    errors = con.execute("SELECT count(*) FROM messages WHERE role != 'user' AND decision = 'error'").fetchone()[0]
    con.close()
    return open_rows, errors


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            r = requests.get(base + "/healthz", timeout=3)
            if r.status_code == 200 and r.json().get("ready"):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready in {timeout:g} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    p.add_argument("--visitors", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--think", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"),
                   help="seconds a visitor waits between questions")
    p.add_argument("--upload-every", type=float, default=5.0)
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of the duration (negative: no kill)")
    p.add_argument("--window", type=float, default=20.0, help="seconds after the kill counted as its window")
    p.add_argument("--data-dir", default="", help="default: a new temp dir")
    p.add_argument("--slow-words", type=int, default=0,
                   help="stream answers of this many words 0.1 s apart from a stand-in generator (0: extractive)")
    args = p.parse_args()

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="supportbot-soak-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"soak: {args.visitors} visitors + 1 admin uploading every {args.upload_every:g} s for "
          f"{args.duration:g} s against `supportbot serve --workers {args.workers}` (hashing embedder, SQLite) "
          f"at {base}; data in {data_dir}", flush=True)
    key = prepare(data_dir, base)
    slow_url = slow_generator(args.slow_words) if args.slow_words > 0 else ""
    if slow_url:
        print(f"generator: a stand-in streaming {args.slow_words} words 0.1 s apart at {slow_url}", flush=True)
    log = open(data_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--data-dir", str(data_dir), "serve", "--port",
                             str(port), "--workers", str(args.workers)],
                            env=server_env(slow_url), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    stats = Stats()
    stats.window = args.window
    stop = threading.Event()
    try:
        wait_ready(base, proc, 180)
        print(f"server ready; workers {worker_pids(proc.pid)}", flush=True)
        t0 = time.monotonic()
        threads = [Visitor(i, base, base, key, stats, stop, tuple(args.think)) for i in range(args.visitors)]
        threads.append(Admin(base, stats, stop, args.upload_every))
        for t in threads:
            t.start()
            time.sleep(0.02)
        killed = None
        while time.monotonic() - t0 < args.duration:
            if killed is None and args.kill_at >= 0 and time.monotonic() - t0 >= args.kill_at * args.duration:
                pids = worker_pids(proc.pid)
                if pids:
                    killed = random.choice(pids)
                    stats.kill_at = time.monotonic()
                    os.kill(killed, signal.SIGKILL)
                    print(f"t={time.monotonic() - t0:.0f}s: killed worker {killed} with SIGKILL "
                          f"(workers were {pids})", flush=True)
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(90)
        wall = time.monotonic() - t0
        time.sleep(1.0)
        after = worker_pids(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    stored = stored_user_messages(data_dir)
    sent = set(stats.sent)
    unsure = set(stats.unsure)
    mine = {(c, t) for c, t in stored if "(visitor " in t}
    outside = [e for t, e in stats.errors if not stats.in_window(t)]
    inside = [e for t, e in stats.errors if stats.in_window(t)]
    open_rows, error_rows = unfinished_rows(data_dir)
    print()
    print(f"duration                      {wall:.0f} s (kill at {args.kill_at:g} of it, window {args.window:g} s)")
    print(f"requests                      {stats.requests}  by status {dict(sorted(stats.status.items()))}")
    print(f"5xx / connection errors       outside the kill window: {len(outside)}   inside: {len(inside)}")
    if outside:
        print(f"  outside: {Counter(outside).most_common(5)}")
    if inside:
        print(f"  inside:  {Counter(inside).most_common(5)}")
    print(f"user messages                 sent (accepted, 200) {len(sent)}, stored {len(mine)}; "
          f"accepted but not stored {len(sent - stored)}; stored but never accepted {len(mine - sent - unsure)}")
    print(f"  cut by the kill before a status: {len(unsure)} (stored: {len(unsure & stored)})")
    print(f"answers                       completed {stats.completed}, ended with an error event "
          f"{stats.errored}, resumed streams {stats.resumed}, not finished even by resuming {stats.broken}")
    print(f"bot rows in the database      unfinished {open_rows} (target 0), closed as errors {error_rows}")
    print(f"429s waited out               {stats.rate_limited}; tokens renewed {stats.renewed}")
    print(f"uploads                       {dict(stats.uploads)}")
    print(f"workers after the run         {after} (gunicorn replaced the killed one)")


if __name__ == "__main__":
    main()
