"""``supportbot fixes``: the bot's bad answers, drafts from resolved conversations, exports."""
from __future__ import annotations

import json
from pathlib import Path

import click


def _fixes(ctx):
    from bot.cli_context import components
    from bot.fixes import Fixes

    comps = components(ctx)
    return Fixes(comps.db, comps.knowledge, comps.embedder)


@click.group()
def fixes():
    """Every bad answer becomes a fix: list them, draft from resolved conversations, export."""


@fixes.command("list")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def list_cmd(ctx, limit):
    """The bot's bad answers (rated down, not answered, asked back on) and the drafts waiting."""
    f = _fixes(ctx)
    bot = ctx.obj["bot"]
    bad = f.bad_answers(bot, limit=limit)
    click.echo(f"{len(bad)} bad answers of bot {bot!r}")
    for b in bad:
        top = b.retrieved[0]["doc_id"] if b.retrieved else "-"
        click.echo(f"  message {b.message_id} [{b.kind}: {b.reason}] {b.question[:70]!r} (top: {top})")
    drafts = f.list(bot, status="draft")
    click.echo(f"{len(drafts)} drafts waiting for approval")
    for d in drafts:
        click.echo(f"  fix {d['id']} {d['question'][:70]!r}")


@fixes.command("draft")
@click.pass_context
def draft_cmd(ctx):
    """Draft question-and-answer pairs from conversations an agent resolved (duplicates skipped)."""
    report = _fixes(ctx).draft_from_resolved(ctx.obj["bot"])
    click.echo(f"{report.seen} agent replies read: {len(report.drafted)} drafted, "
               f"{len(report.duplicates)} already covered")
    for d in report.duplicates:
        click.echo(f"  covered: {d['question'][:60]!r} by {d['of']} (cosine {d['cosine']})")


@fixes.command("export")
@click.option("--regressions", "regressions_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the approved fixes as regression cases (JSONL) for `supportbot eval --regressions-file`.")
@click.pass_context
def export_cmd(ctx, regressions_path):
    """Export the approved fixes as regression cases (question, expected answer, expected decision)."""
    cases = _fixes(ctx).regression_cases(ctx.obj["bot"])
    regressions_path.parent.mkdir(parents=True, exist_ok=True)
    with open(regressions_path, "w", encoding="utf-8") as out:
        for case in cases:
            out.write(json.dumps(case, ensure_ascii=False) + "\n")
    click.echo(f"{regressions_path}: {len(cases)} regression cases")


def register(main: click.Group) -> None:
    main.add_command(fixes)
