"""Spot check of reply quality on the sample FAQ: what a visitor of the demo site gets.

Ingests ``samples/faq`` into its own bot (``--bot``, in ``--data-dir``) as ``supportbot serve
--demo`` does, asks twelve questions in a visitor's words, each in a fresh conversation, through
the dialogue manager with the default settings (override any with ``SUPPORTBOT_*``), and prints
per question the decision, who wrote the reply (the model, or ``extractive`` for an FAQ's own
answer), time to the end of the reply, its sources and the reply. Then the number of direct
replies. Which replies are right is for the reader: the sample FAQ is short enough to check.

    python bench/sample_faq_answers.py
    SUPPORTBOT_DIALOGUE__DIRECT_ANSWER_THRESHOLD=2 python bench/sample_faq_answers.py   # always generate
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bot  # noqa: E402,F401 - before torch (OpenMP settings)

QUESTIONS = [
    "Can I pay with PayPal?", "Do you price match?", "How long does shipping take?",
    "How do I return a jacket?", "Is a broken zipper covered by the warranty?", "Do you ship to Canada?",
    "How do I reset my password?", "Can I change my order after placing it?", "What is your refund policy?",
    "Do you charge sales tax?", "How much is express shipping?", "Can I cancel my order?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="var")
    ap.add_argument("--bot", default="sample-faq-check")
    args = ap.parse_args()
    from bot.components import Components
    from bot.core.settings import load_settings
    from web.demo import prepare_demo

    settings = load_settings(data_dir=args.data_dir)
    comps = Components(settings)
    prepare_demo(comps, args.bot, ["http://127.0.0.1"])
    dialogue = comps.dialogue(args.bot)
    direct = 0
    for question in QUESTIONS:
        cid = comps.conversations.create(comps.db.bot_id(args.bot), "bench")
        t0 = time.perf_counter()
        meta, text, sources = {}, [], []
        for event in dialogue.respond(cid, question):
            if event.type == "meta":
                meta = event.data
            elif event.type in ("token", "handoff"):
                text.append(event.data.get("text") or event.data.get("message", ""))
            elif event.type == "sources":
                sources = [f"[{s['n']}] {s['title']}" for s in event.data["sources"]]
        direct += meta.get("model") == "extractive" and meta.get("decision") == "answer"
        print(f"### {question}\n{meta.get('decision')} by {meta.get('model') or '-'} in "
              f"{time.perf_counter() - t0:.1f} s; sources: {', '.join(sources) or '-'}\n{''.join(text).strip()}\n",
              flush=True)
    print(f"{direct} of {len(QUESTIONS)} replied with an FAQ's own answer")


if __name__ == "__main__":
    main()
