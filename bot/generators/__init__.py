"""Generator backends behind one interface, chosen by name from a registry.

``build_generator(settings.generator, settings.data_dir)`` returns a cheap, unloaded generator;
``load()`` (or the first ``stream``) does the heavy work. See ``base`` for the contract.
Add a backend by adding a builder to ``BACKENDS``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from bot.core.errors import ConfigError
from bot.generators.base import GenerationStream, Generator
from bot.core.settings import GeneratorSettings


def _hf(s: GeneratorSettings, data_dir: Path) -> Generator:
    from bot.generators.hf_generator import HFGenerator

    return HFGenerator(
        s.model, data_dir=data_dir, device=s.device, dtype=s.dtype, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
        threads=s.threads, decode_dtype=s.decode_dtype, decode_threads=s.decode_threads,
        prefill=s.prefill, adapter=s.adapter,
    )


def _openai(s: GeneratorSettings, data_dir: Path) -> Generator:
    from bot.generators.openai_generator import OpenAIGenerator

    if s.model == "default":
        raise ConfigError("generator.model: the openai backend needs the server's model name")
    return OpenAIGenerator(
        s.model, base_url=s.base_url, api_key=s.api_key, timeout_s=s.timeout_s,
        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
    )


def _extractive(s: GeneratorSettings, data_dir: Path) -> Generator:
    from bot.generators.extractive_generator import ExtractiveGenerator

    return ExtractiveGenerator()


BACKENDS: dict[str, Callable[[GeneratorSettings, Path], Generator]] = {
    "hf": _hf,
    "openai": _openai,
    "extractive": _extractive,
}


def build_generator(settings: GeneratorSettings, data_dir: Path) -> Generator:
    """The generator named by ``settings.backend``, built (not loaded) from its settings section."""
    try:
        builder = BACKENDS[settings.backend]
    except KeyError:
        raise ConfigError(
            f"generator.backend={settings.backend!r}: choose one of {', '.join(sorted(BACKENDS))}"
        ) from None
    return builder(settings, Path(data_dir))


__all__ = ["BACKENDS", "GenerationStream", "Generator", "build_generator"]
