"""The promotion gate: a candidate model is served only if it is not worse than the serving one.

``promote(registry, candidate, ...)`` evaluates the candidate and the serving model with the same
evaluation (``supportbot eval``, passed in as ``eval_fn``: retrieval, decision, selection and generation on the same
dev dialogues and knowledge base) and points ``CURRENT`` at the candidate only when none of
``GATE_METRICS`` (reply ROUGE-L, knowledge-selection F1) drops by more than ``tolerance``.
With ``regressions`` (the approved fixes, ``bot/fixes.py``) and ``regression_fn`` both models
also answer every case, and the candidate is refused when it gets fewer right than the serving
model. With ``answer_fn`` both models answer the right-answers benchmark (``training/answer_gate.py``:
visitors' questions over FAQ sites, traps whose true answer is "no" or "only if"), and the
candidate is refused when it contradicts more traps or gets a lower share right (beyond
``answer_tolerance``). ``force`` switches without the comparison. Serving processes follow the
pointer (``bot.generators.following.FollowingGenerator``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bot.core.errors import SupportbotError
from training.answer_gate import compare_answers
from training.model_card import read_card, write_card
from training.registry import ModelRegistry

GATE_METRICS = ("rougeL", "selection_f1")
REPORTED = ("n", "selection_precision", "selection_recall", "selection_f1", "recall@5", "mrr",
            "bleu", "rouge1", "rouge2", "rougeL", "ttft_ms_p50", "tokens_per_s",
            "regressions_n", "regressions_right", "answers_n", "answers_right", "answers_traps",
            "answers_trap_contradictions", "answers_out_of_scope_not_answered")


@dataclass
class GateResult:
    promoted: bool
    candidate: str
    serving: str
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    serving_metrics: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)  # why it was refused (empty when it passed)
    forced: bool = False
    version: int | None = None


def compare(candidate: dict[str, Any], serving: dict[str, Any], tolerance: float = 0.0) -> list[str]:
    """Reasons to refuse the candidate: each gate metric that dropped by more than ``tolerance``."""
    reasons = []
    for name in GATE_METRICS:
        if name not in candidate or name not in serving:
            raise SupportbotError(f"the evaluation did not report {name!r}; the gate needs it")
        c, s = float(candidate[name]), float(serving[name])
        if c < s - tolerance:
            reasons.append(f"{name} would drop from {s:.4f} to {c:.4f}")
    return reasons


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in REPORTED if k in metrics}


def promote(
    registry: ModelRegistry,
    candidate: str | Path,
    settings,
    kb: Path | None,
    dialogues: Path | None,
    *,
    force: bool = False,
    limit: int | None = None,
    tolerance: float = 0.0,
    eval_fn: Callable[..., dict[str, Any]] | None = None,
    progress: bool = True,
    regressions: Sequence[dict] | None = None,
    regression_fn: Callable[..., dict[str, Any]] | None = None,
    answer_fn: Callable[..., dict[str, Any]] | None = None,
    answer_tolerance: float = 0.0,
) -> GateResult:
    """Evaluate candidate and serving model on the same dialogues; switch when the gate passes.

    ``eval_fn(settings, kb, dialogues, model=, backend=, limit=, progress=)`` returns the report of
    ``supportbot eval`` (the app tier passes ``bot.evaluate.run_eval``); it is needed unless
    ``force`` switches without dialogues, with no evaluation.
    ``regression_fn(settings, cases, model=, backend=, progress=)`` returns ``{"regressions_n",
    "regressions_right", ...}`` (``bot.evaluate.run_regressions`` on the bot's knowledge base); with
    regressions the dialogues may be left out.
    ``answer_fn(settings, model=, backend=, progress=)`` returns ``training.answer_gate.summary`` of
    the right-answers benchmark with that model writing the replies; not run with ``force``.
    """
    cand_path = registry.resolve(candidate)
    cur = registry.current()
    serving_model = str(cur[0]) if cur else None  # None: the configured generator
    serving_name = serving_model or f"{settings.generator.backend}:{settings.generator.model}"
    if cur and cur[0] == cand_path:
        raise SupportbotError(f"{cand_path} is already the serving model (version {cur[1]})")
    result = GateResult(False, str(cand_path), serving_name, forced=force)
    # The gate compares models: every answered turn is generated (direct FAQ replies, the same
    # whichever model serves, would only dilute the difference).
    gated = settings.model_copy(update={
        "dialogue": settings.dialogue.model_copy(update={"direct_answer_threshold": 2.0})})
    # The candidate is evaluated as it will be served: its own weights, no adapter on top.
    cand_settings = gated.model_copy(update={"generator": gated.generator.model_copy(update={"adapter": ""})})
    if regressions:
        if regression_fn is None:
            raise SupportbotError("the promotion gate needs a regression function (regression_fn)")
        cand = regression_fn(cand_settings, regressions, model=str(cand_path), backend="hf", progress=progress)
        serv = regression_fn(gated, regressions, model=serving_model,
                             backend="hf" if serving_model else None, progress=progress)
        for key in ("regressions_n", "regressions_right"):
            result.candidate_metrics[key], result.serving_metrics[key] = cand[key], serv[key]
        if cand["regressions_right"] < serv["regressions_right"]:
            result.reasons.append(
                f"regressions: {cand['regressions_right']} of {cand['regressions_n']} fixes answered right, "
                f"fewer than the serving model's {serv['regressions_right']}")
    if answer_fn is not None and not force:
        cand = answer_fn(cand_settings, model=str(cand_path), backend="hf", progress=progress)
        serv = answer_fn(gated, model=serving_model, backend="hf" if serving_model else None, progress=progress)
        for key in REPORTED:
            if key.startswith("answers_"):
                result.candidate_metrics[key], result.serving_metrics[key] = cand.get(key), serv.get(key)
        result.reasons.extend(compare_answers(cand, serv, answer_tolerance))
    if kb is None or dialogues is None:
        if not force and not regressions and answer_fn is None:
            raise SupportbotError("the promotion gate needs --kb and --dialogues (or --force)")
    else:
        if eval_fn is None:
            raise SupportbotError("the promotion gate needs an evaluation function (eval_fn)")
        common = dict(limit=limit, progress=progress)
        # Promoted models are served by the hf backend (FollowingGenerator); the configured
        # generator is evaluated as configured.
        result.candidate_metrics.update(
            eval_fn(cand_settings, kb, dialogues, model=str(cand_path), backend="hf", **common))
        result.serving_metrics.update(eval_fn(gated, kb, dialogues, model=serving_model,
                                              backend="hf" if serving_model else None, **common))
        result.reasons = compare(result.candidate_metrics, result.serving_metrics, tolerance) + result.reasons
    if result.reasons and not force:
        return result
    evaluation = {
        "kb": str(kb) if kb else None, "dialogues": str(dialogues) if dialogues else None,
        "limit": limit, "forced": force, "serving_model": serving_name,
        "candidate": _summary(result.candidate_metrics), "serving": _summary(result.serving_metrics),
        "refusal_overridden": result.reasons,
    }
    result.version = registry.set_current(cand_path, evaluation)
    result.promoted = True
    installed = registry.current()
    if installed is not None:
        card = read_card(installed[0])
        if card:  # the untuned default model has no card
            card["evaluation"] = evaluation
            write_card(installed[0], card)
    return result
