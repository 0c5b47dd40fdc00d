"""Shared test fixtures. Append-only: several helpers add fixtures here."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A real tiny causal LM folder (2-layer Llama + byte-level BPE tokenizer with a chat template)."""
    from tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))
