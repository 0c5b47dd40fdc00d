"""Training commands: import-transcripts, build-dataset, train, promote, models."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import click

from bot.cli_context import components
from bot.core.errors import ConfigError, SupportbotError


def _pii_options(f):
    f = click.option("--pii-pattern", "pii_patterns", multiple=True, metavar="NAME=REGEX",
                     help="Extra PII pattern scrubbed to [NAME] (repeatable), e.g. order_id='ORD-\\d{6}'.")(f)
    f = click.option("--phone-region", "phone_regions", multiple=True, metavar="CC",
                     help="Country whose national phone formats are scrubbed (repeatable; default from settings).")(f)
    return f


def _import_options(f):
    f = click.option("--from-store", is_flag=True,
                     help="Also read the bot's resolved conversations from the dialogue store.")(f)
    f = click.option("--skip-invalid", is_flag=True, help="Skip invalid records instead of failing.")(f)
    f = click.option("--csv-columns", default="conversation_id,role,text,timestamp", show_default=True,
                     help="CSV column names: conversation,role,text[,timestamp].")(f)
    return _pii_options(f)


def _scrubber(settings, pii_patterns, phone_regions):
    from training.pii import PIIScrubber

    patterns = dict(settings.training.pii_patterns)
    for item in pii_patterns:
        name, sep, rx = item.partition("=")
        if not sep:
            raise ConfigError(f"--pii-pattern {item!r}: use NAME=REGEX")
        patterns[name.strip()] = rx
    return PIIScrubber(patterns, phone_regions or settings.training.phone_regions)


def _import(ctx, sources, from_store, skip_invalid, csv_columns, pii_patterns, phone_regions):
    from training.importers import CsvColumns, import_transcripts

    settings = ctx.obj["settings"]
    names = [c.strip() for c in csv_columns.split(",")]
    if len(names) not in (3, 4) or not all(names):
        raise ConfigError(f"--csv-columns {csv_columns!r}: give conversation,role,text[,timestamp]")
    cols = CsvColumns(*names)
    if not sources and not from_store:
        raise SupportbotError("give transcript files, --from-store, or both")
    db = None
    if from_store:
        db = components(ctx).db
    transcripts, report = import_transcripts(
        sources, _scrubber(settings, pii_patterns, phone_regions), csv_columns=cols, db=db,
        store_bot=ctx.obj["bot"] if from_store else None, strict=not skip_invalid,
    )
    for err in report.errors[:20]:
        click.secho(f"skipped {err}", fg="yellow", err=True)
    if len(report.errors) > 20:
        click.secho(f"... and {len(report.errors) - 20} more invalid records", fg="yellow", err=True)
    return transcripts, report


def _report_line(report) -> str:
    pii = ", ".join(f"{k} {v}" for k, v in sorted(report.pii.items())) or "none"
    return (f"{report.kept} conversations ({report.agent_turns} agent turns), {report.duplicates} duplicates "
            f"dropped, {len(report.errors)} invalid; PII replaced: {pii}")


@click.command("import-transcripts")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Scrubbed transcripts (JSONL).")
@_import_options
@click.pass_context
def import_transcripts_cmd(ctx, sources, out, from_store, skip_invalid, csv_columns, pii_patterns, phone_regions):
    """Import transcripts (JSONL, CSV, the dialogue store), validate, de-duplicate and scrub PII."""
    from training.importers import write_transcripts

    transcripts, report = _import(ctx, sources, from_store, skip_invalid, csv_columns, pii_patterns, phone_regions)
    write_transcripts(transcripts, out)
    click.echo(f"{out}: {_report_line(report)}")


def _fix_transcripts(ctx, pii_patterns, phone_regions) -> list:
    """The bot's approved fixes as one-turn transcripts (question, the agent's answer), PII
    scrubbed like imported transcripts. Only the fix's text: never a visitor's id or email."""
    from bot.fixes import Fixes
    from training.importers import Transcript

    scrub = _scrubber(ctx.obj["settings"], pii_patterns, phone_regions)
    out = []
    for rec in Fixes(components(ctx).db).training_records(ctx.obj["bot"]):
        turns = [{"role": t["role"], "text": scrub.scrub(t["text"])[0]} for t in rec["turns"]]
        out.append(Transcript(id=rec["id"], turns=turns, metadata={"fix": True}))
    return out


def _count_tokens(settings, tokenizer: str):
    if tokenizer == "none":
        return None
    from transformers import AutoTokenizer

    from training.finetune import resolve_base

    tok = AutoTokenizer.from_pretrained(resolve_base(tokenizer, settings.data_dir))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _source_fn(ctx, mode: str, kb: Path | None):
    from training.sft_dataset import GoldSources, RetrievedSources

    if mode == "none":
        return None
    if mode == "gold":
        if kb is None:
            raise SupportbotError("--sources gold needs --kb (the knowledge-base JSONL the doc ids refer to)")
        return GoldSources.from_jsonl(kb)
    comps = components(ctx)
    if not comps.knowledge.documents(ctx.obj["bot"]):
        raise SupportbotError(
            f"bot {ctx.obj['bot']!r} has no documents to retrieve from: run `supportbot ingest` first, "
            "or use --sources gold --kb FILE or --sources none"
        )
    # Retrieval and source selection exactly as the bot serves them.
    return RetrievedSources(comps.pipeline(ctx.obj["bot"], with_generator=False))


@click.command("build-dataset")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder.")
@click.option("--sources", "source_mode", type=click.Choice(["retrieve", "gold", "none"]), default=None,
              help="Sources in each prompt: retrieved by the bot (default), the turn's recorded doc ids, or none.")
@click.option("--kb", type=click.Path(exists=True, path_type=Path), default=None,
              help="Knowledge-base JSONL for --sources gold.")
@click.option("--dev-fraction", type=float, default=None, help="Share of conversations held out (default 0.1).")
@click.option("--seed", type=int, default=None)
@click.option("--tokenizer", default="default", show_default=True,
              help="Model whose tokenizer counts history tokens (folder, hub id, 'default', or 'none').")
@click.option("--limit", type=int, default=None, help="Use only the first N conversations.")
@click.option("--fixes/--no-fixes", "with_fixes", default=True, show_default=True,
              help="Add the bot's approved fixes (an agent's right answers) to the train split.")
@_import_options
@click.pass_context
def build_dataset(ctx, sources, out, source_mode, kb, dev_fraction, seed, tokenizer, limit, with_fixes, from_store,
                  skip_invalid, csv_columns, pii_patterns, phone_regions):
    """Build the SFT dataset: one example per agent turn, prompted as the bot serves, split by conversation."""
    from tqdm.auto import tqdm

    from training.importers import ImportReport
    from training.sft_dataset import build_examples, split_by_conversation, write_dataset

    settings = ctx.obj["settings"]
    ts = settings.training
    mode = source_mode or ts.sources
    fixes = _fix_transcripts(ctx, pii_patterns, phone_regions) if with_fixes else []
    if sources or from_store or not fixes:
        transcripts, report = _import(ctx, sources, from_store, skip_invalid, csv_columns, pii_patterns,
                                      phone_regions)
    else:
        transcripts, report = [], ImportReport()
    if limit is not None:
        transcripts = transcripts[:limit]
    source_fn = _source_fn(ctx, mode, kb)
    stats: Counter = Counter()
    count = _count_tokens(settings, tokenizer)
    examples = list(tqdm(
        build_examples(transcripts, settings.dialogue, source_fn, count, stats),
        desc="examples", unit="ex", disable=None,
    ))
    # Fixes are always trained on (the regressions of the promotion gate check them).
    fix_examples = list(build_examples(fixes, settings.dialogue, source_fn, count, Counter()))
    if not examples and not fix_examples:
        raise SupportbotError("no training examples: no agent turn follows a user message")
    seed = ts.seed if seed is None else seed
    frac = ts.dev_fraction if dev_fraction is None else dev_fraction
    train, dev = split_by_conversation(examples, frac, seed) if examples else ([], [])
    train = train + fix_examples
    info = {"sources": mode, "kb": str(kb) if kb else None, "seed": seed, "dev_fraction": frac,
            "pii": dict(report.pii), "import": report.to_json(), "builder": dict(stats),
            "fixes": len(fix_examples),
            "inputs": [str(s) for s in sources] + (["store"] if from_store else [])
            + (["fixes"] if fix_examples else [])}
    result = write_dataset(out, train, dev, info)
    click.echo(_report_line(report))
    if fix_examples:
        click.echo(f"{len(fix_examples)} approved fixes added to the train split")
    click.echo(f"{out}: {result['train_examples']} train / {result['dev_examples']} dev examples "
               f"({result['train_conversations']} / {result['dev_conversations']} conversations), "
               f"sha256 {result['data_sha256'][:12]}")


@click.command()
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="A recipe file (training/recipes/*.toml): build its dataset, train, evaluate, install.")
@click.option("--data", "dataset", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (without --recipe).")
@click.option("--base", default=None, help="Base model: folder, hub id, or 'default' (the recipe's, else default).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output model folder (with --recipe: the training folder, default the recipe's out).")
@click.option("--method", type=click.Choice(["lora", "full"]), default=None, help="Default: settings (lora).")
@click.option("--epochs", type=float, default=None)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--lr", type=float, default=None)
@click.option("--batch-size", type=int, default=None, help="Per device, per micro-batch.")
@click.option("--grad-accum", type=int, default=None)
@click.option("--eval-every", type=int, default=None)
@click.option("--patience", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--max-length", type=int, default=None)
@click.option("--no-merge", is_flag=True, help="Export the LoRA adapter (base recorded) instead of merged weights.")
@click.option("--no-resume", is_flag=True, help="Ignore checkpoints in --out and start over.")
@click.option("--keep-checkpoints", is_flag=True)
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), default=None,
              help="Default: settings (auto: bf16 where the GPU or CPU computes it natively).")
@click.option("--limit", type=int, default=None,
              help="With --recipe: at most N conversations of each source (a quick run).")
@click.option("--evaluate/--no-evaluate", "evaluate", default=None,
              help="With --recipe: evaluate untuned vs tuned into the card (default: when it has [evaluate]).")
@click.option("--eval-limit", type=int, default=None,
              help="With --recipe: evaluate on at most N dev dialogues and N answer questions.")
@click.option("--install/--no-install", "install", default=True, show_default=True,
              help="With --recipe: copy the LoRA adapter to the recipe's install folder.")
@click.pass_context
def train(ctx, recipe, dataset, base, out, method, epochs, max_steps, lr, batch_size, grad_accum, eval_every,
          patience, seed, max_length, no_merge, no_resume, keep_checkpoints, mixed_precision, limit, evaluate,
          eval_limit, install):
    """Fine-tune a generator on a dataset (LoRA by default); runs under `accelerate launch` as it is.

    With --recipe, one command makes the recipe's model again (data, training, evaluation, install)."""
    from training.finetune import finetune

    settings = ctx.obj["settings"]
    overrides = dict(method=method, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                     grad_accum=grad_accum, eval_every=eval_every, patience=patience, seed=seed)
    if recipe is not None:
        if dataset is not None:
            raise SupportbotError("--recipe builds its own dataset: leave out --data")
        return _train_recipe(ctx, recipe, base, out, overrides, max_length, mixed_precision, limit, evaluate,
                             eval_limit, install, no_resume, keep_checkpoints)
    if dataset is None or out is None:
        raise SupportbotError("give --data and --out (or --recipe FILE)")
    updates = {k: v for k, v in {"max_length": max_length, "mixed_precision": mixed_precision}.items()
               if v is not None}
    if no_merge:
        updates["merge_lora"] = False
    ts = settings.training.model_copy(update=updates)
    card = finetune(
        dataset, base or "default", out, ts, data_dir=settings.data_dir, resume=not no_resume,
        keep_checkpoints=keep_checkpoints, **overrides,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate launch, one process reports
        click.echo(_train_line(out, card))


def _relative(path, root) -> str:
    """``path`` relative to ``root`` when it lies inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _train_line(out, card) -> str:
    m = card["metrics"]
    dev = (f"dev loss {m['dev_loss_before']:.4f} -> {m['dev_loss_best']:.4f} (best)"
           if m["dev_loss_before"] is not None else "no dev split")
    ending = ""
    if m.get("stopped_by"):
        ending = f", stopped by {m['stopped_by']} after {m['steps']} of {m['total_steps']} steps"
    elif m["early_stopped"]:
        ending = ", stopped early"
    return (f"{out}: {m['steps']} steps, {dev}, {m['train_tokens_per_s']} tokens/s, "
            f"{m['train_seconds'] / 60:.1f} min{ending}")


# -- recipes -------------------------------------------------------------------------------------
def _scratch(ctx, name: str, files, settings=None):
    """Components over a scratch data dir under ``data_dir/scratch`` named by the content hash of
    ``files`` and the embedding settings (ingested once; the serving database is never touched)."""
    import hashlib

    from bot.components import Components

    settings = settings or ctx.obj["settings"]
    h = hashlib.sha256(json.dumps([settings.embedder.model_dump(include={"model", "max_seq_length"}),
                                   settings.ingest.model_dump()], sort_keys=True).encode())
    for f in files:
        h.update(Path(f).name.encode() + Path(f).read_bytes())
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    scratch = settings.model_copy(update={
        "data_dir": settings.data_dir / "scratch" / f"{slug}-{h.hexdigest()[:16]}", "database_url": ""})
    return Components(scratch, parts={"embedder": components(ctx).embedder})


def _recipe_retriever(ctx):
    """``(kind, files) -> SourceFn``: the bot's own retrieval and selection over those files,
    ingested once per content hash (DSTC11's KB in the evaluation cache `supportbot eval` uses)."""
    from bot.eval_kb import prepare_kb
    from training.sft_dataset import RetrievedSources

    settings = ctx.obj["settings"]

    def retriever(kind, files):
        files = [Path(f) for f in files]
        if kind == "dstc11":
            kb = prepare_kb(files[0], settings, embedder=components(ctx).embedder)
            return RetrievedSources(kb.components.pipeline(kb.bot, with_generator=False))
        comps = _scratch(ctx, kind, files)
        marker = comps.settings.data_dir / "ingested.json"
        if not marker.is_file():
            report = comps.knowledge.ingest("kb", files, progress=False)
            if report.errors:
                raise SupportbotError(f"{kind}: " + "; ".join(report.errors[:5]))
            marker.write_text(json.dumps([str(f) for f in files]))
        return RetrievedSources(comps.pipeline("kb", with_generator=False))

    return retriever


def _faq_sites(ctx, parts):
    """The corpus's companies of ``parts`` (Word layouts built under data_dir/scratch/faq-built),
    each with its FAQ entries as the ingest parsers read them (``entries``: question, answer)."""
    from retrieval.parsers import parse_file
    from training import answer_gate

    settings = ctx.obj["settings"]

    def sites(spec):
        corpus = Path(spec["corpus"])
        built = settings.data_dir / "scratch" / "faq-built"
        answer_gate.build_generated_files(corpus, built)
        found = answer_gate.corpus_sites(corpus, built, parts=parts, sample_faq=None)
        for site in found:
            site["entries"] = [(sec.question, sec.answer) for f in site["files"] if Path(f).is_file()
                               for doc in parse_file(Path(f), settings.ingest) for sec in doc.sections
                               if sec.kind == "faq" and sec.question and sec.answer]
        return found

    return sites


def _answer_runner(ctx, corpus: Path, part: str, limit: int | None, generate_all: bool):
    """``fn(settings, model=, backend=, progress=) -> answer_gate.summary``: the right-answers
    benchmark over ``corpus`` (its ``part``), ingested once into scratch components, with the
    configured generator (``model`` / ``backend`` replaced when given) writing the replies."""
    from bot.generators import build_generator
    from training import answer_gate

    parts = answer_gate.PARTS if part == "all" else (part,)
    state: dict = {}

    def prepare():
        if not state:
            settings = ctx.obj["settings"]
            built = settings.data_dir / "scratch" / "faq-built"
            answer_gate.build_generated_files(corpus, built)
            sites = answer_gate.limit_questions(answer_gate.corpus_sites(corpus, built, parts=parts), limit)
            if not sites:
                raise SupportbotError(f"{corpus}: no question in part {part}")
            key = answer_gate.sites_key(sites, corpus, [settings.embedder.model_dump(include={"model", "max_seq_length"}),
                                                        settings.ingest.model_dump()])
            from bot.components import Components

            scratch = settings.model_copy(update={"data_dir": settings.data_dir / "scratch" / f"answers-{key}",
                                                  "database_url": ""})
            comps = Components(scratch, parts={"embedder": components(ctx).embedder})
            answer_gate.ingest_sites(comps, sites)
            state.update(sites=sites, comps=comps)
        return state

    def run(settings, model=None, backend=None, progress=True):
        st = prepare()
        update = {k: v for k, v in {"model": model, "backend": backend}.items() if v}
        gen = build_generator(settings.generator.model_copy(update=update), ctx.obj["settings"].data_dir)
        rows = answer_gate.ask(st["sites"], st["comps"], gen, settings.dialogue, generate_all=generate_all,
                               progress=progress)
        return answer_gate.summary(rows)

    return run


def _machine() -> dict:
    import torch

    from training.trainer import cpu_features, cpu_model_name, physical_cores

    out = {"cpu": cpu_model_name(), "cpu_features": cpu_features(), "physical_cores": physical_cores()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpus"] = torch.cuda.device_count()
    return out


def _evaluate_recipe(ctx, recipe, base, model_dir, method, eval_limit) -> dict:
    """Untuned vs tuned, with the default settings (knowledge chosen by the bot): DSTC11 dev
    replies (``supportbot eval``) and the answer benchmark's part, into the card."""
    from bot.evaluate import run_eval

    settings = ctx.obj["settings"]
    ev = recipe.evaluate
    gens = {"untuned": {"model": base, "adapter": ""},
            "tuned": ({"model": base, "adapter": str(model_dir)} if method == "lora"
                      else {"model": str(model_dir), "adapter": ""})}
    out: dict = {}
    limit = eval_limit or int(ev.get("limit", 0) or 0) or None
    for label, upd in gens.items():
        s = settings.model_copy(update={"generator": settings.generator.model_copy(
            update={"backend": "hf", **upd})})
        figures: dict = {}
        if ev.get("kb") and ev.get("dialogues"):
            for key in ("kb", "dialogues"):
                if not Path(ev[key]).is_file():
                    raise SupportbotError(f"recipe {recipe.path.name} [evaluate] {key}: {ev[key]} not found")
            report = run_eval(s, ev["kb"], ev["dialogues"], limit=limit, progress=True)
            figures["dialogues"] = {k: report.get(k) for k in ("n", "bleu", "rougeL", "rouge1", "rouge2",
                                                                "selection_f1", "ttft_ms_p50") if k in report}
        if ev.get("corpus"):
            run = _answer_runner(ctx, Path(ev["corpus"]), ev.get("answer_part", "held_out"), limit,
                                 generate_all=bool(ev.get("answer_generate_all", False)))
            summary = run(s, progress=True)
            figures["answers"] = summary["answers"]
        out[label] = figures
        click.echo(f"evaluation ({label}): {json.dumps(figures)}")
    return {"settings": "default (knowledge chosen by the bot)", "limit": limit,
            "answers_generate_all": bool(ev.get("answer_generate_all", False)), **out}


def _train_recipe(ctx, recipe_path, base, out, overrides, max_length, mixed_precision, limit, evaluate,
                  eval_limit, install, no_resume, keep_checkpoints):
    import time

    from training.finetune import finetune
    from training.model_card import write_card
    from bot.core.locks import exclusive
    from training.recipe import (build_recipe_dataset, check_files, inputs_fingerprint, install_adapter, load_recipe,
                                 training_settings)

    t0 = time.perf_counter()
    settings = ctx.obj["settings"]
    recipe = load_recipe(recipe_path)
    if out is not None:
        recipe.out = Path(out).resolve()
    for note in check_files(recipe):
        click.secho(note, fg="yellow", err=True)
    base = base or recipe.base
    ts = training_settings(recipe, settings.training)
    ts = ts.model_copy(update={k: v for k, v in {"max_length": max_length, "mixed_precision": mixed_precision}.items()
                               if v is not None})
    method = overrides.pop("method", None) or ts.method
    fingerprint = inputs_fingerprint(recipe, limit, [base, settings.dialogue.model_dump(),
                                                     settings.embedder.model_dump(include={"model", "max_seq_length"}),
                                                     settings.ingest.model_dump(), settings.training.pii_patterns,
                                                     settings.training.phone_regions])
    recipe.out.mkdir(parents=True, exist_ok=True)
    # Built once: a rerun with the same inputs, and the other processes of a multi-GPU run
    # (waiting on the lock), reuse it.
    with exclusive(recipe.out / ".dataset.lock"):
        stats_path = recipe.dataset_dir / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        if stats.get("fingerprint") != fingerprint or not (recipe.dataset_dir / "train.jsonl").is_file():
            stats = build_recipe_dataset(
                recipe, settings.dialogue, _scrubber(settings, (), ()), _recipe_retriever(ctx),
                count_tokens=_count_tokens(settings, base), limit=limit, faq_sites=_faq_sites(ctx, ("fit",)),
                progress=True, fingerprint=fingerprint)
        else:
            click.echo(f"{recipe.dataset_dir}: built from the same inputs before, reused")
    by = ", ".join(f"{k} {v['train_examples']}/{v['dev_examples']}" for k, v in stats["by_source"].items())
    pii = ", ".join(f"{k} {v}" for k, v in sorted(stats["pii"].items())) or "none"
    click.echo(f"{recipe.dataset_dir}: {stats['train_examples']} train / {stats['dev_examples']} dev examples "
               f"({by}); PII replaced: {pii}; sha256 {stats['data_sha256'][:12]}")
    card = finetune(recipe.dataset_dir, base, recipe.model_dir, ts, data_dir=settings.data_dir,
                    resume=not no_resume, keep_checkpoints=keep_checkpoints, method=method, **overrides)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    click.echo(_train_line(recipe.model_dir, card))
    card["recipe"] = {"path": str(recipe.path), "sha256": recipe.sha256, "name": recipe.name, "limit": limit,
                      "by_source": stats["by_source"], "overrides": {k: v for k, v in overrides.items() if v is not None}}
    card["machine"] = _machine()
    if evaluate is None:
        evaluate = bool(recipe.evaluate)
    if evaluate:
        card["evaluation"] = _evaluate_recipe(ctx, recipe, base, recipe.model_dir, method, eval_limit)
    card["wall_seconds"] = round(time.perf_counter() - t0, 1)
    # The card ships with the adapter: paths inside the recipe's root are written relative to it.
    card["recipe"]["path"] = _relative(recipe.path, recipe.root)
    if isinstance(card.get("data"), dict) and card["data"].get("path"):
        card["data"]["path"] = _relative(card["data"]["path"], recipe.root)
    write_card(recipe.model_dir, card)
    if install and recipe.install is not None and method == "lora":
        dest = install_adapter(recipe.model_dir, recipe.install, recipe.max_adapter_mb,
                               base_id="HuggingFaceTB/SmolLM2-135M-Instruct" if base == "default" else None)
        click.echo(f"adapter installed in {dest} (generator.adapter = \"default\" applies it to the bundled model)"
                   if base == "default" else f"adapter installed in {dest}")
    elif install and recipe.install is not None:
        click.echo(f"method {method}: a full model in {recipe.model_dir}, not an adapter; nothing installed")


@click.command("promote")
@click.argument("candidate")
@click.option("--kb", type=click.Path(exists=True, path_type=Path), default=None,
              help="Knowledge base the evaluation retrieves from.")
@click.option("--dialogues", type=click.Path(exists=True, path_type=Path), default=None,
              help="Dev dialogues both models are evaluated on.")
@click.option("--limit", type=int, default=None, help="Evaluate on the first N dialogues only.")
@click.option("--force", is_flag=True, help="Switch even if the gate refuses (or without evaluating).")
@click.option("--tolerance", type=float, default=None, help="Allowed drop of each gate metric (default 0).")
@click.option("--regressions/--no-regressions", "with_regressions", default=True, show_default=True,
              help="Also ask the bot's approved fixes; refuse a candidate that gets fewer right.")
@click.option("--answers/--no-answers", "with_answers", default=True, show_default=True,
              help="Also run the right-answers benchmark (not with --force); refuse a candidate with more "
                   "trap contradictions or a lower share right.")
@click.option("--answer-corpus", type=click.Path(path_type=Path), default=None,
              help="FAQ corpus of the answer benchmark (default: bench/faq_corpus of this checkout).")
@click.option("--answer-part", type=click.Choice(["held_out", "fit", "all"]), default="held_out", show_default=True,
              help="Corpus part asked (held_out: companies no recipe trains on).")
@click.option("--answer-limit", type=int, default=None, help="Ask at most N questions (round-robin over sites).")
@click.option("--answer-tolerance", type=float, default=None,
              help="Allowed drop of the share right (default: --tolerance); trap contradictions have none.")
@click.pass_context
def promote_cmd(ctx, candidate, kb, dialogues, limit, force, tolerance, with_regressions, with_answers,
                answer_corpus, answer_part, answer_limit, answer_tolerance):
    """Serve CANDIDATE if its reply ROUGE-L and selection F1 are not below the serving model's, it
    answers at least as many of the bot's fixes right, and on the right-answers benchmark it
    contradicts no more trap questions and gets no lower a share right."""
    from bot.evaluate import run_eval, run_regressions
    from bot.fixes import Fixes
    from training.promotion import GATE_METRICS, REPORTED, promote
    from training.registry import ModelRegistry

    settings = ctx.obj["settings"]
    tol = settings.training.gate_tolerance if tolerance is None else tolerance
    bot = ctx.obj["bot"]
    cases = Fixes(components(ctx).db).regression_cases(bot) if with_regressions else []

    def regression_fn(gated, cases, model=None, backend=None, progress=True):
        return run_regressions(gated, cases, components(ctx), bot, model=model, backend=backend,
                               progress=progress)

    answer_fn = None
    if with_answers and not force:
        from training.answer_gate import CORPUS

        corpus = answer_corpus or CORPUS
        if not Path(corpus).is_dir():
            raise SupportbotError(f"{corpus}: no FAQ corpus for the answer benchmark "
                                  "(give --answer-corpus, or --no-answers)")
        answer_fn = _answer_runner(ctx, Path(corpus), answer_part, answer_limit, generate_all=True)
    result = promote(ModelRegistry(settings.data_dir), candidate, settings, kb, dialogues, force=force,
                     limit=limit, tolerance=tol, eval_fn=run_eval, regressions=cases,
                     regression_fn=regression_fn, answer_fn=answer_fn,
                     answer_tolerance=tol if answer_tolerance is None else answer_tolerance)
    if result.candidate_metrics:
        gate_keys = set(GATE_METRICS) | {"regressions_right", "answers_right", "answers_trap_contradictions"}
        click.echo(f"{'metric':<34}{'serving':>12}{'candidate':>12}")
        for k in REPORTED:
            if k in result.candidate_metrics and k in result.serving_metrics:
                s, c = result.serving_metrics[k], result.candidate_metrics[k]
                mark = "  (gate)" if k in gate_keys else ""
                click.echo(f"{k:<34}{s:>12.4f}{c:>12.4f}{mark}" if isinstance(s, (int, float)) and
                           isinstance(c, (int, float)) else f"{k:<34}{s!s:>12}{c!s:>12}{mark}")
    for reason in result.reasons:
        click.secho(f"gate: {reason}", fg="yellow" if force else "red", err=True)
    if result.promoted:
        click.echo(f"promoted {result.candidate} as version {result.version}"
                   + (" (forced)" if result.reasons else ""))
    else:
        click.echo(f"not promoted; still serving {result.serving}")
        ctx.exit(1)


@click.command()
@click.pass_context
def models(ctx):
    """The served model and the promotion history."""
    from training.registry import ModelRegistry

    reg = ModelRegistry(ctx.obj["settings"].data_dir)
    rec = reg.record()
    if rec is None:
        click.echo("nothing promoted: serving the configured generator")
    for h in reg.history():
        mark = "*" if rec and h["version"] == rec["version"] else " "
        cand = (h.get("evaluation") or {}).get("candidate") or {}
        figures = ", ".join(f"{k} {cand[k]:.3f}" for k in ("rougeL", "selection_f1") if k in cand)
        click.echo(f"{mark} v{h['version']}  {h['promoted_at']}  {h['path']}  {figures}")


def register(main: click.Group) -> None:
    for cmd in (import_transcripts_cmd, build_dataset, train, promote_cmd, models):
        main.add_command(cmd)
