"""Are the bot's answers right? Visitors' questions over many sites' FAQs, in one run against the
``extractive`` backend (no language model) and the previous default (an earlier commit's code).

Material (``bench/faq_corpus/``, written for this benchmark, fictional companies in different
layouts): per company a folder with its FAQ file(s) and ``questions.json``; the bundled sample FAQ
with ``sample_faq_questions.json``. Each question is

* ``in_scope``: right when the bot answers and the reply holds every ``expect`` fact;
* ``trap`` (the true answer is "no" or "only if"): right as above; a *contradiction* when the reply
  holds one of the ``contradiction`` phrases (what a wrong reply would assert);
* ``out_of_scope``: right when the bot does not answer (asks back or hands off).

Each configuration runs in its own process (``--worker``) over the real path: every company is
ingested into its own bot with the default embedder, and every question goes through
``DialogueManager.respond`` in a fresh conversation, as the widget sends it. Printed per
configuration and per part (``fit`` companies, on which thresholds may be fitted, and ``held_out``
ones, which nothing was fitted on): share right, contradictions on traps, out of scope not answered,
share replied directly (the FAQ's own answer), first-token p50; and the CPU they ran on. Also
``right_after_choice``: right at once, or asked back offering the question's own entry (on a help
center: a passage of the article that answers it) and right once the visitor chose it (the
widget's topic button sends the topic's words as the next message of the same conversation); a
visitor whose entry was not offered, or who asked something the FAQ does not answer, chooses
nothing.

    python bench/answer_quality.py                      # current default, extractive, previous (963c26b)
    python bench/answer_quality.py --configs current --json var/bench/answers.json
    python bench/answer_quality.py --previous REV       # another earlier commit as "previous"
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "bench" / "faq_corpus"
SAMPLE_FAQ = REPO / "samples" / "faq"
PREVIOUS = "963c26b"  # the last commit before the turn pipeline, the checker and the new selector
SKIP_FILES = {"expected.json", "questions.json", "README.md", "build_docx.py", "split.json"}


def cpu() -> dict:
    model, flags = platform.processor() or "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
        flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split())
    except (OSError, AttributeError):
        pass
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in {"avx2", "fma"})
    return {"model": model, "cores": os.cpu_count(), "features": keep}


def _gate():
    """The scoring lives in ``training/answer_gate.py`` (the promotion gate scores with it too);
    imported on use, from this checkout, so that a worker over another commit's tree never loads
    this tree's packages."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    from training import answer_gate

    return answer_gate


def norm(text: str) -> str:
    """Lowercase, typographic quotes and dashes folded, whitespace collapsed."""
    return _gate().norm(text)


def sites(built: Path) -> list[dict]:
    """Every site of the benchmark: name, part, files to ingest, questions."""
    split = json.loads((CORPUS / "split.json").read_text()) if (CORPUS / "split.json").is_file() else {}
    out = []
    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        qfile = folder / "questions.json"
        if not qfile.is_file():
            continue
        files = [p for p in sorted(folder.iterdir())
                 if p.is_file() and p.name not in SKIP_FILES and p.suffix not in (".py", ".json")]
        files += sorted(built.glob(f"{folder.name}.*"))  # built from its sources (build_docx.py)
        # A folder with no expected.json is a help center (prose articles, no FAQ entries): there
        # the bot writes its replies (or quotes the passage) instead of quoting an entry.
        layout = "faq" if (folder / "expected.json").is_file() else "help"
        out.append({"name": folder.name, "part": split.get(folder.name, "fit"), "layout": layout,
                    "files": [str(f) for f in files], "questions": json.loads(qfile.read_text())["questions"]})
    sample_q = CORPUS / "sample_faq_questions.json"
    if sample_q.is_file():
        out.append({"name": "sample-faq", "part": split.get("sample-faq", "held_out"), "layout": "faq",
                    "files": [str(SAMPLE_FAQ)],
                    "questions": json.loads(sample_q.read_text())["questions"]})
    return out


def build_generated_files(into: Path) -> None:
    """Layouts that are binary (DOCX) are built from their sources, never committed."""
    builder = CORPUS / "build_docx.py"
    if builder.is_file():
        subprocess.run([sys.executable, str(builder), str(into)], check=True, cwd=REPO)


# ---- one configuration (runs in its own process, over one code tree) -------------------------
def worker(args) -> None:
    sys.path.insert(0, str(Path(args.code).resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if (Path(args.code) / "bot" / "core").is_dir():
        from bot.core.settings import Settings
    else:  # the previous commit's layout
        from bot.settings import Settings
    from bot.components import Components

    overrides = json.loads(args.settings or "{}")
    settings = Settings(data_dir=Path(args.data_dir), **overrides)
    comps = Components(settings)
    results = []
    for site in json.loads(Path(args.sites).read_text()):
        bot = re.sub(r"[^a-z0-9-]", "-", site["name"].lower())
        report = comps.knowledge.ingest(bot, [Path(f) for f in site["files"]], progress=False)
        if report.errors:
            raise SystemExit(f"{site['name']}: {report.errors}")
        dialogue = comps.dialogue(bot)
        for q in site["questions"]:
            cid = comps.conversations.create(comps.db.bot_id(bot), "bench", {"channel": "bench"})
            row = {"site": site["name"], "part": site["part"], "kind": q["kind"], "q": q["q"],
                   **turn(dialogue, cid, q["q"]), "expect": q.get("expect", []),
                   "contradiction": q.get("contradiction", [])}
            # Asked back: the visitor chooses the offered topic that is their question (the widget's
            # button sends its words), when it is offered; out-of-scope visitors choose none.
            offered = row.pop("topics")
            pick = next((t for t, doc in offered if _is_theirs(q, t, doc)), None)
            if row["decision"] == "clarify" and pick and q["kind"] != "out_of_scope":
                chosen = turn(dialogue, cid, pick)
                chosen.pop("topics")
                row["chosen"] = {"q": pick, **chosen}
            results.append(row)
    Path(args.out).write_text(json.dumps(results, ensure_ascii=False, indent=1))


def _is_theirs(q: dict, topic: str, doc: str) -> bool:
    """Is the offered ``topic`` (from document ``doc``) the visitor's question: its FAQ entry, or
    on a help center a passage of the article that answers it?"""
    if q.get("entry"):
        return _words(topic) == _words(q["entry"])
    return bool(q.get("article") and topic) and Path(str(doc or "")).name == q["article"]


def _words(text: str) -> str:
    """``retrieval.types.question_key``, written here: a worker may run over the previous commit's
    tree, which has neither it nor ``training.answer_gate``."""
    return re.sub(r"\W+", " ", text.lower()).strip()


def turn(dialogue, cid: str, text: str) -> dict:
    """One visitor message through ``DialogueManager.respond``: decision, model, reply, first-token
    time and the topics a clarifying question offered (their words, as the widget shows them, and
    the document each is from)."""
    t0 = time.perf_counter()
    decision = model = ""
    pieces, ttft, topics = [], None, []
    for event in dialogue.respond(cid, text):
        if event.type == "meta":
            decision, model = event.data.get("decision", ""), event.data.get("model", "")
        elif event.type == "token":
            if ttft is None:
                ttft = (time.perf_counter() - t0) * 1000.0
            pieces.append(event.data.get("text", ""))
        elif event.type == "handoff":
            pieces.append(event.data.get("message", ""))
        elif event.type == "sources" and decision == "clarify":
            topics = [(s.get("topic") or s.get("title") or "", s.get("doc_id") or s.get("source") or "")
                      for s in event.data.get("sources", [])]
    return {"decision": decision, "model": model, "reply": "".join(pieces), "ttft_ms": ttft, "topics": topics}


# ---- scoring -----------------------------------------------------------------------------------
def score(rows: list[dict]) -> dict:
    """Share right, trap contradictions, ... (``training.answer_gate.score``)."""
    return _gate().score(rows)


CONFIGS = {
    # label: (code tree, settings overrides)
    "current": ("current", {}),
    "extractive": ("current", {"generator": {"backend": "extractive"}}),
    "previous": ("previous", {}),
    # the DSTC11 cross-encoder as the selector (it decides where the FAQ matcher does not)
    "cross-selector": ("current", {"dialogue": {"selector": "dstc11-cross"}}),
    # the mixture-trained support cross-encoder as the selector
    "support-selector": ("current", {"dialogue": {"selector": "support"}}),
    # the untuned generator (no support LoRA adapter): what the adapter changes where the bot writes
    "untuned": ("current", {"generator": {"adapter": ""}}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="current,extractive,previous")
    ap.add_argument("--previous", default=PREVIOUS, help="the commit whose default is 'previous'")
    ap.add_argument("--json", type=Path, default=None, help="write figures and every reply here")
    ap.add_argument("--only", default="", help="ask these sites only (comma-separated names): a quick look")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "bench" / "answer_quality")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--sites", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    args.work.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix="faq-built-", dir=args.work))
    build_generated_files(built)
    all_sites = sites(built)
    if args.only:
        wanted = set(args.only.split(","))
        missing = wanted - {s["name"] for s in all_sites}
        if missing:
            raise SystemExit(f"--only: no such site(s): {', '.join(sorted(missing))}")
        all_sites = [s for s in all_sites if s["name"] in wanted]
    sites_file = args.work / "sites.json"
    sites_file.write_text(json.dumps(all_sites))
    trees = {"current": REPO}
    report: dict = {"cpu": cpu(), "sites": len(all_sites), "questions": sum(len(s["questions"]) for s in all_sites),
                    "configs": {}}
    for label in args.configs.split(","):
        tree_name, overrides = CONFIGS[label]
        if tree_name == "previous" and "previous" not in trees:
            tree = args.work / f"tree-{args.previous}"
            if not tree.is_dir():
                subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.previous],
                               check=True, capture_output=True)
            trees["previous"] = tree
        out = args.work / f"{label}.json"
        data_dir = Path(tempfile.mkdtemp(prefix=f"data-{label}-", dir=args.work))
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(trees[tree_name])}
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--code", str(trees[tree_name]),
                        "--settings", json.dumps(overrides), "--sites", str(sites_file), "--data-dir", str(data_dir),
                        "--out", str(out)], check=True, env=env, cwd=trees[tree_name])
        rows = json.loads(out.read_text())
        figures = {"all": score(rows), "seconds": round(time.perf_counter() - t0, 1)}
        for part in ("fit", "held_out"):
            part_rows = [r for r in rows if r["part"] == part]
            if part_rows:
                figures[part] = score(part_rows)
        # FAQ sites and help centers apart (the previous commit's rows name their site only)
        layout = {s["name"]: s.get("layout", "faq") for s in all_sites}
        for kind in ("faq", "help"):
            kind_rows = [r for r in rows if layout.get(r["site"], "faq") == kind]
            if kind_rows and len(kind_rows) < len(rows):
                figures[f"{kind}_sites"] = score(kind_rows)
        report["configs"][label] = {"figures": figures, "rows": rows}
        print(f"{label:<11} " + json.dumps(figures), flush=True)
    print(json.dumps({"cpu": report["cpu"], "sites": report["sites"], "questions": report["questions"]}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
