"""Dialogue commands: ``supportbot chat`` (a terminal conversation) and ``supportbot eval``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

SUMMARY_KEYS = (
    ("n", "knowledge-seeking turns"),
    ("selection_precision", "selection precision"),
    ("selection_recall", "selection recall"),
    ("selection_f1", "selection F1"),
    ("recall@5", "retrieval recall@5"),
    ("mrr", "retrieval MRR"),
    ("bleu", "BLEU"),
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rougeL", "ROUGE-L"),
    ("decision_accuracy", "decision accuracy"),
    ("target_answer_rate", "answered (knowledge turns)"),
    ("direct_answer_rate", "answered with an FAQ's own answer"),
    ("non_target_no_answer_rate", "not answered (other turns)"),
    ("out_of_scope_no_answer_rate", "not answered (out of scope)"),
    ("out_of_scope_conv_no_answer_rate", "  same, mid-conversation"),
    ("ttft_ms_p50", "time to first token p50 (ms)"),
    ("tokens_per_s", "decode tokens/s"),
)


def _components(ctx):
    from bot.cli_context import components

    return components(ctx)


def print_events(events, out=click.echo) -> str:
    """Print a stream of events as they come; returns the decision."""
    decision = ""
    for event in events:
        if event.type == "meta":
            decision = event.data.get("decision", "")
        elif event.type == "token":
            out(event.data["text"], nl=False)
            sys.stdout.flush()
        elif event.type == "sources":
            out()
            for s in event.data["sources"]:
                name = s.get("title") or s["doc_id"]
                where = s.get("source") or s["doc_id"]
                click.secho(f"  [{s['n']}] {name} ({where})", dim=True)
        elif event.type == "handoff":
            out(event.data.get("message", ""))
        elif event.type == "error":
            click.secho(event.data.get("message", "something went wrong"), fg="red")
    return decision


@click.command()
@click.option("--visitor", default="terminal", show_default=True, help="Visitor id stored with the conversation.")
@click.pass_context
def chat(ctx, visitor):
    """Talk to the bot in the terminal: answers stream as they are generated, with sources.

    Type /quit (or Ctrl-D) to leave, /new for a fresh conversation.
    """
    comps = _components(ctx)
    bot = ctx.obj["bot"]
    conversations = comps.conversations
    bot_id = comps.db.bot_id(bot)
    dialogue = comps.dialogue(bot)
    if hasattr(comps.generator, "load"):
        click.echo("loading the model ...", err=True)
        comps.generator.load()
    cid = conversations.create(bot_id, visitor, {"channel": "terminal"})
    click.echo(f"conversation {cid} with bot '{bot}'. /quit to leave, /new to start over.")
    while True:
        try:
            message = click.prompt(click.style("you", bold=True), prompt_suffix="> ")
        except (EOFError, click.exceptions.Abort):
            click.echo()
            break
        message = message.strip()
        if message in ("/quit", "/exit", "/q"):
            break
        if message == "/new":
            cid = conversations.create(bot_id, visitor, {"channel": "terminal"})
            click.echo(f"new conversation {cid}")
            continue
        if not message:
            continue
        click.secho("bot> ", bold=True, nl=False)
        print_events(dialogue.respond(cid, message))
        click.echo()


def format_summary(report: dict) -> str:
    lines = []
    for key, label in SUMMARY_KEYS:
        value = report.get(key)
        if value is None:
            shown = "-"
        elif isinstance(value, float):
            shown = f"{value:.1f}" if key in ("ttft_ms_p50", "tokens_per_s") else f"{value:.3f}"
        else:
            shown = str(value)
        lines.append(f"  {label:<32} {shown:>10}")
    return "\n".join(lines)


@click.command(name="eval")
@click.option("--kb", "kb_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Knowledge base JSONL (with --dialogues).")
@click.option("--dialogues", "dialogues_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Dialogue instances JSONL.")
@click.option("--regressions", "regressions", is_flag=True,
              help="Also ask the bot's approved fixes (--bot) over its own knowledge base; count those right.")
@click.option("--regressions-file", "regressions_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Regression cases JSONL (`supportbot fixes export --regressions`) instead of the store's.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as JSON here.")
@click.option("--limit", type=int, default=None, help="Only the first N instances.")
@click.option("--model", default=None, help="Generator model (folder or id) instead of the configured one.")
@click.option("--backend", type=click.Choice(["hf", "openai", "extractive"]), default=None,
              help="Generator backend instead of the configured one.")
@click.option("--no-generate", "no_generate", is_flag=True,
              help="Score retrieval, selection and decisions only (fast: no generator).")
@click.option("--predictions", "predictions_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write each instance's decision, selection and reply (JSONL).")
@click.pass_context
def eval_cmd(ctx, kb_path, dialogues_path, out_path, limit, model, backend, no_generate, predictions_path,
             regressions, regressions_file):
    """Evaluate the bot on dialogues: knowledge selection, retrieval, reply BLEU/ROUGE, decisions, speed;
    with --regressions, on the fixes its agents wrote (each must be answered with the fix's answer)."""
    from bot.core.errors import SupportbotError
    from bot.evaluate import run_eval

    with_regressions = regressions or regressions_file is not None
    if (kb_path is None) != (dialogues_path is None) or (kb_path is None and not with_regressions):
        raise SupportbotError("give --kb and --dialogues, --regressions, or both")
    report: dict = {}
    if kb_path is not None:
        report = run_eval(
            ctx.obj["settings"], kb_path, dialogues_path, model=model, limit=limit, progress=True,
            backend=backend, generate=not no_generate, predictions_path=predictions_path,
        )
        click.echo(f"supportbot eval: {dialogues_path} ({report['n_instances']} instances, model {report['model'] or '-'})")
        click.echo(format_summary(report))
    if with_regressions:
        report.update(_regressions(ctx, regressions_file, model, backend))
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))
        click.echo(f"report written to {out_path}")


def _regressions(ctx, path, model, backend) -> dict:
    """Ask the regression cases through the bot as it serves (direct FAQ replies included)."""
    from bot.evaluate import load_regressions, run_regressions
    from bot.fixes import Fixes

    comps = _components(ctx)
    bot = ctx.obj["bot"]
    cases = load_regressions(path) if path is not None else Fixes(comps.db).regression_cases(bot)
    result = run_regressions(ctx.obj["settings"], cases, comps, bot, model=model, backend=backend, progress=True)
    click.echo(f"regressions ({path or f'approved fixes of bot {bot!r}'}): "
               f"{result['regressions_right']} of {result['regressions_n']} answered right")
    for r in result["regressions"]:
        if not r["right"]:
            click.secho(f"  wrong: {r['id']} {r['question'][:60]!r} -> {r['decision']}: {(r['reply'] or '')[:80]!r}",
                        fg="yellow")
    return result


def register(main: click.Group) -> None:
    main.add_command(chat)
    main.add_command(eval_cmd)
