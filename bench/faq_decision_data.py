"""Features of the FAQ-answer decision, per question of ``bench/faq_corpus`` (and the sample FAQ).

For every question: the retriever's hits (the pipeline's own ``retrieve``), the rank of the
question's expected FAQ entry among them (None for out-of-scope questions and for misses), and
per FAQ hit of the first ``--top``: its fused score, its cosine with the question (the question
side, the whole entry and the closest answer sentence), and the logit of each bundled
cross-encoder on the (question, entry) pair. Questions are each company's ``questions.json`` (the
answer benchmark's) and, where there is one, its ``paraphrases.json`` (more written visitor
questions: three per entry and near-miss out-of-scope ones; the fit companies have them), and
StackFAQ dev. Written as JSON lines for ``bench/fit_faq_match.py``.

    nice python bench/faq_decision_data.py --top 8 --out var/bench/faq_decision.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from tqdm import tqdm  # noqa: E402

from answer_quality import CORPUS, build_generated_files, norm, sites  # noqa: E402
from bot.components import Components  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from bot.cross_selector import BUNDLED_CROSS, CrossSelector, pair_text  # noqa: E402
from bot.faq_match import answer_sentences, entry_cosines  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "faq_decision.jsonl")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--cross", default="support")
    ap.add_argument("--stackfaq", type=Path, default=REPO.parent / "shared" / "data" / "stackfaq",
                    help="also StackFAQ dev (its threads split as the cross-encoder's selector.json says)")
    ap.add_argument("--no-paraphrases", dest="paraphrases", action="store_false",
                    help="only the benchmark's questions.json (not the companies' paraphrases.json)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faqdec-", dir=REPO / "var"))
    build_generated_files(work)
    settings = Settings(data_dir=work / "data")
    comps = Components(settings)
    embedder = comps.embedder
    crosses = {name: CrossSelector.load(BUNDLED_CROSS[name], embedder=embedder)
               for name in args.cross.split(",") if name and BUNDLED_CROSS[name].is_dir()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        for site in sites(work):
            bot = re.sub(r"[^a-z0-9-]", "-", site["name"].lower())
            report = comps.knowledge.ingest(bot, [Path(f) for f in site["files"]], progress=False)
            if report.errors:
                raise SystemExit(f"{site['name']}: {report.errors}")
            pipeline = comps.pipeline(bot)
            questions = [{**q, "source": "benchmark"} for q in site["questions"]]
            extra = CORPUS / site["name"] / "paraphrases.json"
            if args.paraphrases and extra.is_file():  # more written questions (bench/faq_corpus/README.md)
                questions += [{**q, "source": "paraphrase"} for q in json.loads(extra.read_text())["questions"]]
            for q in tqdm(questions, desc=site["name"], unit="q"):
                hits = pipeline.retrieve(q["q"], [])
                want = norm(q.get("entry", "")) if q["kind"] != "out_of_scope" else None
                rank = next((i for i, h in enumerate(hits) if want and norm(h.question or h.title or "") == want), None)
                row = features(q["q"], hits, rank, site["name"], site["part"], q["kind"], embedder, crosses, args.top)
                fh.write(json.dumps({**row, "source": q["source"]}) + "\n")
        if args.stackfaq.is_dir():
            stackfaq(args, settings, embedder, crosses, fh)


def stackfaq(args, settings, embedder, crosses, fh) -> None:
    from bot.eval_kb import prepare_kb

    # The threads the cross-encoders never fitted on (support-minilm-cross's split, also when no
    # cross-encoder's logits are asked for).
    held = set(json.loads((BUNDLED_CROSS["support"] / "selector.json").read_text())["held_out"]["stackfaq_threads"])
    for cs in crosses.values():
        held |= set(cs.meta.get("held_out", {}).get("stackfaq_threads", []))
    kb = prepare_kb(args.stackfaq / "kb.jsonl", settings, progress=True)
    pipeline = kb.components.pipeline(kb.bot)
    for line in tqdm(open(args.stackfaq / "queries_dev.jsonl"), desc="stackfaq", unit="q"):
        item = json.loads(line)
        gold = set(item["gold_doc_ids"])
        thread = int(next(iter(gold)).split(":")[1])
        hits = pipeline.retrieve(item["query"], [])
        rank = next((i for i, h in enumerate(hits) if h.doc_id in gold), None)
        row = features(item["query"], hits, rank, f"stackfaq:{thread}",
                       "stackfaq_held" if thread in held else "stackfaq_fit", "in_scope", embedder, crosses, args.top)
        for f, h in zip(row["faq"], [h for h in hits if h.faq_answer][: args.top]):
            f["right"] = h.doc_id in gold
        fh.write(json.dumps(row) + "\n")


def tuned_cosines(rows: list[dict], adapter: Path) -> None:
    """Add ``ft_q``, ``ft_t``, ``ft_s`` to every FAQ hit of ``rows``: the cosines ``cos_q``,
    ``cos_t``, ``cos_s`` are of, by the stock embedder with the LoRA adapter ``adapter`` merged.
    ``bench/train_faq_embedder.py`` calls it, each fit company's rows with the adapter that never
    saw that company (the matcher's thresholds are fitted on those)."""
    from bot.core.settings import EmbedderSettings
    from retrieval.embedder import SentenceTransformerEmbedder

    tuned = SentenceTransformerEmbedder(EmbedderSettings(), adapter=adapter).load()
    rows = [r for r in rows if r["faq"]]
    sentences = [[answer_sentences(f["answer"]) for f in r["faq"]] for r in rows]
    texts = {t for r, ss in zip(rows, sentences)  # every distinct text once (entries recur across questions)
             for t in [r["q"]] + [f["question"] or f["text"] for f in r["faq"]] + [f["text"] for f in r["faq"]]
             + [x for s_ in ss for x in s_]}
    order = sorted(texts, key=len)  # similar lengths batched together
    vec = dict(zip(order, tuned.embed(order)))
    for r, ss in zip(rows, sentences):
        ft_q, ft_t, ft_s = entry_cosines(vec[r["q"]], [f["question"] or f["text"] for f in r["faq"]],
                                         [f["text"] for f in r["faq"]], ss, lambda ts: [vec[t] for t in ts])
        for j, f in enumerate(r["faq"]):
            f["ft_q"], f["ft_t"], f["ft_s"] = float(ft_q[j]), float(ft_t[j]), ft_s[j]


def features(message, hits, rank, site, part, kind, embedder, crosses, top) -> dict:
    """One question's row: its hits' rank of the expected entry and per FAQ hit its features."""
    faq = [h for h in hits if h.faq_answer][:top]
    feats = []
    if faq:
        sentences = [answer_sentences(h.faq_answer) for h in faq]
        cos_q, cos_t, cos_s = entry_cosines(embedder.embed([message])[0], [h.question or h.text for h in faq],
                                            [h.text for h in faq], sentences, embedder.embed)
        logits = {name: cs.logits(message, [pair_text(h, 0) for h in faq]).tolist() for name, cs in crosses.items()}
        for j, h in enumerate(faq):
            feats.append({"rank": hits.index(h), "right": rank is not None and hits.index(h) == rank,
                          "question": h.question, "doc_id": h.doc_id, "answer": h.faq_answer,
                          "text": h.text,  # what cos_t compares the message with
                          "pair": pair_text(h, 0),  # the passage side the cross-encoders read
                          "score": float(h.score), "cos_q": float(cos_q[j]), "cos_t": float(cos_t[j]),
                          "cos_s": cos_s[j],
                          **{f"x_{n}": logits[n][j] for n in logits}})
    return {"site": site, "part": part, "kind": kind, "q": message, "rank": rank, "n_hits": len(hits),
            "confidence": float(hits[0].confidence) if hits else 0.0,
            "top_is_faq": bool(hits and hits[0].faq_answer), "faq": feats}


if __name__ == "__main__":
    main()
