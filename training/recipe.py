"""Training recipes: one TOML file that says how a shipped generator was made, so one command
(``supportbot train --recipe FILE``) makes it again.

A recipe names its data sources, the LoRA and training hyper-parameters and where the result
goes (``training/recipes/support-lora.toml`` is the shipped adapter's). Paths are relative to
``root``, itself relative to the recipe file (the shipped recipe's ``root = "../.."`` is the
repository root, so it runs from any working directory). Sources, each optional:

* ``[data.dstc11]``: DSTC11 *train* dialogues (``dialogues``) over their knowledge base (``kb``);
  ``sources = "retrieve"`` puts in each prompt what the bot itself retrieves and selects from
  that knowledge base (``gold`` the turn's labelled snippets, ``none`` nothing);
  ``replies = "knowledge"`` learns only each instance's gold reply (the knowledge-grounded turn
  DSTC11 scores; the MultiWOZ booking replies before it stay as context), ``"all"`` (the
  default) every agent turn;
* ``[data.bitext]``: single-turn support requests (``transcripts``) of the named ``intents``, at
  most ``per_intent`` each, replies with ``{{Placeholder}}`` slots left out (``drop_placeholders``);
  ``optional = true`` skips a missing file with a note;
* ``[data.faq]``: grounded replies built from the FAQ corpus the project wrote
  (``bench/faq_corpus``), its ``fit`` companies only: each FAQ entry's question with its answer,
  and each visitor question of ``questions.json`` with the answer of the entry it expects, the
  prompt's sources retrieved and selected by the bot from that company's ingested FAQ.

Evaluation material never trains: a dialogue file whose name says dev, val, valid, test or
eval is refused, and so is any FAQ part but ``fit``. Every example is built with the serving
prompt builder (``training.sft_dataset.build_examples``) and PII-scrubbed; the dataset's
``stats.json`` records the count of each source and the PII replaced.

Retrieval needs the app tier's components; the caller passes ``retriever(kind, files) ->
SourceFn`` (``training/cli.py`` ingests each knowledge base into a scratch data dir once per
content hash).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bot.core.errors import ConfigError, SupportbotError
from bot.core.settings import DialogueSettings, TrainingSettings
from training.importers import Transcript, import_transcripts
from training.pii import PIIScrubber
from training.sft_dataset import SourceFn, build_examples, split_by_conversation, write_dataset

SOURCE_MODES = ("retrieve", "gold", "none")
DSTC11_REPLIES = ("all", "knowledge")
# Dialogue files with these words in their name are evaluation splits, never trained on.
_EVAL_NAME = re.compile(r"(?:^|[^a-z])(dev|val|valid|validation|test|eval|held[-_]?out)(?:[^a-z]|$)", re.I)
_PLACEHOLDER = re.compile(r"\{\{[^}]*\}\}")
# Recipe [lora] / [train] keys -> TrainingSettings fields.
LORA_KEYS = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "lora_target_modules"}
TRAIN_KEYS = ("method", "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio", "max_grad_norm",
              "max_length", "eval_every", "patience", "seed", "max_steps", "weight_decay", "mixed_precision",
              "max_dev_examples", "threads", "log_every", "checkpoint_every", "keep_checkpoints")
TOP_KEYS = {"name", "root", "base", "out", "install", "max_adapter_mb", "seed", "dev_fraction", "data", "lora",
            "train", "evaluate"}

# (kind, files to ingest) -> the sources of each turn's prompt, selected by the bot.
Retriever = Callable[[str, Sequence[Path]], SourceFn]


@dataclass
class Recipe:
    path: Path
    sha256: str
    name: str
    root: Path
    base: str
    out: Path  # training folder: dataset/, model/ (checkpoints, logs)
    install: Path | None  # where the adapter is shipped (None: not installed)
    max_adapter_mb: float
    seed: int
    dev_fraction: float
    data: dict[str, dict[str, Any]]
    lora: dict[str, Any]
    train: dict[str, Any]
    evaluate: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset_dir(self) -> Path:
        return self.out / "dataset"

    @property
    def model_dir(self) -> Path:
        return self.out / "model"


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _path(root: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path string, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe file (clear errors naming the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise SupportbotError(f"{path}: recipe file not found")
    blob = path.read_bytes()
    try:
        raw = tomllib.loads(blob.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    root = (path.parent / raw.get("root", ".")).resolve()
    data = _table(raw, "data", str(path))
    if not data:
        raise ConfigError(f"{path}: [data] names no source (dstc11, bitext, faq)")
    unknown = set(data) - {"dstc11", "bitext", "faq"}
    if unknown:
        raise ConfigError(f"{path}: unknown data source(s) {', '.join(sorted(unknown))}: use dstc11, bitext, faq")
    resolved: dict[str, dict[str, Any]] = {}
    for kind, spec in data.items():
        where = f"{path} [data.{kind}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a table")
        spec = dict(spec)
        mode = spec.setdefault("sources", "none" if kind == "bitext" else "retrieve")
        if mode not in SOURCE_MODES:
            raise ConfigError(f"{where}: sources = {mode!r}: use {', '.join(SOURCE_MODES)}")
        for key in ("dialogues", "kb", "transcripts", "corpus"):
            if key in spec:
                spec[key] = _path(root, spec[key], f"{where} {key}")
        need = {"dstc11": ("dialogues",) + (("kb",) if mode != "none" else ()), "bitext": ("transcripts",),
                "faq": ("corpus",)}[kind]
        for key in need:
            if key not in spec:
                raise ConfigError(f"{where}: {key} is missing")
        if kind == "dstc11" and _EVAL_NAME.search(spec["dialogues"].name):
            raise ConfigError(f"{where}: {spec['dialogues'].name} is an evaluation split; recipes train on "
                              "training splits only")
        if kind == "dstc11" and spec.setdefault("replies", "all") not in DSTC11_REPLIES:
            raise ConfigError(f"{where}: replies = {spec['replies']!r}: use {', '.join(DSTC11_REPLIES)}")
        if kind == "faq":
            parts = spec.setdefault("parts", ["fit"])
            if list(parts) != ["fit"]:
                raise ConfigError(f"{where}: parts = {parts!r}: only the fit part may be trained on "
                                  "(held_out is what the answer benchmark reports)")
            if mode == "gold":
                raise ConfigError(f"{where}: sources = 'gold' has no labels here: use retrieve or none")
        if kind == "bitext" and mode != "none":
            raise ConfigError(f"{where}: bitext has no knowledge base: sources must be 'none'")
        resolved[kind] = spec
    lora = _table(raw, "lora", str(path))
    unknown = set(lora) - set(LORA_KEYS)
    if unknown:
        raise ConfigError(f"{path} [lora]: unknown key(s) {', '.join(sorted(unknown))}")
    train = _table(raw, "train", str(path))
    unknown = set(train) - set(TRAIN_KEYS)
    if unknown:
        raise ConfigError(f"{path} [train]: unknown key(s) {', '.join(sorted(unknown))}")
    evaluate = dict(_table(raw, "evaluate", str(path)))
    for key in ("kb", "dialogues", "corpus"):
        if key in evaluate:
            evaluate[key] = _path(root, evaluate[key], f"{path} [evaluate] {key}")
    name = str(raw.get("name") or path.stem)
    return Recipe(
        path=path.resolve(), sha256=hashlib.sha256(blob).hexdigest(), name=name, root=root,
        base=str(raw.get("base", "default")),
        out=_path(root, raw.get("out", f"var/recipes/{name}"), f"{path} out"),
        install=_path(root, raw["install"], f"{path} install") if raw.get("install") else None,
        max_adapter_mb=float(raw.get("max_adapter_mb", 20)), seed=int(raw.get("seed", 0)),
        dev_fraction=float(raw.get("dev_fraction", 0.05)), data=resolved, lora=lora, train=train,
        evaluate=evaluate,
    )


def check_files(recipe: Recipe) -> list[str]:
    """Raise naming the first missing data file; return notes for optional sources skipped."""
    notes = []
    for kind, spec in list(recipe.data.items()):
        for key in ("dialogues", "kb", "transcripts", "corpus"):
            if key not in spec or (key == "kb" and spec["sources"] == "none"):
                continue
            p = spec[key]
            if (key == "corpus" and not p.is_dir()) or (key != "corpus" and not p.is_file()):
                if spec.get("optional"):
                    notes.append(f"[data.{kind}] skipped: {p} not found")
                    recipe.data.pop(kind)
                    break
                raise SupportbotError(f"recipe {recipe.path.name} [data.{kind}] {key}: {p} not found"
                                      + (" (read ../shared/data/README.md)" if "shared" in str(p) else ""))
    if not recipe.data:
        raise SupportbotError(f"recipe {recipe.path.name}: no data source left to train on")
    return notes


def training_settings(recipe: Recipe, base: TrainingSettings) -> TrainingSettings:
    """``base`` with the recipe's [lora] and [train] values (the adapter is exported unmerged)."""
    update: dict[str, Any] = {LORA_KEYS[k]: v for k, v in recipe.lora.items()}
    update.update(recipe.train)
    update.setdefault("seed", recipe.seed)
    update["merge_lora"] = False
    try:
        return TrainingSettings(**{**base.model_dump(), **update})
    except ValueError as e:
        raise ConfigError(f"{recipe.path}: {e}") from e


# -- the sources ----------------------------------------------------------------------------------
def knowledge_replies_only(transcripts: Sequence[Transcript]) -> list[Transcript]:
    """The DSTC11 instances that end in a knowledge-grounded gold reply (an agent turn with the
    snippets it was grounded in), every earlier agent turn kept as context only (``train: False``).

    Why: a DSTC11 instance is a MultiWOZ booking dialogue whose one scored reply is the last; with
    every agent turn learnt, three of four training replies were booking chatter and the 700
    dialogues of the first adapter held about 350 grounded replies."""
    kept = []
    for tr in transcripts:
        if not tr.turns or tr.turns[-1]["role"] != "agent" or not tr.turns[-1].get("sources"):
            continue
        turns = [dict(t, train=False) if t["role"] == "agent" and i < len(tr.turns) - 1 else t
                 for i, t in enumerate(tr.turns)]
        kept.append(Transcript(tr.id, turns, tr.metadata, group=tr.group))
    return kept


def _bitext(spec: dict, seed: int, limit: int | None, scrubber: PIIScrubber) -> tuple[list[Transcript], Counter]:
    transcripts, report = import_transcripts([spec["transcripts"]], scrubber)
    intents = set(spec.get("intents") or [])
    per_intent = int(spec.get("per_intent", 0) or 0)
    by_intent: dict[str, list[Transcript]] = {}
    for tr in transcripts:
        intent = str(tr.metadata.get("intent", ""))
        if intents and intent not in intents:
            continue
        if spec.get("drop_placeholders", True) and any(_PLACEHOLDER.search(t["text"]) for t in tr.turns):
            continue
        by_intent.setdefault(intent, []).append(tr)
    rng = random.Random(seed)
    kept: list[Transcript] = []
    for intent in sorted(by_intent):
        rows = by_intent[intent]
        rng.shuffle(rows)
        kept.extend(rows[:per_intent] if per_intent else rows)
    return (kept[:limit] if limit else kept), report.pii


def faq_transcripts(sites: Sequence[dict], entries: bool = True) -> list[Transcript]:
    """One-turn transcripts per fit company: each entry's own question with its answer (``entries``)
    and each visitor question with the answer of the entry it expects. Grouped by (company, entry)
    so an entry's paraphrases never straddle the train / dev split. Each site carries its parsed
    ``entries`` (``[(question, answer)]``, read by the caller with the ingest parsers)."""
    out = []
    for site in sites:
        pairs = [(str(q), str(a)) for q, a in site.get("entries", [])]
        answers = {q.strip().lower(): a for q, a in pairs}
        rows: list[tuple[str, str, str]] = []
        if entries:
            rows += [(q, a, q) for q, a in pairs]
        for q in site["questions"]:
            entry = str(q.get("entry") or "").strip().lower()
            if q["kind"] != "out_of_scope" and entry in answers:
                rows.append((q["q"], answers[entry], entry))
        for i, (question, answer, entry) in enumerate(rows):
            group = f"faq:{site['name']}:{hashlib.sha1(entry.lower().encode()).hexdigest()[:10]}"
            out.append(Transcript(id=f"faq:{site['name']}:{i}", group=group, metadata={"source": "faq"},
                                  turns=[{"role": "user", "text": question}, {"role": "agent", "text": answer}]))
    return out


def _scrub(transcripts: Sequence[Transcript], scrubber: PIIScrubber) -> Counter:
    counts: Counter = Counter()
    for tr in transcripts:
        for turn in tr.turns:
            turn["text"], found = scrubber.scrub(turn["text"])
            counts.update(found)
    return counts


def build_recipe_dataset(
    recipe: Recipe,
    dialogue: DialogueSettings,
    scrubber: PIIScrubber,
    retriever: Retriever,
    *,
    count_tokens: Callable[[str], int] | None = None,
    limit: int | None = None,
    faq_sites: Callable[[dict], list[dict]] | None = None,
    progress: bool = False,
    fingerprint: str = "",
) -> dict[str, Any]:
    """Build the recipe's dataset into ``recipe.dataset_dir``; return its stats (``fingerprint``
    recorded in them: ``inputs_fingerprint``).

    ``limit``: at most this many conversations of each source (a quick run). ``faq_sites(spec)``
    lists the FAQ companies (``training.answer_gate.corpus_sites`` over the fit part, Word layouts
    built), each with its parsed FAQ ``entries``: passed in by the app tier, which owns the parsers
    and decides where built files go.
    """
    from tqdm.auto import tqdm

    # (source kind, transcripts, sources mode, the sources of each prompt)
    groups: list[tuple[str, list[Transcript], str, SourceFn | None]] = []
    pii: Counter = Counter()
    imported: dict[str, Any] = {}
    for kind, spec in recipe.data.items():
        mode = spec["sources"]
        if kind == "dstc11":
            transcripts, report = import_transcripts([spec["dialogues"]], scrubber)
            pii.update(report.pii)
            if spec.get("replies") == "knowledge":
                transcripts = knowledge_replies_only(transcripts)
            transcripts = transcripts[:limit] if limit else transcripts
            imported[kind] = report.to_json()
            source_fn = None
            if mode == "gold":
                from training.sft_dataset import GoldSources

                source_fn = GoldSources.from_jsonl(spec["kb"])
            elif mode == "retrieve":
                source_fn = retriever("dstc11", [spec["kb"]])
            groups.append((kind, transcripts, mode, source_fn))
        elif kind == "bitext":
            transcripts, counts = _bitext(spec, recipe.seed, limit, scrubber)
            pii.update(counts)
            groups.append((kind, transcripts, mode, None))
        else:
            if faq_sites is None:
                raise SupportbotError("the faq source needs faq_sites (the corpus's fit companies)")
            sites = faq_sites(spec)
            if not sites:
                raise SupportbotError(f"{spec['corpus']}: no fit company with questions.json")
            left = limit
            for site in sites:  # one knowledge base per company, as each site's bot has its own
                transcripts = faq_transcripts([site], bool(spec.get("entries", True)))
                if left is not None:
                    transcripts, left = transcripts[:left], max(0, left - len(transcripts))
                if not transcripts:
                    continue
                pii.update(_scrub(transcripts, scrubber))
                source_fn = (retriever(f"faq:{site['name']}", [Path(f) for f in site["files"]])
                             if mode == "retrieve" else None)
                groups.append((kind, transcripts, mode, source_fn))

    train, dev = [], []
    counts: dict[str, dict[str, Any]] = {}
    stats: Counter = Counter()
    for kind, transcripts, mode, source_fn in groups:
        examples = list(tqdm(build_examples(transcripts, dialogue, source_fn, count_tokens, stats),
                             desc=f"examples ({kind})", unit="ex", disable=not progress))
        tr_ex, dev_ex = split_by_conversation(examples, recipe.dev_fraction, recipe.seed)
        train += tr_ex
        dev += dev_ex
        c = counts.setdefault(kind, {"conversations": 0, "train_examples": 0, "dev_examples": 0, "sources": mode})
        c["conversations"] += len(transcripts)
        c["train_examples"] += len(tr_ex)
        c["dev_examples"] += len(dev_ex)
    if not train:
        raise SupportbotError(f"recipe {recipe.name}: no training examples")
    info = {
        "recipe": str(recipe.path), "recipe_sha256": recipe.sha256, "sources": {k: v["sources"] for k, v in
                                                                                recipe.data.items()},
        "fingerprint": fingerprint,
        "seed": recipe.seed, "dev_fraction": recipe.dev_fraction, "limit": limit, "pii": dict(pii),
        "import": imported, "builder": dict(stats), "by_source": counts,
        "inputs": [str(spec.get("dialogues") or spec.get("transcripts") or spec.get("corpus"))
                   for spec in recipe.data.values()],
    }
    return write_dataset(recipe.dataset_dir, train, dev, info)


def inputs_fingerprint(recipe: Recipe, limit: int | None, extra: Any = None) -> str:
    """What the dataset is built from: the recipe's bytes, ``limit``, ``extra`` (the prompt and
    embedding settings, the tokenizer) and each data file's size and modification time. Equal
    fingerprints: the dataset already built is reused (a rerun, the other processes of a multi-GPU run)."""
    h = hashlib.sha256(json.dumps([recipe.sha256, limit, extra], sort_keys=True, default=str).encode())
    for spec in recipe.data.values():
        for key in ("dialogues", "kb", "transcripts", "corpus"):
            path = spec.get(key)
            if path is None:
                continue
            for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if p.is_file():
                    st = p.stat()
                    h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


# -- the shipped adapter ----------------------------------------------------------------------------
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "training_card.json", "README.md")


def install_adapter(model_dir: Path, dest: Path, max_mb: float, base_id: str | None = None) -> Path:
    """Copy the adapter (config, weights) and its card from ``model_dir`` into ``dest`` (replaced
    whole, through a temporary folder); refuse one over ``max_mb``. ``base_id`` replaces the base
    path the adapter config records (a path of this machine) with a portable name."""
    import os
    import shutil

    model_dir, dest = Path(model_dir), Path(dest)
    weights = model_dir / "adapter_model.safetensors"
    if not (model_dir / "adapter_config.json").is_file() or not weights.is_file():
        raise SupportbotError(f"{model_dir}: no LoRA adapter to install (train with method = 'lora')")
    size_mb = weights.stat().st_size / 1e6
    if size_mb > max_mb:
        raise SupportbotError(f"{weights}: {size_mb:.1f} MB, over the {max_mb:g} MB an adapter may ship at "
                              "(lower [lora] r or the target modules)")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ADAPTER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, tmp / name)
    if base_id:
        cfg = json.loads((tmp / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = base_id
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
