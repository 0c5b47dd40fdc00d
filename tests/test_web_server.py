"""`supportbot serve --demo` under real gunicorn: boots, serves the demo, streams an answer."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("worker_class,workers", [("gthread", 2), ("gevent", 1)])
def test_serve_demo_streams_an_answer(tmp_path, worker_class, workers):
    port = free_port()
    env = {**os.environ, "SUPPORTBOT_EMBEDDER__MODEL": "hashing",
           "SUPPORTBOT_GENERATOR__BACKEND": "extractive",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "--data-dir", str(tmp_path / "var"), "serve", "--port", str(port),
         "--demo", "--workers", str(workers), "--worker-class", worker_class],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if requests.get(base + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or a worker still starting
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.3)
        demo = requests.get(base + "/demo", timeout=5)
        assert demo.status_code == 200, demo.text[:500]
        key = demo.text.split('data-site-key="')[1].split('"')[0]
        assert key.startswith("sk_")
        assert "script-src 'self'" in demo.headers["Content-Security-Policy"]

        origin = {"Origin": base}
        token = requests.post(base + "/api/session", json={"site_key": key}, headers=origin,
                              timeout=5).json()["visitor_token"]
        auth = {**origin, "Authorization": f"Bearer {token}"}
        cid = requests.post(base + "/api/conversations", json={}, headers=auth, timeout=5).json()["id"]
        with requests.post(f"{base}/api/conversations/{cid}/messages", json={"message": "How much does shipping cost?"},
                           headers=auth, stream=True, timeout=30) as r:
            assert r.status_code == 200, r.text[:500]
            assert r.headers["X-Accel-Buffering"] == "no"
            events = []
            kind = None
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
                    if kind == "done":
                        break
        kinds = [k for k, _ in events]
        assert kinds[0] == "meta" and kinds[-1] == "done" and "token" in kinds
        text = "".join(d["text"] for k, d in events if k == "token")
        assert "$6.95" in text or "shipping" in text.lower()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
