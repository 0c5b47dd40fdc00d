"""``supportbot eval``: the whole bot on dialogues in the ``../shared/data`` formats.

For every instance (a conversation up to a user turn) the bot retrieves with the conversation,
decides answer / clarify / hand off, selects the passages it grounds the answer in and (unless
generation is off) generates the reply it would send. Scored as the DSTC11 Track 5 scorer does:

* selection precision / recall / F1: true/false positives and false negatives of the selected
  document ids against the gold ids, summed (micro-averaged) over every instance where the gold
  list or the selected list is non-empty, as alexa/dstc11-track5 ``scripts/scores.py`` does: a
  turn the bot does not answer selects nothing (its gold ids are misses), and what the bot selects
  on a turn that needs no knowledge counts as false positives. Exact match: the share of those
  instances whose selection equals the gold set.
* detection precision / recall / F1: the bot answering (grounded in sources) as the prediction of
  a knowledge-seeking turn.
* recall@5 and MRR of the retriever's ranking (document ids, first occurrence) on target turns.
* BLEU: sacrebleu's corpus BLEU / 100; ROUGE-1/2/L: rouge-score F-measure with stemming, averaged
  over target instances; the reply scored is the one the bot sends (a refusal if it hands off).
* decision: on target turns the bot should answer; on non-target turns and on out-of-scope
  questions (``bot/out_of_scope.json``) it should not, asked alone and as the last turn of a
  conversation (``oos_in_conversation``: after a hotel was named, "tell me a joke" is still not
  something to answer from the knowledge base).
* ttft_ms_p50 and tokens_per_s (completion tokens over decode time) of the generator.

Regressions (``run_regressions``, ``supportbot eval --regressions``): the approved fixes of a bot
(``bot/fixes.py`` ``regression_cases``), each asked on its own through the bot's pipeline over its
own knowledge base (where the fixes' curated entries are); a case is right when the decision is
the expected one and the reply holds the fix's answer (``holds_answer``).
"""
from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from bot.components import Components
from bot.core.errors import SupportbotError
from bot.eval_kb import EVAL_BOT, prepare_kb
from bot.generators import build_generator
from bot.generators.base import Generator
from bot.pipeline import TurnPipeline
from bot.policy import ANSWER, CLARIFY, HANDOFF

OUT_OF_SCOPE = Path(__file__).with_name("out_of_scope.json")


@dataclass
class Record:
    """What the bot did on one instance (or one out-of-scope question)."""

    id: str
    target: bool
    gold: list[str]
    ranked: list[str]  # retrieved document ids, best first, deduplicated
    selected: list[str]  # document ids the reply is grounded in (empty unless it answered)
    decision: str
    confidence: float
    direct: bool = False  # replied with an FAQ entry's own answer (no generation)
    reply: str | None = None
    gold_response: str = ""
    ttft_ms: float | None = None
    completion_tokens: int = 0
    decode_s: float = 0.0
    out_of_scope: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def load_dialogues(path: Path, limit: int | None = None) -> list[dict]:
    """Instances from a ``dialogues_*.jsonl`` file; a malformed line is an error naming it."""
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                turns = row["turns"]
                if not turns or turns[-1]["role"] != "user" or not isinstance(turns[-1]["text"], str):
                    raise ValueError("the last turn must be the user's")
                row.setdefault("id", f"{path.name}:{lineno}")
                row["target"] = bool(row.get("target", False))
                row["gold_doc_ids"] = list(row.get("gold_doc_ids") or [])
            except (ValueError, KeyError, TypeError) as exc:
                raise SupportbotError(f"{path}:{lineno}: not a dialogue instance ({exc})") from exc
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise SupportbotError(f"{path}: no dialogue instances")
    return rows


def out_of_scope_questions(path: Path | None = None) -> list[str]:
    data = json.loads(Path(path or OUT_OF_SCOPE).read_text(encoding="utf-8"))
    return list(data["questions"] if isinstance(data, dict) else data)


def oos_in_conversation(instances: Sequence[dict], questions: Sequence[str]) -> list[list[dict]]:
    """Each out-of-scope question asked as the last user turn of a conversation of ``instances``
    (the earlier turns of the i-th of them spread evenly over the file, skipping one-turn
    prefixes): a visitor who names a hotel or an order first and then asks something the
    knowledge base does not answer must not be answered either."""
    longer = [row["turns"][:-1] for row in instances if len(row["turns"]) > 1]
    if not longer:
        return []
    step = max(1, len(longer) // max(1, len(questions)))
    return [list(longer[(i * step) % len(longer)]) + [{"role": "user", "text": q}]
            for i, q in enumerate(questions)]


def selection_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[int, int, int]:
    """(tp, fp, fn) of one instance; duplicate predictions count once, as in the DSTC11 scorer."""
    pred_set, gold_set = list(dict.fromkeys(pred)), set(gold)
    tp = sum(1 for p in pred_set if p in gold_set)
    return tp, len(pred_set) - tp, len(gold_set) - tp


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def reply_scores(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU / 100 (sacrebleu) and mean ROUGE-1/2/L F-measure with stemming (rouge-score)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if not preds:
        return {"bleu": None, "rouge1": None, "rouge2": None, "rougeL": None}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(preds, refs):
        s = scorer.score(ref, pred)
        for key in sums:
            sums[key] += s[key].fmeasure
    out = {k: v / len(preds) for k, v in sums.items()}
    out["bleu"] = sacrebleu.corpus_bleu(list(preds), [list(refs)]).score / 100.0
    return out


def summarize(records: Iterable[Record]) -> dict[str, Any]:
    """The report's figures from per-instance records (see the module docstring)."""
    records = list(records)
    dialog = [r for r in records if not r.out_of_scope]
    targets = [r for r in dialog if r.target]
    non_targets = [r for r in dialog if not r.target]
    oos = [r for r in records if r.out_of_scope and not r.extra.get("in_conversation")]
    oos_conv = [r for r in records if r.out_of_scope and r.extra.get("in_conversation")]

    tp = fp = fn = 0
    exact = counted = 0
    for r in dialog:
        if not r.gold and not r.selected:
            continue
        a, b, c = selection_counts(r.gold, r.selected)
        tp, fp, fn = tp + a, fp + b, fn + c
        exact += int(b == 0 and c == 0)
        counted += 1
    hits5 = 0
    rr = 0.0
    for r in targets:
        gold = set(r.gold)
        hits5 += int(any(d in gold for d in r.ranked[:5]))
        rank = next((i for i, d in enumerate(r.ranked, start=1) if d in gold), None)
        rr += 1.0 / rank if rank else 0.0
    p, rcl, f1 = _prf(tp, fp, fn)
    n = len(targets)

    out: dict[str, Any] = {
        "n": n,
        "n_instances": len(dialog),
        "selection_precision": p,
        "selection_recall": rcl,
        "selection_f1": f1,
        "selection_exact_match": exact / counted if counted else 0.0,
        "selection_instances": counted,
        "recall@5": hits5 / n if n else 0.0,
        "mrr": rr / n if n else 0.0,
    }
    replied = [r for r in targets if r.reply is not None]
    out.update(reply_scores([r.reply for r in replied], [r.gold_response for r in replied]))
    out["n_generated"] = len(replied)
    out["direct_answer_rate"] = sum(r.direct for r in targets) / n if n else 0.0

    # Decisions: answer on target turns; anything but an answer elsewhere.
    correct = sum(r.decision == ANSWER for r in targets) + sum(r.decision != ANSWER for r in non_targets)
    out["decision_accuracy"] = correct / len(dialog) if dialog else 0.0
    out["target_answer_rate"] = sum(r.decision == ANSWER for r in targets) / n if n else 0.0
    answered_targets = sum(r.decision == ANSWER for r in targets)
    answered = answered_targets + sum(r.decision == ANSWER for r in non_targets)
    out["detection_precision"], out["detection_recall"], out["detection_f1"] = _prf(
        answered_targets, answered - answered_targets, n - answered_targets)
    out["non_target_no_answer_rate"] = (
        sum(r.decision != ANSWER for r in non_targets) / len(non_targets) if non_targets else None
    )
    out["out_of_scope_n"] = len(oos)
    out["out_of_scope_no_answer_rate"] = (
        sum(r.decision != ANSWER for r in oos) / len(oos) if oos else None
    )
    out["out_of_scope_handoff_rate"] = sum(r.decision == HANDOFF for r in oos) / len(oos) if oos else None
    out["out_of_scope_conv_n"] = len(oos_conv)
    out["out_of_scope_conv_no_answer_rate"] = (
        sum(r.decision != ANSWER for r in oos_conv) / len(oos_conv) if oos_conv else None
    )

    ttfts = [r.ttft_ms for r in records if r.ttft_ms is not None]
    out["ttft_ms_p50"] = statistics.median(ttfts) if ttfts else None
    tokens = sum(r.completion_tokens for r in records)
    decode = sum(r.decode_s for r in records)
    out["tokens_per_s"] = tokens / decode if decode > 0 else None
    return out


def run_turn(pipeline: TurnPipeline, turns: Sequence[dict], generate: bool,
             max_candidates: int | None = None) -> Record:
    """Run the bot's turn pipeline on one conversation prefix (``turns`` ends with the user's
    message): retrieval, the plan and, with ``generate``, the reply it would send. Nothing is stored."""
    message = turns[-1]["text"]
    context = pipeline.settings.context_turns
    history = [{"role": t["role"], "text": t["text"]} for t in turns[:-1]][-context:] if context else []
    plan = pipeline.plan(message, pipeline.retrieve(message, history), history)
    ranked = list(dict.fromkeys(h.doc_id for h in plan.hits))
    rec = Record(
        id="", target=False, gold=[], ranked=ranked[: max_candidates or len(ranked)],
        selected=[h.doc_id for h in plan.sources], decision=plan.decision.action,
        confidence=plan.decision.confidence, direct=plan.direct,
    )
    if not generate:
        return rec
    if plan.decision.action != ANSWER:
        rec.reply = (pipeline.clarify(plan.hits, plan.topics)[0] if plan.decision.action == CLARIFY
                     else pipeline.handoff_text(plan.decision))
        return rec
    pieces: list[str] = []
    t0 = time.perf_counter()
    t_first = None
    reply = pipeline.reply(plan, message, history)
    for piece in reply:
        if piece and t_first is None:
            t_first = time.perf_counter()
        pieces.append(piece)
    t_end = time.perf_counter()
    rec.reply = "".join(pieces).strip()
    # First-token time and tokens/s measure the model: an FAQ's own answer is not timed.
    if t_first is not None and not rec.direct:
        rec.ttft_ms = (t_first - t0) * 1000.0
        rec.completion_tokens = int(reply.usage.get("completion_tokens") or 0) or int(
            reply.generator.count_tokens(rec.reply))
        # Decode speed excludes the first token (prefill), as bench/generate.py measures it.
        rec.completion_tokens = max(0, rec.completion_tokens - 1)
        rec.decode_s = t_end - t_first
    return rec


def _generator_settings(settings, model: str | None, backend: str | None):
    update: dict[str, Any] = {}
    if model:
        update["model"] = model
    if backend:
        update["backend"] = backend
    return settings.generator.model_copy(update=update) if update else settings.generator


def run_eval(
    settings,
    kb_path: Path,
    dialogues_path: Path,
    model: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    components: Components | None = None,
    *,
    backend: str | None = None,
    generator: Generator | None = None,
    generate: bool = True,
    out_of_scope: bool = True,
    predictions_path: Path | None = None,
) -> dict[str, Any]:
    """Evaluate the bot on ``dialogues_path`` with the knowledge base ``kb_path``.

    The KB is ingested into a scratch data dir cached by content hash (``bot/eval_kb.py``); with
    ``components`` given, into its bot ``eval`` instead (tests pass tiny real parts this way).
    The reply is written by ``generator`` when given, else by the configured generator with
    ``model`` / ``backend`` replaced; ``generate=False`` scores retrieval, selection and decisions
    only (they do not depend on the generator). Returns the report dict.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    kb_path, dialogues_path = Path(kb_path), Path(dialogues_path)
    instances = load_dialogues(dialogues_path, limit)
    if not generate:
        generator = None
    elif generator is None:
        generator = build_generator(_generator_settings(settings, model, backend), settings.data_dir)
    if generator is not None:
        generator.load()
    if components is None:
        parts = {"generator": generator} if generator is not None else {}
        kb = prepare_kb(kb_path, settings, progress=progress, **parts)
        comps, bot, ingest = kb.components, kb.bot, kb.ingest
    else:
        comps, bot = components, EVAL_BOT
        report = comps.knowledge.ingest(bot, [kb_path], progress=progress)
        if report.errors:
            raise SupportbotError(f"{kb_path}: " + "; ".join(report.errors[:5]))
        ingest = {"chunks": report.chunks, "cached": False}
    pipeline = comps.pipeline(bot, generator=generator, with_generator=False, dialogue=settings.dialogue)

    records: list[Record] = []
    for row in tqdm(instances, desc="dialogues", unit="turn", disable=not progress):
        # Generation is scored on knowledge-seeking turns only; the rest need the decision alone.
        r = run_turn(pipeline, row["turns"], generate=generate and row["target"])
        r.id, r.target, r.gold = row["id"], row["target"], row["gold_doc_ids"]
        r.gold_response = row.get("gold_response") or ""
        records.append(r)
    if out_of_scope:
        for i, q in enumerate(out_of_scope_questions()):
            r = run_turn(pipeline, [{"role": "user", "text": q}], generate=False)
            r.id, r.out_of_scope = f"oos-{i}", True
            records.append(r)
        for i, turns in enumerate(oos_in_conversation(instances, out_of_scope_questions())):
            r = run_turn(pipeline, turns, generate=False)
            r.id, r.out_of_scope, r.extra["in_conversation"] = f"oos-conv-{i}", True, True
            records.append(r)

    report = summarize(records)
    report.update(
        {
            "kb": str(kb_path),
            "dialogues": str(dialogues_path),
            "limit": limit,
            "generated": generate,
            "model": generator.model_id if generator is not None else None,
            "backend": (backend or settings.generator.backend) if generate else None,
            "policy": settings.dialogue.model_dump(
                include={"answer_threshold", "clarify_threshold", "candidates", "select_margin",
                         "select_same_entity", "select_min_confidence", "max_sources", "selector",
                         "direct_answer_threshold"}
            ),
            "kb_chunks": ingest.get("chunks"),
            "kb_cached": ingest.get("cached", False),
            "seconds": round(time.perf_counter() - t_start, 1),
        }
    )
    if predictions_path is not None:
        with open(predictions_path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({
                    "id": r.id, "target": r.target, "out_of_scope": r.out_of_scope,
                    "decision": r.decision, "confidence": round(r.confidence, 4),
                    "selected": r.selected, "gold": r.gold, "ranked": r.ranked[:10],
                    "reply": r.reply, "gold_response": r.gold_response, "ttft_ms": r.ttft_ms,
                }, ensure_ascii=False) + "\n")
    return report


# -- regressions (the approved fixes) -----------------------------------------------------------
# A reply holds the fix's answer when it has at least this ROUGE-L recall of it (the answer's words,
# in order, stemmed) and every number the answer states: the answer's own text (a direct reply)
# scores 1.0; a generated paraphrase that keeps the facts scores about 0.5 and up; a reply about
# something else scores well under 0.3.
HOLDS_RECALL = 0.5
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


def holds_answer(reply: str, expected: str) -> tuple[bool, float]:
    """(right, ROUGE-L recall) of ``reply`` against a fix's ``expected`` answer."""
    from rouge_score import rouge_scorer

    reply, expected = reply or "", expected or ""
    if not reply.strip() or not expected.strip():
        return False, 0.0
    recall = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(expected, reply)["rougeL"].recall
    numbers = set(_NUMBER.findall(reply))
    return recall >= HOLDS_RECALL and all(n in numbers for n in _NUMBER.findall(expected)), float(recall)


def load_regressions(path: Path) -> list[dict]:
    """Cases written by ``supportbot fixes export --regressions``; a malformed line names itself."""
    cases = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                case = json.loads(line)
                if not isinstance(case.get("question"), str) or not isinstance(case.get("expected_answer"), str):
                    raise ValueError("needs 'question' and 'expected_answer' strings")
            except (ValueError, AttributeError) as exc:
                raise SupportbotError(f"{path}:{lineno}: not a regression case ({exc})") from exc
            case.setdefault("id", f"{Path(path).name}:{lineno}")
            case.setdefault("expected_decision", ANSWER)
            cases.append(case)
    return cases


def run_regressions(
    settings,
    cases: Sequence[dict],
    components: Components,
    bot: str,
    *,
    model: str | None = None,
    backend: str | None = None,
    generator: Generator | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Ask every case through ``bot``'s pipeline (with ``settings.dialogue``); the reply is written
    by ``generator``, else by the configured generator with ``model`` / ``backend`` replaced (the
    components' own when neither is given). Returns ``{"regressions_n", "regressions_right",
    "regressions": [per case]}``."""
    from tqdm import tqdm

    if generator is None:
        generator = (build_generator(_generator_settings(settings, model, backend), settings.data_dir)
                     if model or backend else components.generator)
    if hasattr(generator, "load"):
        generator.load()
    pipeline = components.pipeline(bot, generator=generator, dialogue=settings.dialogue)
    results = []
    for case in tqdm(list(cases), desc="regressions", unit="case", disable=not progress):
        rec = run_turn(pipeline, [{"role": "user", "text": case["question"]}], generate=True)
        holds, recall = holds_answer(rec.reply or "", case["expected_answer"])
        expected = case.get("expected_decision", ANSWER)
        results.append({"id": case.get("id"), "question": case["question"], "decision": rec.decision,
                        "direct": rec.direct, "reply": rec.reply, "rougeL_recall": round(recall, 4),
                        "right": bool(holds and rec.decision == expected)})
    return {"regressions_n": len(results), "regressions_right": sum(r["right"] for r in results),
            "regressions": results}
