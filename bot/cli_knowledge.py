"""Knowledge-base commands: ingest, docs, delete, reindex, ask, eval-retrieval."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bot.cli_context import components


def _components(ctx):
    return components(ctx)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def ingest(ctx, paths):
    """Add or replace documents (files or folders): Markdown, text, HTML, PDF, DOCX, CSV FAQ, JSONL."""
    kb = _components(ctx).knowledge
    report = kb.ingest(ctx.obj["bot"], list(paths), progress=True)
    for err in report.errors:
        click.secho(f"error: {err}", fg="red", err=True)
    click.echo(
        f"{len(report.added)} added, {len(report.replaced)} replaced, {len(report.unchanged)} unchanged, "
        f"{report.chunks} chunks, {len(report.errors)} errors ({report.seconds:.1f} s)"
    )
    if report.errors:
        ctx.exit(1)


@click.command()
@click.option("--search", "query", default=None, help="Only documents whose title or id contains this.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
def docs(ctx, query, as_json):
    """List the documents of the bot."""
    rows = _components(ctx).knowledge.documents(ctx.obj["bot"], query=query)
    for r in rows:
        if as_json:
            click.echo(json.dumps(r))
        else:
            click.echo(f"{r['id']}\t{r['chunks']} chunks\t{r['title']}")
    if not as_json:
        click.echo(f"{len(rows)} documents", err=True)


@click.command(name="delete")
@click.argument("doc_id")
@click.pass_context
def delete_cmd(ctx, doc_id):
    """Delete a document (its chunks, vectors and lexical entries)."""
    _components(ctx).knowledge.delete(ctx.obj["bot"], doc_id)
    click.echo(f"deleted {doc_id}")


@click.command()
@click.pass_context
def reindex(ctx):
    """Rebuild the bot's index from the database (re-embedding chunks of another model)."""
    version = _components(ctx).knowledge.reindex(ctx.obj["bot"], progress=True)
    click.echo(f"index version {version} published")


@click.command()
@click.argument("question")
@click.option("--k", default=5, show_default=True, help="Passages to show.")
@click.option("--generate/--no-generate", default=False, help="Also stream a grounded answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@click.pass_context
def ask(ctx, question, k, generate, as_json):
    """Show the passages that answer QUESTION, with scores and sources (and an answer with --generate)."""
    comps = _components(ctx)
    hits = comps.retriever(ctx.obj["bot"]).search(question, k=k)
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=1))
    else:
        if not hits:
            click.echo("no passages found (is the knowledge base empty? try `supportbot ingest`)")
        for i, h in enumerate(hits, 1):
            head = f"[{i}] {h.title or h.doc_id}  score={h.score:.3f} confidence={h.confidence:.2f}"
            click.secho(head, bold=True)
            click.echo(f"    source: {h.source or h.doc_id}")
            click.echo("    " + h.text.strip().replace("\n", "\n    ")[:600])
    if generate:

        click.echo()
        bot = ctx.obj["bot"]
        cid = comps.conversations.create(comps.db.bot_id(bot), "cli", {"channel": "cli"})
        for event in comps.dialogue(bot).respond(cid, question):
            if event.type == "token":
                click.echo(event.data["text"], nl=False)
                sys.stdout.flush()
            elif event.type == "sources":
                click.echo()
                for s in event.data["sources"]:
                    click.echo(f"  [{s['n']}] {s.get('title') or s['doc_id']} ({s.get('source') or s['doc_id']})")
            elif event.type == "handoff":
                click.echo(event.data.get("message", ""))
            elif event.type == "error":
                raise click.ClickException(event.data.get("message", "generation failed"))
        click.echo()


@click.command(name="eval-retrieval")
@click.option("--kb", "kb_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--queries", "queries_path", type=click.Path(exists=True, path_type=Path))
@click.option("--dialogues", "dialogues_path", type=click.Path(exists=True, path_type=Path))
@click.option("--k", default=10, show_default=True)
@click.option("--limit", default=None, type=int, help="Only the first N queries.")
@click.pass_context
def eval_retrieval(ctx, kb_path, queries_path, dialogues_path, k, limit):
    """Recall@1/5/10 and MRR of the hybrid retriever and its dense/BM25 baselines, as one JSON object."""
    from bot.eval_kb import evaluate_retrieval

    if bool(queries_path) == bool(dialogues_path):
        raise click.UsageError("give exactly one of --queries or --dialogues")
    result = evaluate_retrieval(
        kb_path,
        queries_path=queries_path,
        dialogues_path=dialogues_path,
        k=k,
        settings=ctx.obj["settings"],
        limit=limit,
        progress=True,
    )
    click.echo(json.dumps(result, indent=1))


def register(main: click.Group) -> None:
    for cmd in (ingest, docs, delete_cmd, reindex, ask, eval_retrieval):
        main.add_command(cmd)
