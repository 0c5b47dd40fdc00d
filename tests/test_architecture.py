"""The tiers import only downwards: every import of the project's packages, including those inside
functions, is read with ``ast`` and checked against the tier it comes from.

    app        bot/components.py, bot/cli*.py, bot/evaluate.py, bot/eval_kb.py, bot/__main__.py,
               */cli.py, web/                                     -> anything
    training   training/ (but its cli.py)                          -> core, dialogue, retrieval.types, training
    dialogue   the rest of bot/                                    -> core, dialogue, retrieval.types
    retrieval  retrieval/                                          -> core, retrieval
    core       bot/core/                                           -> core
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "retrieval", "training", "web")
APP_MODULES = {"bot.components", "bot.evaluate", "bot.eval_kb", "bot.__main__", "bot.cli_context"}
ALLOWED = {
    "core": {"core"},
    "retrieval": {"core", "retrieval", "retrieval.types"},
    "dialogue": {"core", "dialogue", "retrieval.types"},
    "training": {"core", "dialogue", "retrieval.types", "training"},
    "app": {"core", "dialogue", "retrieval", "retrieval.types", "training", "app"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tier(module: str) -> str:
    """The tier of a project module (``bot.core.settings`` -> core)."""
    parts = module.split(".")
    if parts[0] == "web" or parts[-1] == "cli" or module in APP_MODULES or (
            parts[0] == "bot" and len(parts) > 1 and parts[1].startswith("cli")):
        return "app"
    if parts[0] == "bot":
        return "core" if len(parts) > 1 and parts[1] == "core" else "dialogue"
    return parts[0]


def target(module: str) -> str:
    """What an import reaches: its tier, with ``retrieval.types`` told apart from the rest."""
    if module == "retrieval.types" or module.startswith("retrieval.types."):
        return "retrieval.types"
    return tier(module)


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import of a project package in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package ``level - 1`` above this module's own
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from bot import cli_dialogue`` imports the submodule bot.cli_dialogue
            out += [(node.lineno, f"{mod}.{a.name}" if mod in PACKAGES or mod == "bot.core" else mod)
                    for a in node.names]
    return [(line, m) for line, m in out if m.split(".")[0] in PACKAGES]


def project_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py") if "migrations" not in p.parts)


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in project_files(root):
        src = tier(module_name(path, root))
        for line, mod in imports(path, root):
            if target(mod) not in ALLOWED[src]:
                bad.append(f"{path.relative_to(root).as_posix()}:{line} ({src}) imports {mod} ({target(mod)})")
    return bad


def test_every_import_runs_downwards():
    assert violations() == []


@pytest.mark.parametrize("module, expected", [
    ("bot.core.settings", "core"), ("bot.pipeline", "dialogue"), ("bot.generators.hf_generator", "dialogue"),
    ("bot.components", "app"), ("bot.cli_knowledge", "app"), ("training.cli", "app"),
    ("training.trainer", "training"), ("retrieval.hybrid", "retrieval"), ("web.chat_api", "app"),
])
def test_tiers_are_read_from_module_names(module, expected):
    assert tier(module) == expected


def test_the_check_catches_an_upward_import(tmp_path):
    """A dialogue module importing the app tier from inside a function, retrieval importing the
    dialogue tier, and a relative import reaching up, are reported."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "bot" / "core").mkdir()
    (tmp_path / "bot" / "_arch_probe.py").write_text(
        "def f():\n    from bot.components import Components\n    import web.chat_api\n")
    (tmp_path / "retrieval" / "_arch_probe.py").write_text(
        "from bot.policy import decide\nfrom bot.core.errors import ConfigError\nfrom . import types\n")
    (tmp_path / "bot" / "core" / "probe.py").write_text("from .. import pipeline\nfrom . import errors\n")
    bad = violations(tmp_path)
    assert "bot/core/probe.py:1 (core) imports bot.pipeline (dialogue)" in bad
    assert len(bad) == 4, bad
    assert "bot/_arch_probe.py:2 (dialogue) imports bot.components (app)" in bad
    assert "bot/_arch_probe.py:3 (dialogue) imports web.chat_api (app)" in bad
    assert "retrieval/_arch_probe.py:1 (retrieval) imports bot.policy (dialogue)" in bad
    assert not any("bot.core.errors" in b for b in bad)
