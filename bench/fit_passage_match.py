"""Fit the FAQ matcher's weights for help centers (``bot/faq_match.py``, ``passages``): P(this
passage answers the visitor's question) where no FAQ entry was retrieved, and its two thresholds.

A help center is prose articles (``bench/faq_corpus/*-help``: folders with no ``expected.json``).
Before this, such a site was decided by the retrieval confidence and the DSTC11 cross-encoder,
which handed off or asked back nearly every question (right 0.019 on the three held-out help
centers, 2026-12-03) although the passage holding the expected fact was the retriever's first hit
for 40 of their 54 answerable questions. Every question of each help center goes through the real
retriever; the features of its first 8 passages are the FAQ matcher's own (``FAQMatcher.features``:
a passage is read as its article's title, its text and its sentences, its rivals being passages
of other articles), labelled right when the passage holds every expected fact. Each answerable
question is asked once more with its right passages removed ("gold removed": training negatives
only, as in ``bench/fit_faq_match.py``). Weights and thresholds come from ``fit_faq_match``'s
``fit_matcher`` (``direct``: the lowest P whose answers are right ``--precision`` of the time on the
fit help centers' questions; ``clarify``: the lowest P where asking back offers the right passage at
least half of the time), fitted on the **fit** help centers only and reported on the held-out
ones, and on each fit help center judged by a fit without it (``fit_faq_match.leave_one_site_out``).

    python bench/fit_passage_match.py              # fit and print the figures
    python bench/fit_passage_match.py --write      # ... and store them in bot/selectors/faq-match.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fit_faq_match as ffm  # noqa: E402
from bot.faq_match import FEATURES, MATCH_FILE, TOP, rival_key  # noqa: E402
from retrieval.types import question_key  # noqa: E402


def help_sites() -> list[dict]:
    """The help centers of ``bench/faq_corpus`` (``answer_quality.sites``' layout "help")."""
    import answer_quality

    built = Path(tempfile.mkdtemp(prefix="help-built-"))
    return [s for s in answer_quality.sites(built) if s.get("layout") == "help"]


def site_groups(sites: list[dict], data_dir: Path) -> list[dict]:
    """One group per question (and per gold-removed question): the features of its first ``TOP``
    passages, which of them hold every expected fact, and the question's row."""
    from bot.components import Components
    from bot.core.settings import Settings

    comps = Components(Settings(data_dir=data_dir))
    matcher = comps.faq_matcher
    if matcher is None:
        raise SystemExit("the bundled FAQ matcher did not load (its embedder is not the retriever's)")
    out = []
    for site in sites:
        bot = re.sub(r"[^a-z0-9-]", "-", site["name"].lower())
        report = comps.knowledge.ingest(bot, [Path(f) for f in site["files"]], progress=False)
        if report.errors:
            raise SystemExit(f"{site['name']}: {report.errors}")
        pipeline = comps.pipeline(bot, with_generator=False)
        for q in site["questions"]:
            hits = pipeline.retrieve(q["q"], [])[:TOP]
            if not hits or any(h.faq_answer for h in hits):
                continue
            facts = [e.lower() for e in q.get("expect", [])]
            answerable = q["kind"] in ("in_scope", "trap")
            right = [bool(answerable and facts and all(f in (h.text or "").lower() for f in facts)) for h in hits]
            row = {"site": site["name"], "part": site["part"], "kind": q["kind"], "q": q["q"]}
            variants = [(hits, right, row)]
            if answerable and any(right) and not all(right):
                rest = [h for h, r in zip(hits, right) if not r]
                variants.append((rest, [False] * len(rest), {**row, "kind": "gold_removed"}))
            for cands, labels, r in variants:
                out.append({"x": matcher.features(q["q"], cands, "passage"), "right": labels, "row": r,
                            "questions": [question_key(rival_key(h, "passage")) for h in cands]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", type=float, default=0.9)
    ap.add_argument("--write", action="store_true", help=f"store the weights in {MATCH_FILE} (passages)")
    args = ap.parse_args()
    sites = help_sites()
    if not any(s["part"] == "fit" for s in sites):
        raise SystemExit("no fit help center in bench/faq_corpus (split.json)")
    groups = site_groups(sites, Path(tempfile.mkdtemp(prefix="passage-match-")))
    fit = [g for g in groups if g["row"]["part"] == "fit"]
    model, th = ffm.fit_matcher(fit, args.precision)
    figures = {part: ffm.report(model, [g for g in groups if g["row"]["part"] == part], th)
               for part in ("fit", "held_out")}
    figures["fit_leave_one_site_out"] = ffm.leave_one_site_out(fit, args.precision)
    result = {"features": FEATURES, "weights": [round(float(w), 4) for w in model.coef_[0]],
              "bias": round(float(model.intercept_[0]), 4), "direct": th["direct"], "clarify": th["clarify"],
              "precision_target": args.precision, "fitted_on": sorted({g["row"]["site"] for g in fit}),
              "fit_questions": len(fit), "fit_pairs": sum(len(g["right"]) for g in fit),
              "fit_positives": int(sum(sum(g["right"]) for g in fit)), "figures": figures}
    print(json.dumps({k: v for k, v in result.items() if k != "figures"}))
    for part, fig in figures.items():
        print(part, json.dumps(fig))
    if args.write:
        meta = json.loads(MATCH_FILE.read_text())
        meta["passages"] = result
        MATCH_FILE.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {MATCH_FILE} (passages)")


if __name__ == "__main__":
    main()
