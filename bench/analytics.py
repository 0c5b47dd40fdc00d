"""The analytics page on 1M generated messages in PostgreSQL: page load time and query plans.

Starts a throwaway PostgreSQL (``initdb`` in a temp dir, a loopback port, as ``tests/conftest.py``
does), runs the migrations, generates a support history with COPY (by default ~100k conversations
over 90 days, 1M messages: visitor and bot turns, people's replies after hand-offs, decisions,
time to first token, ratings, hand-offs, resolutions and reopenings), then loads the analytics page
through the Flask test client, logged in, several times, and prints the times (the first load, which
embeds the unanswered questions, and the p50 of the rest), the CPU, and each query's EXPLAIN ANALYZE.

    nice python bench/analytics.py                      # 1M messages (a few minutes to generate)
    nice python bench/analytics.py --messages 100000    # quick
    nice python bench/analytics.py --json bench/out/analytics.jsonl

Target: the page under a second.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tqdm import tqdm  # noqa: E402

BOTS = (("shop", 0.5), ("travel", 0.3), ("bank", 0.2))
ACTIONS = [
    "change my delivery address", "cancel my order", "get a refund", "reset my password",
    "update my card details", "track my parcel", "return a damaged item", "apply a discount code",
    "close my account", "change my subscription plan", "download an invoice", "add a second user",
    "pay in instalments", "change the name on my booking", "get a receipt by email",
    "exchange an item for another size", "ship to another country", "pick up my order in store",
    "turn off marketing emails", "report a missing item", "redeem a gift card", "delete my data",
    "change my phone number", "book a callback", "upgrade to the annual plan", "pause my subscription",
    "transfer my booking to a friend", "add luggage to my flight", "choose my seat", "get a travel certificate",
    "freeze my card", "raise my card limit", "dispute a payment", "order a new card", "set up a standing order",
    "see my statement", "change my PIN", "open a savings account", "add a beneficiary", "report fraud",
]
TEMPLATES = ["How do I {a}?", "Can I {a}?", "Is it possible to {a}?", "I want to {a}, how?",
             "What is the way to {a}?", "how to {a}", "Help me {a} please", "Where can I {a}?"]
ASK_PERSON = ["Can I talk to a human?", "I want to speak with an agent", "Put me through to a real person please",
              "connect me to someone from support"]
MESSAGE_COLUMNS = ("id", "conversation_id", "role", "text", "sources", "scores", "decision", "model_id",
                   "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "complete", "created_at",
                   "updated_at")
CONVERSATION_COLUMNS = ("id", "bot_id", "visitor_id", "status", "assigned_to", "waiting_since", "resolved_at",
                        "reopened_at", "visitor_email", "metadata", "created_at", "updated_at")


# -- a throwaway PostgreSQL --------------------------------------------------------------------
def _pg_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "initdb").exists():
            return base
    raise SystemExit("PostgreSQL is not installed (scripts/install-system-deps installs it)")


@contextmanager
def postgres():
    """URL of a fresh PostgreSQL server on a loopback port, stopped and removed afterwards."""
    pg = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="supportbot-bench-pg-"))
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(run_as + [str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run(run_as + [str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", \
            subprocess.run([str(pg / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run(run_as + [str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# -- generated history -------------------------------------------------------------------------
class History:
    """Conversations with a realistic mix, generated in time order (ids grow with time)."""

    def __init__(self, bot_ids: dict[str, int], days: int, now: dt.datetime, seed: int = 0):
        self.rng = random.Random(seed)
        self.bot_ids = bot_ids
        self.days = days
        self.now = now
        self.message_id = self.feedback_id = self.handoff_id = 0
        self.questions = [t.format(a=a) for a in ACTIONS for t in TEMPLATES]

    def conversation(self, start: dt.datetime, budget: int):
        """(conversation row, message rows, handoff rows, feedback rows), at most ``budget`` messages."""
        rng = self.rng
        cid = str(uuid.uuid4())
        bot = rng.choices([b for b, _ in BOTS], [w for _, w in BOTS])[0]
        turns = 1 + sum(rng.random() < 0.3 for _ in range(14))  # mean ~5 visitor turns
        t = start
        messages, handoffs, feedback = [], [], []
        handed = human = False

        def add(role, text, decision="", ttft=None):
            nonlocal t
            t += dt.timedelta(seconds=rng.uniform(5, 90))
            self.message_id += 1
            latency = None if ttft is None else ttft + rng.uniform(300, 3000)
            messages.append((self.message_id, cid, role, text, "[]", "[]", decision,
                             "hf" if decision == "answer" else "", latency, ttft,
                             None if ttft is None else rng.randint(200, 900),
                             None if ttft is None else rng.randint(10, 120), True, t, t))
            return self.message_id

        for _ in range(turns):
            if len(messages) + 2 > budget:
                break
            if handed:
                add("user", rng.choice(self.questions))
                if rng.random() < 0.85:
                    add("human", "Thanks, let me check that for you.")
                    human = True
                continue
            asks_person = rng.random() < 0.015
            add("user", rng.choice(ASK_PERSON) if asks_person else rng.choice(self.questions))
            r = rng.random()
            if asks_person or r < 0.035:
                add("bot", "A member of our team will reply here.", "handoff")
                self.handoff_id += 1
                reason = "requested" if asks_person else rng.choice(("low_confidence", "not_in_knowledge"))
                handoffs.append((self.handoff_id, cid, reason, t, None))
                handed = True
            elif r < 0.095:
                add("bot", "Did you mean one of these?", "clarify", rng.lognormvariate(4.1, 0.3))
            else:
                mid = add("bot", "Here is how to do it [1].", "answer", rng.lognormvariate(6.0, 0.5))
                if rng.random() < 0.12:
                    self.feedback_id += 1
                    feedback.append((self.feedback_id, mid, cid, 1 if rng.random() < 0.75 else -1, "",
                                     t + dt.timedelta(seconds=30)))
        status, resolved_at, reopened_at, waiting_since, email = "bot", None, None, None, ""
        if handed:
            age = self.now - t
            if age < dt.timedelta(hours=2) and rng.random() < 0.5:
                status = "human" if human else "waiting"
                waiting_since = handoffs[0][3]
                email = "" if human else f"visitor{self.handoff_id}@example.com"
            else:
                status, resolved_at = "resolved", t + dt.timedelta(minutes=rng.uniform(2, 120))
                handoffs[-1] = handoffs[-1][:4] + (resolved_at,)
        elif rng.random() < 0.3:
            status, resolved_at = "resolved", t + dt.timedelta(minutes=rng.uniform(1, 30))
        if resolved_at is not None and rng.random() < 0.04:
            reopened_at = resolved_at + dt.timedelta(hours=rng.uniform(1, 72))
            status = "bot"
        conv = (cid, self.bot_ids[bot], "v_" + uuid.uuid4().hex[:16], status, "", waiting_since, resolved_at,
                reopened_at, email, "{}", start, t)
        return conv, messages, handoffs, feedback


def generate(db, total_messages: int, days: int, seed: int = 0) -> dict:
    """COPY ~``total_messages`` messages (about 10 a conversation) into ``db``; returns counts."""
    from sqlalchemy import text

    bot_ids = {name: db.bot_id(name) for name, _ in BOTS}
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    history = History(bot_ids, days, now, seed)
    n_conversations = max(1, total_messages // 10)
    span = dt.timedelta(days=days).total_seconds()
    starts = sorted(history.rng.uniform(0, span) for _ in range(n_conversations))
    counts = {"conversations": 0, "messages": 0, "handoffs": 0, "feedback": 0}
    raw = db.engine.raw_connection()
    conn = raw.driver_connection
    bar = tqdm(total=total_messages, unit="msg", desc="generating", mininterval=1.0)
    try:
        i = 0
        while counts["messages"] < total_messages:
            chunk = ([], [], [], [])
            while i < len(starts) and len(chunk[1]) < 20_000 and counts["messages"] + len(chunk[1]) < total_messages:
                start = now - dt.timedelta(seconds=span) + dt.timedelta(seconds=starts[i])
                budget = total_messages - counts["messages"] - len(chunk[1])
                for rows, part in zip(chunk, history.conversation(start, budget)):
                    rows.extend(part if isinstance(part, list) else [part])
                i += 1
            if i >= len(starts) and not chunk[1]:
                starts.extend(sorted(history.rng.uniform(0, span) for _ in range(1000)))  # top up
                continue
            with conn.cursor() as cur:
                for table, columns, rows in (
                        ("conversations", CONVERSATION_COLUMNS, chunk[0]),
                        ("messages", MESSAGE_COLUMNS, chunk[1]),
                        ("handoffs", ("id", "conversation_id", "reason", "created_at", "resolved_at"), chunk[2]),
                        ("feedback", ("id", "message_id", "conversation_id", "rating", "comment", "created_at"),
                         chunk[3])):
                    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            conn.commit()
            for key, rows in zip(("conversations", "messages", "handoffs", "feedback"), chunk):
                counts[key] += len(rows)
            bar.update(len(chunk[1]))
    finally:
        bar.close()
        raw.close()
    with db.engine.begin() as c:
        for table in ("messages", "handoffs", "feedback"):
            c.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
    return counts


# -- measuring ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def explain(db, statement) -> tuple[str, float]:
    """EXPLAIN (ANALYZE, BUFFERS) of a SQLAlchemy statement: (the plan, its execution time in ms)."""
    compiled = statement.compile(dialect=db.engine.dialect, compile_kwargs={"render_postcompile": True})
    with db.engine.connect() as c:
        rows = c.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + compiled.string, compiled.params).all()
    plan = "\n".join(r[0] for r in rows)
    ms = next((float(r[0].split(":")[1].split()[0]) for r in rows if r[0].startswith("Execution Time")), float("nan"))
    return plan, ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--runs", type=int, default=7, help="page loads per filter (the first is the cold one)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON lines here")
    ap.add_argument("--no-plans", action="store_true", help="do not print the query plans")
    args = ap.parse_args()

    lines: list[dict] = []

    def emit(record: dict) -> None:
        lines.append(record)

    with postgres() as (url, pg_version), tempfile.TemporaryDirectory() as tmp:
        from bot.analytics import UNANSWERED_LIMIT, Filters
        from bot.components import Components
        from bot.core.settings import Settings
        from web import create_app
        from web.analytics import analytics
        from web.auth import create_user

        settings = Settings(data_dir=Path(tmp) / "var", database_url=url)
        components = Components(settings)
        db = components.db  # migrated
        t0 = time.perf_counter()
        counts = generate(db, args.messages, args.days)
        load_s = time.perf_counter() - t0
        machine = {"what": "machine", "cpu": cpu_model(), "cores": os.cpu_count(), "postgres": pg_version,
                   "python": platform.python_version()}
        emit(machine)
        emit({"what": "data", **counts, "days": args.days, "generate_s": round(load_s, 1)})
        print(f"\n{machine['cpu']} ({machine['cores']} cores), {pg_version}")
        print(f"data: {counts['messages']:,} messages, {counts['conversations']:,} conversations, "
              f"{counts['handoffs']:,} hand-offs, {counts['feedback']:,} ratings over {args.days} days "
              f"(generated and loaded in {load_s:.0f} s)")

        app = create_app(settings, components, test_config={"WTF_CSRF_ENABLED": False, "TESTING": True})
        create_user(db, "bench", "bench password")
        components.embedder.embed(["warm up"])  # loaded once when a server starts, not per page
        client = app.test_client()
        r = client.post("/admin/login", data={"username": "bench", "password": "bench password"})
        assert r.status_code == 302, r.status_code

        today = dt.datetime.now(dt.timezone.utc).date()
        cases = [
            ("90 days, all bots", {"start": (today - dt.timedelta(days=args.days - 1)).isoformat(),
                                   "end": today.isoformat(), "bot": "*"}),
            ("last 30 days, bot shop", {"start": (today - dt.timedelta(days=29)).isoformat(),
                                        "end": today.isoformat(), "bot": "shop"}),
        ]
        print(f"\npage loads (GET /admin/analytics through the Flask test client, {args.runs} runs each; "
              f"the first embeds up to {UNANSWERED_LIMIT} unanswered questions, later ones reuse their vectors):")
        for name, query in cases:
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                resp = client.get("/admin/analytics", query_string=query)
                times.append((time.perf_counter() - t) * 1000)
                assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
            warm = statistics.median(times[1:]) if len(times) > 1 else times[0]
            print(f"  {name:<24} first {times[0]:7.0f} ms   p50 of the rest {warm:6.0f} ms   "
                  f"max {max(times[1:] or times):6.0f} ms")
            emit({"what": "page", "case": name, "query": query, "first_ms": round(times[0], 1),
                  "p50_ms": round(warm, 1), "runs_ms": [round(x, 1) for x in times]})
            page = resp.get_data(as_text=True)
            assert "analytics-data" in page

        print("\nqueries (EXPLAIN ANALYZE, 90 days, all bots):")
        with app.app_context():
            a = analytics()
        filters = Filters.parse(cases[0][1]["start"], cases[0][1]["end"], None)
        for qname, statement in a.queries(filters).items():
            plan, ms = explain(db, statement)
            emit({"what": "query", "name": qname, "execution_ms": ms, "plan": plan})
            print(f"\n== {qname}: {ms:.1f} ms")
            if not args.no_plans:
                print(plan)
        shop = Filters.parse(cases[1][1]["start"], cases[1][1]["end"], db.bot_id("shop", create=False))
        print("\nqueries (last 30 days, bot shop): " + ", ".join(
            f"{q} {explain(db, st)[1]:.1f} ms" for q, st in a.queries(shop).items()))
        components.db.dispose()

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text("".join(json.dumps(x, default=str) + "\n" for x in lines))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
