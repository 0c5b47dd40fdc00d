"""The right-answers gate: are a model's replies to visitors' FAQ questions right, and does it
contradict the FAQ where the true answer is "no" or "only if"?

The material is ``bench/faq_corpus/`` (fictional companies' FAQs in many layouts, each with
``questions.json``; ``split.json`` says which are *fit* and which *held_out*; see its README).
A question is

* ``in_scope`` / ``trap``: right when the bot answers and the reply holds every ``expect`` fact
  (``norm``-ed substrings); a trap's reply is a *contradiction* when it holds one of its
  ``contradiction`` phrases;
* ``out_of_scope``: right when the bot does not answer.

``score(rows)`` is the scoring of ``bench/answer_quality.py`` (which imports it from here).
``ask(sites, components, generator, dialogue)`` asks every question through the bot's own turn
pipeline (retrieval, decision, selection, prompt, reply guard and checker), each in a fresh
conversation, with ``generator`` writing the replies: the promotion gate (``training/promotion.py``)
runs it for the candidate and for the serving model over the same ingested knowledge and refuses
a candidate with more trap contradictions or a lower share right (``compare_answers``).

Components are passed in (``ingest_sites`` ingests each site into its own bot of them): this module
is training tier and never builds them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from bot.core.errors import SupportbotError
from bot.pipeline import Plan
from bot.policy import ANSWER, CLARIFY, Decision

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "bench" / "faq_corpus"
SAMPLE_FAQ = REPO / "samples" / "faq"
SKIP_FILES = {"expected.json", "questions.json", "README.md", "build_docx.py", "split.json"}
PARTS = ("fit", "held_out")
MARKER = "answer-sites.json"


def norm(text: str) -> str:
    """Lowercase, typographic quotes and dashes folded, whitespace collapsed."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2013", "-").replace("\u2014", "-").replace("**", "")
    return re.sub(r"\s+", " ", text).strip()


def is_right(row: dict) -> bool:
    if row["kind"] == "out_of_scope":
        return row["decision"] != ANSWER
    reply = norm(row["reply"])
    return row["decision"] == ANSWER and all(norm(e) in reply for e in row["expect"])


def right_after_choice(row: dict) -> bool:
    """Right at once, or asked back and right once the visitor chose their topic (``row["chosen"]``:
    that turn's decision and reply)."""
    chosen = row.get("chosen")
    return is_right(row) or bool(chosen and is_right({**row, **chosen}))


def contradicts(row: dict) -> bool:
    reply = norm(row["reply"])
    return row["decision"] == ANSWER and any(norm(c) in reply for c in row.get("contradiction", []))


def score(rows: Sequence[dict]) -> dict[str, Any]:
    """Figures of answered questions: share right of the answerable ones (``right``) and of all,
    contradictions on traps, out of scope not answered, share replied directly, first-token p50."""
    answerable = [r for r in rows if r["kind"] != "out_of_scope"]
    traps = [r for r in rows if r["kind"] == "trap"]
    oos = [r for r in rows if r["kind"] == "out_of_scope"]
    answered = [r for r in answerable if r["decision"] == ANSWER]
    ttfts = [r["ttft_ms"] for r in rows if r.get("ttft_ms") is not None and r["decision"] == ANSWER]
    return {
        "n": len(rows),
        "right": round(sum(map(is_right, answerable)) / len(answerable), 4) if answerable else None,
        "right_all": round(sum(map(is_right, rows)) / len(rows), 4) if rows else None,
        "trap_contradictions": sum(map(contradicts, traps)),
        "traps": len(traps),
        "out_of_scope_not_answered": round(sum(map(is_right, oos)) / len(oos), 4) if oos else None,
        "direct_share": round(sum(r["model"] == "extractive" for r in answered) / len(answered), 4) if answered else None,
        # Right at once, or after the visitor chose the offered topic that is their question
        # (``bench/answer_quality.py`` records that second turn as ``chosen``).
        "right_after_choice": round(sum(map(right_after_choice, answerable)) / len(answerable), 4) if answerable else None,
        "ttft_ms_p50": round(statistics.median(ttfts), 1) if ttfts else None,
    }


# -- the corpus ------------------------------------------------------------------------------------
def build_generated_files(corpus: Path, into: Path) -> dict[str, Path]:
    """Layouts that are binary (DOCX) are built from their sources (``build_docx.py``), never
    committed: ``{company: built file}`` (empty when the corpus has no builder)."""
    builder = Path(corpus) / "build_docx.py"
    if not builder.is_file():
        return {}
    spec = importlib.util.spec_from_file_location("faq_corpus_build_docx", builder)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Path(into).mkdir(parents=True, exist_ok=True)
    return module.build_all(Path(into))


def corpus_sites(corpus: Path = CORPUS, built: Path | None = None, sample_faq: Path | None = SAMPLE_FAQ,
                 parts: Iterable[str] = PARTS) -> list[dict]:
    """Every site of the corpus in ``parts``: ``{"name", "part", "files", "questions"}``.

    A company not named in ``split.json`` is *fit*; the sample FAQ (``sample_faq_questions.json``
    beside the companies, over ``sample_faq``) is *held_out* unless the split says otherwise.
    ``built``: the folder the Word layouts were built into (``build_generated_files``).
    """
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise SupportbotError(f"{corpus}: no FAQ corpus folder (the answer benchmark reads bench/faq_corpus)")
    parts = set(parts)
    unknown = parts - set(PARTS)
    if unknown:
        raise SupportbotError(f"corpus part(s) {', '.join(sorted(unknown))}: use fit, held_out or both")
    split_path = corpus / "split.json"
    split = json.loads(split_path.read_text()) if split_path.is_file() else {}
    out = []
    for folder in sorted(p for p in corpus.iterdir() if p.is_dir()):
        qfile = folder / "questions.json"
        part = split.get(folder.name, "fit")
        if not qfile.is_file() or part not in parts:
            continue
        files = [p for p in sorted(folder.iterdir())
                 if p.is_file() and p.name not in SKIP_FILES and p.suffix not in (".py", ".json")]
        if built is not None:
            files += sorted(Path(built).glob(f"{folder.name}.*"))
        if not files:
            raise SupportbotError(f"{folder}: no FAQ file to ingest (Word layouts need build_generated_files)")
        out.append({"name": folder.name, "part": part, "files": [str(f) for f in files],
                    "questions": json.loads(qfile.read_text())["questions"]})
    sample_q = corpus / "sample_faq_questions.json"
    part = split.get("sample-faq", "held_out")
    if sample_faq is not None and sample_q.is_file() and Path(sample_faq).exists() and part in parts:
        out.append({"name": "sample-faq", "part": part, "files": [str(sample_faq)],
                    "questions": json.loads(sample_q.read_text())["questions"]})
    return out


def limit_questions(sites: Sequence[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` questions in all, taken round-robin over the sites (so a small limit still
    asks every site, in each site's order); sites left without a question are dropped."""
    if not limit or limit <= 0:
        return [dict(s) for s in sites]
    keep: list[list[dict]] = [[] for _ in sites]
    taken, depth = 0, 0
    while taken < limit and any(depth < len(s["questions"]) for s in sites):
        for i, site in enumerate(sites):
            if taken < limit and depth < len(site["questions"]):
                keep[i].append(site["questions"][depth])
                taken += 1
        depth += 1
    return [{**s, "questions": q} for s, q in zip(sites, keep) if q]


def sites_key(sites: Sequence[dict], corpus: Path = CORPUS, extra: Any = None) -> str:
    """A content hash of the sites' sources (and ``extra``: the embedder and ingest settings): a
    site with a folder in ``corpus`` by that folder's files (a built Word file changes bytes at
    every build, its ``content.json`` does not), any other by its own files."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for site in sorted(sites, key=lambda s: s["name"]):
        h.update(site["name"].encode())
        folder = Path(corpus) / site["name"]
        paths = [folder] if folder.is_dir() else [Path(f) for f in site["files"]]
        for path in paths:
            for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if p.is_file() and p.name != "questions.json":
                    h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:20]


def bot_name(site: dict) -> str:
    return "answers-" + re.sub(r"[^a-z0-9-]", "-", site["name"].lower())


def ingest_sites(components, sites: Sequence[dict], progress: bool = False) -> None:
    """Each site's files into its own bot of ``components`` (once: a marker under the components'
    data dir lists the sites done; use a data dir per corpus content, see ``sites_key``)."""
    marker = Path(components.settings.data_dir) / MARKER
    done = set(json.loads(marker.read_text())) if marker.is_file() else set()
    for site in sites:
        if site["name"] in done:
            continue
        report = components.knowledge.ingest(bot_name(site), [Path(f) for f in site["files"]], progress=progress)
        if report.errors:
            raise SupportbotError(f"{site['name']}: " + "; ".join(report.errors[:5]))
        done.add(site["name"])
        marker.write_text(json.dumps(sorted(done)))


# -- asking --------------------------------------------------------------------------------------
def ask(sites: Sequence[dict], components, generator, dialogue, *, generate_all: bool = True,
        progress: bool = False) -> list[dict]:
    """Every question of ``sites`` (already ingested) through its bot's turn pipeline, with
    ``generator`` writing the replies and ``dialogue`` (settings) deciding; one row per question.

    ``generate_all``: a question the bot would reply to with an FAQ entry's own answer is
    generated from the same sources instead: a direct reply is the same whichever model serves,
    so it would only dilute the difference between two models.
    """
    from tqdm import tqdm

    if hasattr(generator, "load"):
        generator.load()
    rows = []
    total = sum(len(s["questions"]) for s in sites)
    bar = tqdm(total=total, desc="answers", unit="q", disable=not progress)
    for site in sites:
        pipeline = components.pipeline(bot_name(site), generator=generator, dialogue=dialogue)
        for q in site["questions"]:
            message = q["q"]
            t0 = time.perf_counter()
            plan = pipeline.plan(message, pipeline.retrieve(message, []), [])
            if generate_all and plan.direct:
                plan = Plan(Decision(ANSWER, "confident", plan.decision.confidence), plan.hits, plan.sources)
            reply, ttft = "", None
            if plan.decision.action == ANSWER:
                pieces = []
                for piece in pipeline.reply(plan, message, []):
                    if piece and ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000.0
                    pieces.append(piece)
                reply = "".join(pieces).strip()
            elif plan.decision.action == CLARIFY:
                reply = pipeline.clarify(plan.hits, plan.topics)[0]
            else:
                reply = pipeline.handoff_text(plan.decision)
            rows.append({"site": site["name"], "part": site["part"], "kind": q["kind"], "q": message,
                         "decision": plan.decision.action, "model": pipeline.model_id(plan), "reply": reply,
                         "ttft_ms": ttft, "expect": q.get("expect", []),
                         "contradiction": q.get("contradiction", [])})
            bar.update(1)
    bar.close()
    return rows


def summary(rows: Sequence[dict]) -> dict[str, Any]:
    """``score`` of all rows, the gate's figures under ``answers_*`` keys, and each part's score."""
    figures = score(rows)
    out = {"answers_n": figures["n"], "answers_right": figures["right"],
           "answers_trap_contradictions": figures["trap_contradictions"], "answers_traps": figures["traps"],
           "answers_out_of_scope_not_answered": figures["out_of_scope_not_answered"],
           "answers": {"all": figures}}
    for part in PARTS:
        part_rows = [r for r in rows if r["part"] == part]
        if part_rows:
            out["answers"][part] = score(part_rows)
    return out


def compare_answers(candidate: dict[str, Any], serving: dict[str, Any], tolerance: float = 0.0) -> list[str]:
    """Reasons to refuse the candidate: more contradictions on traps than the serving model (no
    tolerance: inventing a wrong "yes" is never traded for anything), or a share right lower by more
    than ``tolerance``."""
    reasons = []
    c_con, s_con = candidate["answers_trap_contradictions"], serving["answers_trap_contradictions"]
    if c_con > s_con:
        reasons.append(f"answers: {c_con} contradictions on {candidate['answers_traps']} trap questions, "
                       f"more than the serving model's {s_con}")
    c_right, s_right = candidate.get("answers_right"), serving.get("answers_right")
    if c_right is not None and s_right is not None and c_right < s_right - tolerance:
        reasons.append(f"answers: share right would drop from {s_right:.4f} to {c_right:.4f}")
    return reasons
