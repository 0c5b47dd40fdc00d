"""Fit ``dialogue.entity_alone_floor``: in a knowledge base of entities, a message whose top hit,
retrieved alone (without the conversation), has a confidence below the floor is not answered.

Asked as the last turn of a DSTC11 dev conversation (``supportbot eval``'s mid-conversation rows,
``bot/evaluate.py`` ``oos_in_conversation``), "How do I reverse a linked list in Python?" was
answered with a hotel review for 37 of 60 such questions: once a hotel is named, retrieval is
confident of that hotel's passages whatever the question, the detector flags most questions, and
the support cross-encoder grounds every flagged turn in its best passage (its entity profile's
``ground_threshold`` is 0). The same message retrieved alone matches nothing.

Fitted on DSTC11 *train*: the dialogues the support cross-encoder held out for tuning (its 15%
split, ``bench/train_support_selector.py``, seed 0), their turns as they are, and each question of
``bench/oos_fit_questions.json`` (written for this, apart from ``bot/out_of_scope.json``, which
``supportbot eval`` reports on) asked as the last turn of one of those conversations. Each turn
goes through the real pipeline once with the floor off; a turn answered from sources is still
answered at floor ``f`` when its message alone has a top-hit confidence >= ``f``. Chosen: the
highest ``f`` of the grid that loses at most ``--knowledge-lost`` of the knowledge turns. Also
printed, as the alternative tried: a floor on the cross-encoder's P of its best passage
(``ground_threshold``), which costs knowledge turns long before it stops the out-of-scope ones.

    python bench/calibrate_entity_ground.py            # prints both curves and the choice (~6 min)
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tqdm import tqdm  # noqa: E402

from bot.core.settings import load_settings  # noqa: E402
from bot.eval_kb import prepare_kb  # noqa: E402
from bot.evaluate import load_dialogues, oos_in_conversation  # noqa: E402
from bot.policy import ANSWER  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "dstc11"
GROUND_GRID = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
ALONE_GRID = [0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075]


def tune_dialogues(rows: list[dict], seed: int = 0) -> set[str]:
    """The 15% of train dialogues the support cross-encoder tuned on (its split)."""
    dialogues = sorted({r.get("dialogue") or r["id"] for r in rows})
    random.Random(seed).shuffle(dialogues)
    return set(dialogues[: max(1, int(0.15 * len(dialogues)))])


def outcomes(pipeline, conversations: list[list[dict]]) -> list[tuple[bool, float, float]]:
    """(answered from sources with the floor off, P of the best selected passage, top-hit confidence
    of the message retrieved alone) per conversation."""
    last: dict = {}
    select = pipeline.select

    def recording(message, hits, turns=()):
        last["s"] = select(message, hits, turns)
        return last["s"]

    pipeline.select = recording
    context = pipeline.settings.context_turns
    out = []
    for turns in tqdm(conversations, unit="turn", mininterval=10):
        message = turns[-1]["text"]
        history = [{"role": t["role"], "text": t["text"]} for t in turns[:-1]][-context:] if context else []
        last.clear()
        plan = pipeline.plan(message, pipeline.retrieve(message, history), history)
        s = last.get("s")
        best = max(s.scores) if s is not None and s.scores else 0.0
        alone = pipeline.retriever.search(message, k=1)
        out.append((plan.decision.action == ANSWER and bool(plan.sources) and not plan.direct, float(best),
                    float(alone[0].confidence) if alone else 0.0))
    pipeline.select = select
    return out


def curve(knowledge, other, oos, grid, column: int) -> list[dict]:
    """Detection figures and out-of-scope answers when turns below ``t`` in ``column`` (1: best P,
    2: alone confidence) are not answered."""
    def share(items, t):
        return sum(o[0] and o[column] >= t for o in items) / len(items)

    rows = []
    for t in grid:
        tp, fp = share(knowledge, t) * len(knowledge), share(other, t) * len(other)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / len(knowledge)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"floor": t, "knowledge_answered": round(recall, 4), "detection_f1": round(f1, 4),
                     "other_answered": round(share(other, t), 4), "oos_conv_answered": round(share(oos, t), 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knowledge-lost", type=float, default=0.005,
                    help="most of the answered knowledge turns the floor may lose")
    args = ap.parse_args()
    settings = load_settings()
    settings = settings.model_copy(update={"dialogue": settings.dialogue.model_copy(update={"entity_alone_floor": 0.0})})
    kb = prepare_kb(DATA / "kb.jsonl", settings, progress=False)
    pipeline = kb.components.pipeline(kb.bot, generator=None, with_generator=False, dialogue=settings.dialogue)
    rows = load_dialogues(DATA / "dialogues_train.jsonl")
    tune = tune_dialogues(rows)
    tune_rows = [r for r in rows if (r.get("dialogue") or r["id"]) in tune]
    questions = json.loads((REPO / "bench" / "oos_fit_questions.json").read_text())["questions"]
    knowledge = outcomes(pipeline, [r["turns"] for r in tune_rows if r["target"]])
    other = outcomes(pipeline, [r["turns"] for r in tune_rows if not r["target"]])
    oos = outcomes(pipeline, oos_in_conversation(tune_rows, questions))
    print(f"tune dialogues: {len(tune)}, knowledge turns {len(knowledge)}, other turns {len(other)}, "
          f"out-of-scope questions asked mid-conversation {len(oos)}")
    print("floor on the best passage's P (ground_threshold; tried, not adopted):")
    for row in curve(knowledge, other, oos, GROUND_GRID, 1):
        print("  ", json.dumps(row))
    print("floor on the message's confidence retrieved alone (entity_alone_floor):")
    alone = curve(knowledge, other, oos, ALONE_GRID, 2)
    for row in alone:
        print("  ", json.dumps(row))
    base = alone[0]["knowledge_answered"]
    chosen = [r for r in alone if base - r["knowledge_answered"] <= args.knowledge_lost][-1]
    print(f"chosen entity_alone_floor {chosen['floor']} (bot/core/settings.py): {json.dumps(chosen)}")


if __name__ == "__main__":
    main()
