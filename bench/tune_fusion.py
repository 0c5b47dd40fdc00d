"""Fit the hybrid retriever's fusion model (ranking + confidence) and print how it does.

Data (read from ``../shared/data`` by path):

* ranking, fitted on: StackFAQ dev queries of even-numbered FAQ threads ("half A") and DSTC11
  ``dialogues_train`` knowledge-seeking turns; reported on StackFAQ half B (held out), all of
  StackFAQ dev, and DSTC11 ``dialogues_dev`` (held out);
* confidence (P(top hit is gold)), fitted on: the same in-scope queries (label: top hit gold),
  DSTC11 train turns that need no knowledge (label 0), and out-of-scope queries (label 0): half
  of a sample of Bitext customer-support requests (orders, refunds: not in either knowledge base)
  asked of both bots, and each data set's queries asked of the other bot. Reported (reliability
  by bin, expected calibration error) on the held-out halves, DSTC11 dev (knowledge-seeking and
  not), and ``bot/out_of_scope.json`` (weather, jokes, ...), which is never fitted on. Each
  fitted set weighs the same in total.

Candidates and features come from ``HybridRetriever.candidates``, the code that serves, over
knowledge bases ingested by the real path (``bot.eval_kb.prepare_kb``). Embeddings are
cached by text under ``--cache`` so reruns take seconds.

    nice python bench/tune_fusion.py [--data ../shared/data] [--write retrieval/fusion.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bot.core.settings import Settings  # noqa: E402
from retrieval.embedder import build_embedder  # noqa: E402
from bot.eval_kb import prepare_kb  # noqa: E402
from retrieval.evaluate import rank_metrics  # noqa: E402
from retrieval.fusion import FEATURES, QUERY_FEATURES, FusionModel  # noqa: E402
from retrieval.hybrid import HybridRetriever  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class CachingEmbedder:
    """Wraps an embedder with a persistent text -> vector cache (NumPy files, one per model)."""

    def __init__(self, inner, directory: Path):
        self.inner = inner
        self.dim = inner.dim
        self.model_id = inner.model_id
        directory.mkdir(parents=True, exist_ok=True)
        stem = directory / f"emb-{hashlib.sha1(self.model_id.encode()).hexdigest()[:12]}"
        self.texts_path, self.vecs_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
        self.vecs: dict[str, np.ndarray] = {}
        if self.texts_path.is_file() and self.vecs_path.is_file():
            texts = json.loads(self.texts_path.read_text())
            vecs = np.load(self.vecs_path, allow_pickle=False)
            if len(texts) == len(vecs):
                self.vecs = dict(zip(texts, vecs))
        self.dirty = False

    def embed(self, texts):
        missing = list(dict.fromkeys(t for t in texts if t not in self.vecs))
        if missing:
            for t, v in zip(missing, self.inner.embed(missing)):
                self.vecs[t] = v
            self.dirty = True
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.vstack([self.vecs[t] for t in texts]).astype(np.float32)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    def save(self):
        if self.dirty:
            texts = list(self.vecs)
            tmp = self.vecs_path.with_name("tmp-" + self.vecs_path.name)
            np.save(tmp, np.vstack([self.vecs[t] for t in texts]))
            os.replace(tmp, self.vecs_path)
            tmp = self.texts_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(texts))
            os.replace(tmp, self.texts_path)
            self.dirty = False


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def zero_model() -> FusionModel:
    return FusionModel(np.zeros(len(FEATURES), np.float32), 0.0, np.zeros(len(QUERY_FEATURES)), 0.0)


def collect(retriever: HybridRetriever, queries: list[dict], desc: str, embedder: CachingEmbedder) -> list[dict]:
    """Candidates, features and gold labels of each query (``{"query", "turns", "gold"}``)."""
    out = []
    catalog = retriever.view().snapshot.catalog
    # Embed all texts in batches first (the retriever then finds them in the cache).
    texts = [q["query"] for q in queries] + [t["text"] for q in queries for t in q["turns"]]
    embedder.embed(list(dict.fromkeys(texts)))
    for q in tqdm(queries, desc=desc, unit="q", leave=False):
        c = retriever.candidates(q["query"], None, q["turns"])
        y = np.array([catalog[int(i)].doc_id in q["gold"] for i in c.ids], dtype=bool)
        out.append({"X": c.X, "y": y})
    embedder.save()
    return out


def ranks(items: list[dict], model: FusionModel) -> list[int | None]:
    out = []
    for it in items:
        if not len(it["y"]):
            out.append(None)
            continue
        order = np.argsort(-model.score(it["X"]), kind="stable")
        pos = np.flatnonzero(it["y"][order])
        out.append(int(pos[0]) if len(pos) else None)
    return out


def fit_ranking(sets: list[list[dict]], C: float) -> tuple[np.ndarray, float]:
    """Pointwise logistic regression over candidates; each set weighs the same in total."""
    Xs, ys, ws = [], [], []
    for items in sets:
        usable = [it for it in items if it["y"].any()]
        for it in usable:
            Xs.append(it["X"])
            ys.append(it["y"])
            ws.append(np.full(len(it["y"]), 1.0 / len(usable)))
    X, y, w = np.vstack(Xs), np.concatenate(ys), np.concatenate(ws)
    m = LogisticRegression(C=C, max_iter=5000).fit(X, y, sample_weight=w * len(w) / w.sum())
    return m.coef_[0].astype(np.float32), float(m.intercept_[0])


def query_rows(items: list[dict], model: FusionModel, in_scope: bool) -> tuple[np.ndarray, np.ndarray]:
    """Query-level features of the top candidate, and the label (top is gold; 0 out of scope)."""
    F, y = [], []
    for it in items:
        if not len(it["X"]):
            continue
        top = int(np.argmax(model.score(it["X"])))
        F.append(model.query_features(it["X"][top]))
        y.append(bool(in_scope and it["y"][top]))
    return np.asarray(F), np.asarray(y, dtype=bool)


def confidences(items: list[dict], model: FusionModel, in_scope: bool) -> tuple[np.ndarray, np.ndarray]:
    F, y = query_rows(items, model, in_scope)
    z = F @ model.conf_weights + model.conf_bias
    return 1 / (1 + np.exp(-z)), y


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error and a reliability table (bins of predicted confidence)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            table.append([f"{edges[b]:.1f}-{edges[b + 1]:.1f}", int(m.sum()), round(float(p[m].mean()), 3), round(float(y[m].mean()), 3)])
            ece += m.sum() / len(p) * abs(p[m].mean() - y[m].mean())
    return {"n": len(p), "mean_conf": round(float(p.mean()), 3), "accuracy": round(float(y.mean()), 3), "ece": round(float(ece), 4), "bins [range, n, mean conf, frac gold]": table}


def compare_analyzers(retr: dict, sf: list[dict], ds: list[dict]) -> dict:
    """BM25 alone with each analyzer: StackFAQ recall@1 over everything, DSTC11 recall@5 within
    the conversation's entity (how the retriever uses BM25 there)."""
    from retrieval.bm25_index import Analyzer, BM25Index

    out = {}
    for stem, stop in (("english", True), ("english", False), ("", True), ("", False)):
        row = {}
        for name, queries, k in (("stackfaq", sf, 1), ("dstc11", ds, 5)):
            view = retr[name].view()
            cat = view.snapshot.catalog
            ids = list(cat)
            index = BM25Index(Analyzer(stem, stop)).build(ids, [f"{cat[i].title}\n{cat[i].text}" for i in ids])
            found = []
            for q in queries:
                ent = view.matcher.current([t["text"] for t in q["turns"]] + [q["query"]]) if view.matcher else ()
                allowed = np.concatenate([view.entity_ids[e] for e in ent]) if ent else None
                _, top = index.search(q["query"], k, allowed_ids=allowed)
                found.append(any(cat[int(i)].doc_id in q["gold"] for i in top))
            row[f"{name} recall@{k}"] = round(float(np.mean(found)), 4)
        out[f"stemmer={stem or 'none'} stopwords={stop}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "tune")
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the ranking model")
    ap.add_argument("--bitext", type=int, default=600, help="out-of-scope Bitext requests to sample")
    ap.add_argument("--write", type=Path, default=None, help="write the fitted model here (retrieval/fusion.json)")
    ap.add_argument("--analyzers", action="store_true", help="also compare BM25 analyzers (stemming, stopwords)")
    args = ap.parse_args()
    t_start = time.time()

    settings = Settings(data_dir=args.cache / "var")
    embedder = CachingEmbedder(build_embedder(settings.embedder).load(), args.cache)
    kbs = {name: prepare_kb(args.data / name / "kb.jsonl", settings, progress=True, embedder=embedder)
           for name in ("stackfaq", "dstc11")}
    embedder.save()
    retr = {name: HybridRetriever(embedder, kb.components.live(kb.bot).get, settings.retrieval, model=zero_model())
            for name, kb in kbs.items()}

    # ---- query sets ----
    sf = [{"query": q["query"], "turns": [], "gold": set(q["gold_doc_ids"]),
           "thread": int(q["gold_doc_ids"][0].split(":")[1])} for q in read_jsonl(args.data / "stackfaq/queries_dev.jsonl")]
    sf_a = [q for q in sf if q["thread"] % 2 == 0]
    sf_b = [q for q in sf if q["thread"] % 2 == 1]

    def dialogues(split: str, target: bool) -> list[dict]:
        return [{"query": d["turns"][-1]["text"], "turns": d["turns"][:-1], "gold": set(d.get("gold_doc_ids", []))}
                for d in read_jsonl(args.data / f"dstc11/dialogues_{split}.jsonl") if bool(d["target"]) == target]

    ds_train, ds_dev = dialogues("train", True), dialogues("dev", True)
    ds_train_off, ds_dev_off = dialogues("train", False), dialogues("dev", False)
    rng = np.random.default_rng(0)
    bitext = read_jsonl(args.data / "bitext/transcripts_train.jsonl")
    pick = rng.choice(len(bitext), size=min(args.bitext, len(bitext)), replace=False)
    oos = [{"query": bitext[i]["turns"][0]["text"], "turns": [], "gold": set()} for i in pick]
    oos_a, oos_b = oos[::2], oos[1::2]
    held_oos = [{"query": q, "turns": [], "gold": set()}
                for q in json.loads((REPO / "bot/out_of_scope.json").read_text())["questions"]]

    def c(name, qs, label):
        return collect(retr[name], qs, label, embedder)

    data = {
        "sf_a": c("stackfaq", sf_a, "stackfaq A"), "sf_b": c("stackfaq", sf_b, "stackfaq B"),
        "ds_train": c("dstc11", ds_train, "dstc11 train"), "ds_dev": c("dstc11", ds_dev, "dstc11 dev"),
        "ds_train_off": c("dstc11", ds_train_off, "dstc11 train off-task"),
        "ds_dev_off": c("dstc11", ds_dev_off, "dstc11 dev off-task"),
        "oos_a@sf": c("stackfaq", oos_a, "bitext A @stackfaq"), "oos_a@ds": c("dstc11", oos_a, "bitext A @dstc11"),
        "oos_b@sf": c("stackfaq", oos_b, "bitext B @stackfaq"), "oos_b@ds": c("dstc11", oos_b, "bitext B @dstc11"),
        "sf_a@ds": c("dstc11", sf_a, "stackfaq A @dstc11"), "ds_train@sf": c("stackfaq", ds_train, "dstc11 train @stackfaq"),
        "sf_b@ds": c("dstc11", sf_b, "stackfaq B @dstc11"), "ds_dev@sf": c("stackfaq", ds_dev, "dstc11 dev @stackfaq"),
        "held_oos@sf": c("stackfaq", held_oos, "out_of_scope.json @stackfaq"),
        "held_oos@ds": c("dstc11", held_oos, "out_of_scope.json @dstc11"),
    }

    # ---- ranking ----
    w, b = fit_ranking([data["sf_a"], data["ds_train"]], args.C)
    model = FusionModel(w, b, np.zeros(len(QUERY_FEATURES)), 0.0)

    # Ablation: refit without each feature (its column zeroed), held-out figures.
    ablation = {}
    for f in ("none",) + FEATURES:
        keep = np.array([g != f for g in FEATURES], dtype=np.float32)
        masked = [[{**it, "X": it["X"] * keep} for it in data[n]] for n in ("sf_a", "ds_train")]
        wf, bf = fit_ranking(masked, args.C)
        mf = FusionModel(wf * keep, bf, np.zeros(len(QUERY_FEATURES)), 0.0)
        ablation[f"without {f}" if f != "none" else "all features"] = {
            "StackFAQ B recall@1": rank_metrics(ranks(data["sf_b"], mf))["recall@1"],
            "DSTC11 dev recall@1": rank_metrics(ranks(data["ds_dev"], mf))["recall@1"],
            "DSTC11 dev recall@5": rank_metrics(ranks(data["ds_dev"], mf))["recall@5"],
        }

    # ---- confidence ----
    fit_sets = [("sf_a", True), ("ds_train", True), ("ds_train_off", False), ("oos_a@sf", False),
                ("oos_a@ds", False), ("sf_a@ds", False), ("ds_train@sf", False)]
    # Each set weighs the same in total: the mix of in-scope and out-of-scope traffic a bot
    # sees is unknown, and this keeps 300 StackFAQ queries from being drowned by 1,300 off-task turns.
    F, Y, W = [], [], []
    for name, in_scope in fit_sets:
        f, y = query_rows(data[name], model, in_scope)
        F.append(f)
        Y.append(y)
        W.append(np.full(len(y), 1.0 / len(y)))
    w_all = np.concatenate(W)
    cal = LogisticRegression(C=10.0, max_iter=5000).fit(
        np.vstack(F), np.concatenate(Y), sample_weight=w_all * len(w_all) / w_all.sum())
    model.conf_weights = cal.coef_[0].astype(np.float64)
    model.conf_bias = float(cal.intercept_[0])

    # ---- report ----
    def dense_only(items):  # the same candidates ranked by dense cosine alone
        return ranks(items, FusionModel(np.eye(len(FEATURES))[FEATURES.index("dense")].astype(np.float32), 0.0,
                                        model.conf_weights, model.conf_bias))

    def bm25_only(items):
        return ranks(items, FusionModel(np.eye(len(FEATURES))[FEATURES.index("lexical")].astype(np.float32), 0.0,
                                        model.conf_weights, model.conf_bias))

    report: dict = {"ranking (recall of any gold in top k)": {}, "ablation (held out)": ablation, "calibration": {}}
    for name, what in [("sf_a", "StackFAQ dev half A (fitted on)"), ("sf_b", "StackFAQ dev half B (held out)"),
                       ("ds_train", "DSTC11 train (fitted on)"), ("ds_dev", "DSTC11 dev (held out)")]:
        report["ranking (recall of any gold in top k)"][what] = {
            "hybrid": rank_metrics(ranks(data[name], model)),
            "dense, same candidates": rank_metrics(dense_only(data[name])),
            "bm25, same candidates": rank_metrics(bm25_only(data[name])),
        }
    both = data["sf_a"] + data["sf_b"]
    report["ranking (recall of any gold in top k)"]["StackFAQ dev, all"] = {"hybrid": rank_metrics(ranks(both, model))}

    def cal_of(parts):
        ps, ys = zip(*(confidences(data[n], model, s) for n, s in parts))
        return calibration(np.concatenate(ps), np.concatenate(ys))

    report["calibration"] = {
        "fitted on (all fit sets)": cal_of(fit_sets),
        "held out: StackFAQ half B": cal_of([("sf_b", True)]),
        "held out: DSTC11 dev knowledge turns": cal_of([("ds_dev", True)]),
        "held out: DSTC11 dev turns needing no knowledge": cal_of([("ds_dev_off", False)]),
        "held out: Bitext half B (out of scope), both bots": cal_of([("oos_b@sf", False), ("oos_b@ds", False)]),
        "held out: other bot's queries (StackFAQ B @dstc11, DSTC11 dev @stackfaq)": cal_of([("sf_b@ds", False), ("ds_dev@sf", False)]),
        "held out: bot/out_of_scope.json, both bots": cal_of([("held_oos@sf", False), ("held_oos@ds", False)]),
        "held out: all of the above": cal_of([("sf_b", True), ("ds_dev", True), ("ds_dev_off", False), ("oos_b@sf", False),
                                              ("oos_b@ds", False), ("sf_b@ds", False), ("ds_dev@sf", False),
                                              ("held_oos@sf", False), ("held_oos@ds", False)]),
    }
    model.meta = {
        "fitted_by": "bench/tune_fusion.py",
        "fitted_on": "ranking: StackFAQ dev even threads + DSTC11 dialogues_train; confidence: the same plus "
                     "DSTC11 train off-task turns, Bitext requests (half), cross-bot queries",
        "embedder": embedder.model_id,
        "C": args.C,
        "held_out": {
            "stackfaq_half_b_recall@1": report["ranking (recall of any gold in top k)"]["StackFAQ dev half B (held out)"]["hybrid"]["recall@1"],
            "dstc11_dev_recall@5": report["ranking (recall of any gold in top k)"]["DSTC11 dev (held out)"]["hybrid"]["recall@5"],
            "ece_all_held_out": report["calibration"]["held out: all of the above"]["ece"],
        },
    }
    report["model"] = {"weights": dict(zip(FEATURES, np.round(model.weights, 3).tolist())), "bias": round(model.bias, 3),
                       "conf_weights": dict(zip(QUERY_FEATURES, np.round(model.conf_weights, 3).tolist())),
                       "conf_bias": round(model.conf_bias, 3)}
    if args.analyzers:
        report["bm25 analyzers (BM25 alone, dev data)"] = compare_analyzers(retr, sf, ds_dev)
    report["seconds"] = round(time.time() - t_start, 1)
    print(json.dumps(report, indent=1))
    if args.write:
        model.save(args.write)
        print(f"wrote {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
