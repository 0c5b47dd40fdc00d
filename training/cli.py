"""Training commands: import-transcripts, build-dataset, train, promote, models."""
from __future__ import annotations

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
@click.option("--data", "dataset", required=True, type=click.Path(path_type=Path), help="Dataset folder.")
@click.option("--base", default="default", show_default=True, help="Base model: folder, hub id, or 'default'.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output model folder.")
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
@click.pass_context
def train(ctx, dataset, base, out, method, epochs, max_steps, lr, batch_size, grad_accum, eval_every,
          patience, seed, max_length, no_merge, no_resume, keep_checkpoints):
    """Fine-tune a generator on a dataset (LoRA by default); runs under `accelerate launch` as it is."""
    from training.finetune import finetune

    settings = ctx.obj["settings"]
    updates = {k: v for k, v in {"max_length": max_length}.items() if v is not None}
    if no_merge:
        updates["merge_lora"] = False
    ts = settings.training.model_copy(update=updates)
    card = finetune(
        dataset, base, out, ts, data_dir=settings.data_dir, resume=not no_resume,
        keep_checkpoints=keep_checkpoints, method=method, epochs=epochs, max_steps=max_steps, lr=lr,
        batch_size=batch_size, grad_accum=grad_accum, eval_every=eval_every, patience=patience, seed=seed,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun / accelerate launch, one process reports
    m = card["metrics"]
    dev = (f"dev loss {m['dev_loss_before']:.4f} -> {m['dev_loss_best']:.4f} (best)"
           if m["dev_loss_before"] is not None else "no dev split")
    click.echo(
        f"{out}: {m['steps']} steps, {dev}, {m['train_tokens_per_s']} tokens/s, "
        f"{m['train_seconds'] / 60:.1f} min" + (", stopped early" if m["early_stopped"] else "")
    )


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
@click.pass_context
def promote_cmd(ctx, candidate, kb, dialogues, limit, force, tolerance, with_regressions):
    """Serve CANDIDATE if its reply ROUGE-L and selection F1 are not below the serving model's, and
    it answers at least as many of the bot's fixes right."""
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

    result = promote(ModelRegistry(settings.data_dir), candidate, settings, kb, dialogues, force=force,
                     limit=limit, tolerance=tol, eval_fn=run_eval, regressions=cases,
                     regression_fn=regression_fn)
    if result.candidate_metrics:
        click.echo(f"{'metric':<22}{'serving':>12}{'candidate':>12}")
        for k in REPORTED:
            if k in result.candidate_metrics and k in result.serving_metrics:
                s, c = result.serving_metrics[k], result.candidate_metrics[k]
                mark = "  (gate)" if k in GATE_METRICS else ""
                click.echo(f"{k:<22}{s:>12.4f}{c:>12.4f}{mark}" if isinstance(s, (int, float)) and
                           isinstance(c, (int, float)) else f"{k:<22}{s!s:>12}{c!s:>12}{mark}")
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
