"""``supportbot serve --demo``: make a fresh install show something at once.

Ingests the bundled sample FAQ (a fictional outdoor-gear shop) when the bot has no documents yet,
and finds or creates a site key whose allowed origins are the demo server's own addresses, so the
demo page at ``/demo`` can use the widget.
"""
from __future__ import annotations

from pathlib import Path

from bot.core.errors import ConfigError



def _samples_dir() -> Path:
    """samples/faq beside the package (a checkout), else in the working directory (the image)."""
    beside = Path(__file__).resolve().parent.parent / "samples" / "faq"
    return beside if beside.is_dir() else Path.cwd() / "samples" / "faq"


SAMPLES = _samples_dir()


def demo_origins(host: str, port: int, public_url: str | None = None) -> list[str]:
    """The origins a browser uses to reach this server: loopback names, the bound host, a public URL."""
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    if host not in ("0.0.0.0", "::", "127.0.0.1", "localhost", ""):
        origins.append(f"http://{host}:{port}")
    if public_url:
        origins.append(public_url)
    return origins


def prepare_demo(components, bot: str, origins: list[str], samples: Path = SAMPLES) -> dict:
    """Ingest the samples if the bot's knowledge base is empty; return ``{site_key, ingested}``."""
    from web.keys import SiteKeys, normalize_origin

    ingested = 0
    kb = components.knowledge
    if kb.count(bot) == 0:
        if not samples.is_dir():
            raise ConfigError(f"the sample FAQ folder {samples} is missing; ingest your own documents")
        report = kb.ingest(bot, [samples], progress=True)
        ingested = len(report.added) + len(report.replaced)
    keys = SiteKeys(components.db)
    wanted = {normalize_origin(o) for o in origins}
    for key in keys.list(bot):
        if key.active and wanted <= set(key.origins):
            return {"site_key": key.key, "ingested": ingested}
    return {"site_key": keys.create(bot, sorted(wanted)).key, "ingested": ingested}


def prepare_in_subprocess(settings, bot: str, origins: list[str] | None = None) -> dict:
    """Before gunicorn starts: the demo (when ``origins`` are given) and a first load of the
    generator, which converts the default model once (slow the first time, cached after).

    Runs in a spawned process, so the server process that later forks workers has not started
    torch or OpenMP thread pools (forking after that can hang the children)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_prepare, settings, bot, origins).result()


def _prepare(settings, bot: str, origins: list[str] | None) -> dict:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from bot.components import Components

    comps = Components(settings)
    result = prepare_demo(comps, bot, origins) if origins else {}
    load = getattr(comps.generator, "load", None)
    if load is not None:
        load()
    return result


def warm_up(components, bot: str) -> None:
    """Load the embedder, the bot's index and the generator, so the first visitor does not wait."""
    import logging

    try:
        components.retriever(bot)
        load = getattr(components.generator, "load", None)
        if load is not None:
            load()
    except Exception:  # noqa: BLE001 - the first request reports it properly
        logging.getLogger(__name__).warning("warm-up failed", exc_info=True)
