"""A lean decode loop for transformers causal LMs: prefill once, then one forward per token.

Why not ``model.generate()`` with a ``TextIteratorStreamer`` thread: at batch 1 on a CPU each
decode step is a small forward, and what surrounds it counts. ``generate()`` grows the KV cache by
``torch.cat`` every step (a copy of the whole cache per layer, O(n) per token), runs its logits
processors and stopping criteria, hands every token to a streamer thread through a queue, and
computes logits for every prompt position unless told otherwise. Here:

* the KV cache is preallocated for prompt + max new tokens and written in place (``update`` returns
  views of the filled part, so attention sees exactly the same keys/values as with ``cat``);
* prefill asks for the last position's logits only (``logits_to_keep=1``);
* the loop runs in the caller's thread under ``torch.inference_mode`` and yields token ids as it
  goes (no streamer thread, no queue);
* Llama-family models skip transformers' general forward for ``fast_llama``'s lean one (same
  arithmetic on the same parameters); other models run their own forward (``HFRunner``);
* the sampler does only what was asked (argmax for greedy).

Greedy output equals ``generate()``'s token for token (tested on a tiny model).

Concurrency: all per-call state (cache, positions, sampler RNG) lives in the call. The model is
shared; the ``hf`` backend runs every step on one ``ModelThread`` (see there for why), so
concurrent streams interleave token by token.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Iterator, Sequence

import torch

try:  # transformers >= 4.56: per-layer cache objects
    from transformers.cache_utils import Cache, DynamicLayer
except ImportError:  # pragma: no cover - older transformers: fall back to the growing cache
    Cache = DynamicLayer = None  # type: ignore[assignment]


if DynamicLayer is not None:

    class PreallocatedLayer(DynamicLayer):
        """One layer's KV cache in buffers of fixed ``capacity`` tokens, filled in place."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            b, h, _, d = key_states.shape  # (B, kv_heads, T, head_dim)
            self.device = key_states.device
            self._k = key_states.new_empty((b, h, self.capacity, d))
            self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self.length, self.length + key_states.shape[-2]
            if end > self.capacity:
                raise RuntimeError(f"KV cache full: {end} > {self.capacity} tokens")
            self._k[:, :, start:end].copy_(key_states)
            self._v[:, :, start:end].copy_(value_states)
            self.length = end
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def reset(self) -> None:
            self.length = 0
            self.keys = self.values = None


def new_cache(capacity: int):
    """A KV cache for one call: preallocated when this transformers has cache layers."""
    if DynamicLayer is None:  # pragma: no cover
        from transformers import DynamicCache

        return DynamicCache()
    return Cache(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity))


def cache_kwarg(model) -> str:
    """The forward() keyword for the KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Sampler:
    """Pick the next token from last-position logits: greedy or temperature/top-p sampling.

    ``repetition_penalty`` follows transformers' ``RepetitionPenaltyLogitsProcessor`` (over
    prompt and reply tokens) so greedy output still matches ``generate()`` with the same penalty.
    """

    def __init__(
        self,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ):
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        self.temperature = temperature
        self.top_p = top_p
        self.penalty = repetition_penalty
        self.rng = None
        if temperature > 0:
            self.rng = torch.Generator(device=device)
            if seed is not None:
                self.rng.manual_seed(seed)
            else:
                self.rng.seed()

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None) -> int:
        """``logits``: (V,) float32; ``seen``: (n,) token ids so far (prompt + reply)."""
        if self.penalty != 1.0 and seen is not None and seen.numel():
            score = logits.gather(0, seen)
            score = torch.where(score < 0, score * self.penalty, score / self.penalty)
            logits = logits.scatter(0, seen, score)
        if self.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = sorted_p.cumsum(0) - sorted_p >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            return int(order[torch.multinomial(sorted_p, 1, generator=self.rng)])
        return int(torch.multinomial(probs, 1, generator=self.rng))


class HFRunner:
    """Any transformers causal LM through its own ``forward``, with a preallocated KV cache."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self._kw = cache_kwarg(model)

    def new_cache(self, capacity: int):
        cache = new_cache(capacity)
        cache.call_length = 0  # tokens fed so far (positions of the next ones)
        return cache

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Feed ``ids`` (T,) after what ``cache`` holds; return the last position's logits (V,)."""
        start = cache.call_length
        positions = torch.arange(start, start + ids.shape[0], device=self.device).unsqueeze(0)
        out = self.model(
            input_ids=ids.unsqueeze(0), position_ids=positions, use_cache=True, logits_to_keep=1,
            **{self._kw: cache},
        )
        cache.call_length = start + ids.shape[0]
        return out.logits[0, -1].float()


def make_runner(model, fast: bool = True, decode_dtype: torch.dtype | None = None, decode_threads: int = 0):
    """The lean Llama-family runner when the model allows it (and ``fast``), else ``HFRunner``.

    ``decode_dtype`` / ``decode_threads``: weights and CPU threads of single-token steps
    (``fast_llama`` only; see there).
    """
    from bot.generators import fast_llama

    if fast and fast_llama.supports(model):
        return fast_llama.FastLlama(model, decode_dtype=decode_dtype, decode_threads=decode_threads)
    return HFRunner(model)


class _Decode:
    """Per-call decoding state: the cache, the next input ids, the tokens seen (for penalties)."""

    def __init__(self, runner, prompt_ids: Sequence[int], capacity: int, sampler: Sampler):
        self.runner, self.sampler = runner, sampler
        self.device = runner.device
        self.cache = None
        self.capacity = capacity
        self.prompt = list(prompt_ids)
        self.ids: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def step(self) -> int:
        """One forward and one sampled token. All tensor work happens here, on the calling thread."""
        if self.cache is None:  # first step: allocate, then prefill the prompt
            self.cache = self.runner.new_cache(self.capacity)
            self.ids = torch.tensor(self.prompt, dtype=torch.long, device=self.device)  # (T,)
            if self.sampler.penalty != 1.0:
                self.seen = self.ids
            # The prompt: through the runner's prefix cache when it has one.
            logits = getattr(self.runner, "prefill", self.runner.forward)(self.ids, self.cache)
        else:
            logits = self.runner.forward(self.ids, self.cache)  # (V,) float32
        token = self.sampler(logits, self.seen)
        self.ids = torch.tensor([token], dtype=torch.long, device=self.device)  # (1,)
        if self.seen is not None:
            self.seen = torch.cat([self.seen, self.ids])
        return token


def decode_tokens(
    runner,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    sampler: Sampler,
    run: Callable[[Callable[[], int]], int] | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids; an id in ``eos_ids`` is yielded, then it stops.

    ``runner`` has ``new_cache(capacity)`` and ``forward(ids (T,), cache) -> logits (V,)``
    (``HFRunner`` or ``fast_llama.FastLlama``). ``run(step)`` executes one step and returns its
    token; by default in the caller's thread, ``ModelThread.run`` moves every step onto the
    model's own thread. The generator may be closed early (stop string found, client gone): the
    cache is simply dropped.
    """
    if max_new_tokens <= 0:
        return
    run = run or (lambda step: step())
    eos = set(int(i) for i in eos_ids)
    state = _Decode(runner, prompt_ids, len(prompt_ids) + max_new_tokens, sampler)
    for _ in range(max_new_tokens):
        token = run(state.step)
        yield token
        if token in eos:
            return


class ModelThread:
    """One long-lived thread that runs every forward of a model, in submission order.

    Why: torch's CPU ops parallelise with OpenMP, and every OS thread that runs them gets its own
    OpenMP team. A web server calling the model from dozens of request threads would create a
    team per thread (dozens of spinning workers on a few cores), and on a busy machine steps run
    from the main thread cost several times the CPU time of the same steps on a worker thread
    (an earlier measurement; figures in the README). Funnelling the steps through one thread keeps one team, and doubles as the model's
    lock: concurrent streams interleave token by token, first come first served.
    """

    def __init__(self, name: str = "supportbot-model"):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run(self, step: Callable[[], int]) -> int:
        return self._pool.submit(step).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class IncrementalDetokenizer:
    """Token ids in, text pieces out, never splitting a multi-byte character.

    Decodes a short window (the text since the last emitted piece) and emits only what decoding
    more tokens cannot change: nothing while the window ends in an incomplete UTF-8 sequence
    (U+FFFD). Joined, the pieces equal ``decode(all_ids, skip_special_tokens=True)``.
    The offsets scheme is text-generation-inference's.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]
