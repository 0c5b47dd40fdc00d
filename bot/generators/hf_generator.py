"""``hf`` backend: a transformers causal LM from a local folder or a hub id, streamed token by token.

``HFGenerator(model, ...)`` is cheap; ``load()`` reads tokenizer and weights (the default model is
converted once from its GGUF file, see ``default_model``). Device ``auto`` means CUDA in bfloat16
when present, else the CPU in float32, or bfloat16 where oneDNN has native bfloat16 kernels
(AVX512-BF16/AMX); on AVX2-only CPUs bfloat16 matmuls are emulated and slower (see
``bench/generate.py``). Decoding runs ``decoding.decode_tokens`` (a preallocated KV cache and one
forward per token in the caller's thread; the lean ``fast_llama`` forward for Llama-family
models), not ``generate()``. On x86 CPUs the prompt's prefill runs in int8 matrix products
(``int8_prefill``, calibrated at load; ``prefill = "model"`` turns it off).

Adapters (``adapter``, see ``resolve_adapter``): a LoRA adapter in peft format is merged into the
weights at load, in float32 before the cast to the run dtype, so serving runs the plain model at
the untuned model's speed. ``"default"`` is the support-tuned adapter shipped in
``bot/generators/adapters/support-lora/`` on the bundled SmolLM2 (the untuned model while none is
shipped).

Thread safety: one instance serves many threads. Each ``stream`` call owns its cache and sampler;
every decoding step runs on the generator's one model thread (``decoding.ModelThread``: one
OpenMP team however many request threads call in; streams interleave per token, in order); the
Rust tokenizer is used under its own lock because concurrent calls that change its truncation
state fail ("Already borrowed").
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from bot.core.errors import GeneratorError
from bot.generators.base import (
    GenerationStream,
    StopMatcher,
    UsageMixin,
    stop_list,
    validate_messages,
)

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
# The support-tuned LoRA adapter of the bundled SmolLM2, when one is shipped (the recipe
# training/recipes/support-lora.toml writes it here).
SHIPPED_ADAPTER = Path(__file__).resolve().parent / "adapters" / "support-lora"
ADAPTER_CONFIG = "adapter_config.json"

log = logging.getLogger(__name__)


def resolve_adapter(adapter: str, model: str, shipped: Path = SHIPPED_ADAPTER) -> Path | None:
    """The LoRA adapter folder to merge into ``model`` at load, or None for the model as it is.

    ``""`` / ``"none"``: none. ``"default"``: the shipped support adapter, for the bundled model
    only (``model == "default"``: it was trained on those weights; any other model is served as
    configured), and None while no adapter is shipped. A path: that adapter (an error when the
    folder holds no ``adapter_config.json``).
    """
    adapter = (adapter or "").strip()
    if adapter in ("", "none"):
        return None
    if adapter == "default":
        if str(model) != "default":
            return None
        return shipped if (shipped / ADAPTER_CONFIG).is_file() else None
    path = Path(adapter).expanduser()
    if not (path / ADAPTER_CONFIG).is_file():
        raise GeneratorError(f"generator.adapter={adapter!r}: not a LoRA adapter folder (no {ADAPTER_CONFIG}); "
                             "use \"default\", \"\" (the untuned model) or a peft adapter folder")
    return path


def resolve_device(device: str) -> str:
    import torch

    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GeneratorError(f"generator.device={device!r} but no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto``: bfloat16 on CUDA; on CPU bfloat16 only with native kernels, else float32."""
    import torch

    if dtype in ("", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16
        native_bf16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
        return torch.bfloat16 if native_bf16 else torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise GeneratorError(f"generator.dtype={dtype!r}: use auto, float32, bfloat16 or float16")
    return value


def resolve_decode_dtype(decode_dtype: str, device: str, dtype):
    """Weights for single-token decode steps (see ``fast_llama``); None = the model's own.

    ``auto``: float16 on the CPU when the model runs in float32 (decode steps are memory-bound;
    half the bytes, nearly half the time), else the model's dtype. ``model``: always the model's.
    """
    import torch

    if decode_dtype in ("", "model"):
        return None
    if decode_dtype == "auto":
        return torch.float16 if device == "cpu" and dtype == torch.float32 else None
    value = getattr(torch, decode_dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise GeneratorError(
            f"generator.decode_dtype={decode_dtype!r}: use auto, model, float16, bfloat16 or float32"
        )
    return None if value == dtype else value


def resolve_prefill(prefill: str, device: str, dtype, runner) -> bool:
    """Whether the prompt's prefill runs in int8 (``int8_prefill``).

    ``auto``: on x86 CPUs with oneDNN, for a float32 model on the lean forward whose decode steps
    already use half-precision weights (the CPU default; ``decode_dtype = "model"`` keeps every
    step exact). ``model``: never. ``int8``: always, or an error where it cannot run.
    """
    import torch

    from bot.generators import int8_prefill
    from bot.generators.fast_llama import FastLlama

    if prefill not in ("", "auto", "model", "int8"):
        raise GeneratorError(f"generator.prefill={prefill!r}: use auto, model or int8")
    if prefill in ("", "model"):
        return False
    possible = (device == "cpu" and dtype == torch.float32 and isinstance(runner, FastLlama)
                and int8_prefill.available())
    if prefill == "int8" and not possible:
        raise GeneratorError(
            "generator.prefill='int8' needs a float32 Llama-family model on an x86 CPU whose "
            "PyTorch has the oneDNN quantized engine; use prefill = 'auto' or 'model'"
        )
    return possible and (prefill == "int8" or runner.decode_dtype is not None)


class HFGenerator(UsageMixin):
    """Causal LM generator. ``model``: a local folder, a hub id, or ``default`` (needs ``data_dir``)."""

    def __init__(
        self,
        model: str | Path = "default",
        *,
        data_dir: Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 160,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        threads: int = 0,
        fast: bool = True,
        decode_dtype: str = "auto",
        decode_threads: int = 1,
        prefill: str = "auto",
        adapter: str = "",
    ):
        self.model_name = str(model)
        self.model_id = DEFAULT_MODEL_ID if self.model_name == "default" else self.model_name
        self.adapter_setting = adapter
        self.adapter = resolve_adapter(adapter, self.model_name)
        if self.adapter is not None:
            self.model_id = f"{self.model_id}+{self.adapter.name}"
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.device_setting, self.dtype_setting = device, dtype
        self.defaults = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
        }
        self.threads = threads
        self.fast = fast  # the lean Llama-family forward where it applies (see fast_llama)
        self.decode_dtype_setting = decode_dtype
        self.decode_threads = decode_threads
        self.prefill_setting = prefill
        self.tokenizer = None
        self.runner = None
        self.model = None
        self.device: str | None = None
        self.dtype = None
        self._load_lock = threading.Lock()
        self._model_thread = None  # decoding.ModelThread, made by load()
        self._tok_lock = threading.Lock()
        self._usage_local = threading.local()

    # -- loading ---------------------------------------------------------------------------
    def _model_path(self) -> str:
        if self.model_name == "default":
            from bot.generators.default_model import default_generator_dir

            if self.data_dir is None:
                raise GeneratorError("the default generator model needs a data_dir to convert into")
            return str(default_generator_dir(self.data_dir))
        path = Path(self.model_name).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise GeneratorError(f"{path}: not a model folder (no config.json)")
            return str(path)
        return self.model_name  # a hub id (needs the hub or its local cache)

    def _load_tokenizer(self, path: str) -> None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise GeneratorError(f"generator model {path!r}: cannot load its tokenizer ({exc})") from exc
        self.tokenizer = tokenizer

    def load(self) -> "HFGenerator":
        """Load tokenizer and weights (once; later calls return at once)."""
        with self._load_lock:
            if self.model is not None:
                return self
            import torch
            from transformers import AutoModelForCausalLM

            path = self._model_path()
            if self.tokenizer is None:
                self._load_tokenizer(path)
            device = resolve_device(self.device_setting)
            dtype = resolve_dtype(self.dtype_setting, device)
            if self.threads > 0 and device == "cpu":
                torch.set_num_threads(self.threads)
            try:
                # With an adapter: merged in float32, then cast (see the module docstring).
                model = AutoModelForCausalLM.from_pretrained(
                    path, dtype=torch.float32 if self.adapter is not None else dtype)
            except Exception as exc:
                raise GeneratorError(f"generator model {path!r}: cannot load ({exc})") from exc
            if self.adapter is not None:
                model = self._merge_adapter(model).to(dtype)
            elif self.adapter_setting == "default" and self.model_name == "default":
                log.info("no support adapter shipped at %s: serving the untuned %s", SHIPPED_ADAPTER,
                         DEFAULT_MODEL_ID)
            from bot.generators.decoding import ModelThread, make_runner

            model = model.to(device).eval()
            decode_dtype = resolve_decode_dtype(self.decode_dtype_setting, device, dtype)
            self.runner = make_runner(model, self.fast, decode_dtype, self.decode_threads)
            if resolve_prefill(self.prefill_setting, device, dtype, self.runner):
                self._calibrate_int8()
            self._model_thread = ModelThread()
            self._warm_up(model)
            self.model = model
            self.device, self.dtype = device, dtype
            self.eos_ids = self._find_eos_ids()
            self._max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        return self

    def _merge_adapter(self, model):
        """``model`` with the LoRA adapter ``self.adapter`` merged into its weights."""
        try:
            from peft import PeftModel

            merged = PeftModel.from_pretrained(model, str(self.adapter)).merge_and_unload()
        except Exception as exc:  # a wrong base (shapes), a corrupt file: say which adapter
            raise GeneratorError(f"generator.adapter {str(self.adapter)!r}: cannot be applied to "
                                 f"{self.model_name!r} ({exc})") from exc
        log.info("generator %s: adapter %s merged", self.model_name, self.adapter)
        return merged

    def _calibrate_int8(self) -> None:
        """Int8 prefill (``int8_prefill``), calibrated on one float32 prefill of a built-in
        grounded support prompt, at load (its cost: README, Generation)."""
        from bot.generators.int8_prefill import CALIBRATION_QUESTION, CALIBRATION_SOURCES, Int8Prefill
        from bot.prompting import build_messages
        from bot.core.settings import DialogueSettings

        messages = build_messages(CALIBRATION_QUESTION, CALIBRATION_SOURCES, [], DialogueSettings().system_prompt)
        self.runner.int8 = Int8Prefill.calibrate(self.runner, [self.prompt_ids(messages)])

    def _warm_up(self, model) -> None:
        """One short prefill and two steps on the model's thread, so that the first visitor does
        not pay for the math libraries' first-call setup (without it the first 512-token prefill
        is markedly slower than later ones; figures in the README). The prefix cache is emptied
        afterwards."""
        from bot.generators.decoding import Sampler, decode_tokens

        vocab = int(getattr(model.config, "vocab_size", 0) or 0)
        ids = list(range(1, min(33, vocab)))
        if ids:
            list(decode_tokens(self.runner, ids, 2, [], Sampler(), self._model_thread.run))
        clear = getattr(self.runner, "clear_prefix", None)
        if clear is not None:
            clear()

    def _ensure_tokenizer(self) -> None:
        if self.tokenizer is None:
            with self._load_lock:
                if self.tokenizer is None:
                    self._load_tokenizer(self._model_path())

    def _find_eos_ids(self) -> list[int]:
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in eos if isinstance(eos, (list, tuple)) else [eos]:
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    # -- tokens ----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's tokenizer (loads the tokenizer on first use)."""
        self._ensure_tokenizer()
        with self._tok_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """The chat-templated prompt as token ids, ending with the assistant turn's opening."""
        self._ensure_tokenizer()
        messages = validate_messages(messages)
        with self._tok_lock:
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            else:  # base models without a template (gpt2): a plain transcript
                text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation ------------------------------------------------------------------------
    def stream(self, messages: Sequence[dict], **params: Any) -> GenerationStream:
        """Stream the reply.

        Params: max_new_tokens, temperature, top_p, stop, repetition_penalty, seed, and
        ignore_eos (generate exactly max_new_tokens; for benchmarks).
        """
        self.load()
        opts = {**self.defaults, **{k: v for k, v in params.items() if v is not None}}
        prompt = self.prompt_ids(messages)
        max_new = int(opts["max_new_tokens"])
        if self._max_positions:
            room = self._max_positions - len(prompt)
            if room <= 0:
                raise GeneratorError(
                    f"prompt has {len(prompt)} tokens; the model {self.model_id} takes at most "
                    f"{self._max_positions}"
                )
            max_new = min(max_new, room)
        from bot.generators.decoding import Sampler

        try:
            sampler = Sampler(
                temperature=float(opts["temperature"]),
                top_p=float(opts["top_p"]),
                repetition_penalty=float(opts["repetition_penalty"]),
                seed=opts.get("seed"),
                device=self.device,
            )
        except ValueError as exc:
            raise GeneratorError(f"generator params: {exc}") from exc

        def pieces(handle: GenerationStream) -> Iterator[str]:
            eos = [] if opts.get("ignore_eos") else self.eos_ids
            yield from self._pieces(handle, prompt, max_new, sampler, stop_list(opts.get("stop")), eos)

        return GenerationStream(pieces, self.model_id, on_finish=self._record_usage)

    def _pieces(self, handle, prompt, max_new, sampler, stop, eos_ids) -> Iterator[str]:
        from bot.generators.decoding import IncrementalDetokenizer, decode_tokens

        handle.usage["prompt_tokens"] = len(prompt)
        detok = IncrementalDetokenizer(self.tokenizer)
        matcher = StopMatcher(stop)
        eos = set(eos_ids)
        tokens = decode_tokens(self.runner, prompt, max_new, eos_ids, sampler, self._model_thread.run)
        try:
            for token in tokens:
                handle.usage["completion_tokens"] += 1
                if token in eos:
                    handle.finish_reason = "stop"
                    break
                with self._tok_lock:
                    piece = detok.add(token)
                piece = matcher.feed(piece) if piece else ""
                if piece:
                    yield piece
                if matcher.stopped:
                    handle.finish_reason = "stop"
                    return
            else:
                handle.finish_reason = "length"
            with self._tok_lock:
                tail = matcher.feed(detok.flush())
            tail += matcher.flush()
            if tail:
                yield tail
        finally:
            tokens.close()
