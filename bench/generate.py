"""Time to first token and decode speed: the ``hf`` backend against plain ``model.generate()``.

All run in this process, on the same model object, greedy, exactly ``--new-tokens`` new tokens
each (end-of-sequence ignored), on ``--repeats`` different grounded prompts of ``--prompt-tokens``
tokens (system prompt + numbered knowledge-base sources built by the product's prompt builder;
each prompt its own question and its own sources, so consecutive prompts share only the system
prompt and chat-template header), all paths on each prompt in turn so that load from other
processes hits them alike.

* ``baseline_generate``: ``model.generate()`` in a thread with a ``TextIteratorStreamer`` (the usual
  way to stream from transformers); its first-token time is when the streamer receives the first
  new token id (before detokenisation: slightly in its favour).
* ``hf_backend``: ``HFGenerator.stream()`` as shipped and as the dialogue manager calls it: the lean
  Llama-family forward of ``fast_llama`` with float16 decode weights on the CPU, its prefix cache
  holding the previous visitor's prompt (so it reuses the shared system prompt). First-token time
  is when the first text piece arrives.
* ``hf_backend_cold``: the same with the prefix cache emptied first (a bot's very first question).
  On x86 CPUs the shipped backend prefills in int8 (``int8_prefill``, ``generator.prefill = auto``).
* ``hf_float32_prefill``: the shipped backend with the prompt's prefill in float32
  (``generator.prefill = "model"``), float16 decode weights, prefix cache as ``hf_backend``.
* ``hf_exact``: the lean forward in the model's own dtype, no prefix cache: token for token what
  ``generate()`` gives (``generator.decode_dtype = "model"``).
* ``hf_forward_loop``: the same loop through the model's own transformers forward.
* decode tokens/s = (new tokens - 1) / (time of last token - time of first token).
* ``prefill_quality``: what the int8 prefill costs, teacher-forced over the measured prompts'
  tokens: perplexity of the model's own float32 forward against the int8 prefill's, and the share
  of positions where both predict the same next token.
* the paths' order rotates from prompt to prompt (the first path after ``generate()`` pays for
  the switch of threads).
* each figure also in CPU seconds of this process (``cpu_*``): on a machine shared with other
  work, wall time mostly measures the neighbours; CPU time measures the work done (with more than
  one thread it includes the threads' short spins).

Prints one JSON object: per (device, dtype, threads) the medians of every path, their ratios to
the baseline (``ttft_speedup`` = baseline / path, ``decode_speedup`` = path / baseline) and how far
each path's greedy tokens agree with ``generate()``'s on every prompt. Runs on the CPU in
float32 (``--dtypes`` adds others), and on CUDA in bfloat16 when a GPU is present.

    python bench/generate.py                      # default model (converted once under --data-dir)
    python bench/generate.py --model PATH --prompt-tokens 512 --new-tokens 64 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bot  # noqa: E402,F401 - before torch: sets OpenMP's passive waiting (see bot/__init__.py)

QUESTIONS = [
    "Is there free parking, and can I check in early?",
    "Do they have wifi in the rooms, and is it free?",
    "Can I bring my dog, and is there a fee for pets?",
    "What time does breakfast start, and is it included?",
    "Is there an airport shuttle or a taxi service?",
]


def kb_sources(kb: Path, limit: int = 400) -> list[dict]:
    """Knowledge-base entries of one entity (JSONL in the shared format), or the sample FAQ."""
    if kb.suffix == ".jsonl" and kb.is_file():
        rows = [json.loads(line) for line, _ in zip(kb.open(encoding="utf-8"), range(20000))]
        faq = [r for r in rows if r.get("metadata", {}).get("doc_type", "faq") == "faq"]
        title = max({r["title"] for r in faq}, key=lambda t: sum(r["title"] == t for r in faq))
        return [{"title": r["title"], "text": r["text"]} for r in faq if r["title"] == title][:limit]
    import csv

    with kb.open(encoding="utf-8") as fh:
        return [{"title": r.get("title", ""), "text": f"{r['question']}\n{r['answer']}"} for r in csv.DictReader(fh)]


def grounded_prompt(gen, sources: list[dict], n_tokens: int, question: str = QUESTIONS[0]) -> list[dict]:
    """Chat messages whose templated prompt has about ``n_tokens`` tokens (at most that many).

    Sources are taken in order and cut at a character budget, found by bisection.
    """
    from bot.prompting import build_messages
    from bot.core.settings import DialogueSettings

    system = DialogueSettings().system_prompt

    def messages(budget: int) -> list[dict]:
        used, left = [], budget
        for src in sources:
            if left <= 0:
                break
            used.append(dict(src, text=src["text"][:left]))
            left -= len(src["text"])
        return build_messages(question, used, [], system)

    lo, hi = 0, sum(len(s["text"]) for s in sources)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(gen.prompt_ids(messages(mid))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return messages(lo)


def run_baseline(gen, prompt_ids: list[int], new_tokens: int) -> tuple[dict, list[int]]:
    import torch
    from transformers import TextIteratorStreamer

    class TimedStreamer(TextIteratorStreamer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.times: list[float] = []
            self.cpu: list[float] = []
            self.ids: list[int] = []

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.times.append(time.perf_counter())
                self.cpu.append(time.process_time())
                self.ids.extend(int(v) for v in value.reshape(-1))
            super().put(value)

    streamer = TimedStreamer(gen.tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = torch.tensor([prompt_ids], device=gen.device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, do_sample=False, streamer=streamer)
    start, cpu0 = time.perf_counter(), time.process_time()
    worker = threading.Thread(target=gen.model.generate, kwargs=kwargs)
    worker.start()
    text = "".join(streamer)
    worker.join()
    t, c = streamer.times, streamer.cpu
    assert text and len(t) == new_tokens, (len(t), new_tokens)
    return timings(start, cpu0, t[0], c[0], t[-1], c[-1], len(t)), streamer.ids


def timings(start, cpu0, first, cpu_first, last, cpu_last, n) -> dict:
    """Wall-clock figures, and the same in CPU seconds of this process (which other processes'
    load barely changes: the fairer comparison on a shared machine)."""
    return {
        "ttft_ms": (first - start) * 1000, "decode_tok_s": (n - 1) / (last - first),
        "cpu_ttft_ms": (cpu_first - cpu0) * 1000, "cpu_decode_tok_s": (n - 1) / (cpu_last - cpu_first),
    }


def run_backend(gen, messages: list[dict], new_tokens: int) -> dict:
    start, cpu0 = time.perf_counter(), time.process_time()
    stream = gen.stream(messages, max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    first = None
    for _piece in stream:
        if first is None:
            first, cpu_first = time.perf_counter(), time.process_time()
            first_count = stream.usage["completion_tokens"]
    end, cpu_end = time.perf_counter(), time.process_time()
    n = stream.usage["completion_tokens"]
    assert n == new_tokens and first is not None, n
    # Count from the first shown piece: (n - first_count + 1) tokens over [first, end].
    return timings(start, cpu0, first, cpu_first, end, cpu_end, n - first_count + 1)


def greedy_ids(gen, messages: list[dict], new_tokens: int) -> tuple[list[int], list[int]]:
    """Greedy tokens of plain ``generate()`` and of the backend's loop, each up to its first EOS."""
    import torch

    from bot.generators.decoding import Sampler, decode_tokens

    prompt = gen.prompt_ids(messages)
    ids = torch.tensor([prompt], device=gen.device)
    with torch.inference_mode():
        out = gen.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, eos_token_id=gen.eos_ids)
    reference = out[0, len(prompt):].tolist()
    return reference, list(decode_tokens(gen.runner, prompt, new_tokens, gen.eos_ids, Sampler()))


def with_runner(gen, runner, fn, *args):
    """Run ``fn(gen, *args)`` with ``gen`` decoding through ``runner`` (same model object)."""
    saved, gen.runner = gen.runner, runner
    try:
        return fn(gen, *args)
    finally:
        gen.runner = saved


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def prompts_for(gen, sources: list[dict], n_tokens: int, count: int) -> list[list[dict]]:
    """``count`` different grounded prompts of about ``n_tokens`` tokens: each its own question
    and its own slice of the sources, so consecutive prompts share only the system prompt and the
    chat-template header (what a bot's successive visitors share)."""
    step = max(1, len(sources) // max(count, 1))
    out = []
    for i in range(count):
        rotated = sources[i * step:] + sources[:i * step]
        out.append(grounded_prompt(gen, rotated, n_tokens, QUESTIONS[i % len(QUESTIONS)]))
    return out


def agreement(reference: list[int], mine: list[int]) -> dict:
    """How far two greedy token sequences agree: first divergence and share of equal positions."""
    n = min(len(reference), len(mine))
    first = next((i for i in range(n) if reference[i] != mine[i]), n)
    same = sum(a == b for a, b in zip(reference, mine))
    return {"identical": reference == mine, "first_divergence": None if reference == mine else first,
            "same_positions": round(same / max(len(reference), 1), 3)}


def prefill_quality(gen, prompts: list[list[dict]]) -> dict:
    """Teacher-forced perplexity over the prompts' own tokens: the model's float32 forward against
    the int8 prefill (its hidden states through the same final norm and LM head)."""
    import math

    import torch
    import torch.nn.functional as F

    runner = gen.runner
    nll = {"float32": 0.0, "int8": 0.0}
    same = count = 0
    with torch.inference_mode():
        for messages in prompts:
            ids = torch.tensor(gen.prompt_ids(messages), device=gen.device)
            exact = gen.model(ids.unsqueeze(0)).logits[0].float()
            h = runner.int8.hidden(ids, runner.new_cache(len(ids)))
            int8 = runner.lm_head(runner._rms_norm(h, runner.norm_w, runner.norm_eps)).float()
            nll["float32"] += F.cross_entropy(exact[:-1], ids[1:], reduction="sum").item()
            nll["int8"] += F.cross_entropy(int8[:-1], ids[1:], reduction="sum").item()
            same += int((exact.argmax(-1) == int8.argmax(-1)).sum())
            count += len(ids) - 1
    return {"tokens": count, "perplexity_float32": round(math.exp(nll["float32"] / count), 3),
            "perplexity_int8": round(math.exp(nll["int8"] / count), 3),
            "same_next_token": round(same / (count + len(prompts)), 3)}


def bench_config(model_dir: str, device: str, dtype: str, threads: int, sources, args) -> dict:
    import torch

    from bot.generators.decoding import HFRunner
    from bot.generators.fast_llama import FastLlama
    from bot.generators.hf_generator import HFGenerator

    if threads:
        torch.set_num_threads(threads)
    gen = HFGenerator(model_dir, device=device, dtype=dtype).load()
    shipped = gen.runner
    int8 = getattr(shipped, "int8", None) is not None  # prompts prefilled in int8 (int8_prefill)
    paths = {"hf_backend": shipped, "hf_backend_cold": shipped}
    if int8:
        paths["hf_float32_prefill"] = FastLlama(gen.model, decode_dtype=shipped.decode_dtype,
                                                decode_threads=shipped.decode_threads)
    if isinstance(shipped, FastLlama):
        # The same lean forward in the model's own dtype with no prefix cache: token for token
        # what generate() gives.
        paths["hf_exact"] = FastLlama(gen.model, decode_dtype=None, prefix_cache=False)
    paths["hf_forward_loop"] = HFRunner(gen.model)
    prompts = prompts_for(gen, sources, args.prompt_tokens, args.repeats + 1)
    warm_prompt, prompts = prompts[0], prompts[1:]
    # Warm-up: first-call allocations and kernel selection, every path.
    for runner in paths.values():
        with_runner(gen, runner, run_backend, warm_prompt, 4)
    run_baseline(gen, gen.prompt_ids(warm_prompt), 4)
    runs: dict[str, list[dict]] = {"baseline_generate": [], **{name: [] for name in paths}}
    reused = []
    # Whichever path runs right after generate() (its own thread) measured ~50-70 ms slower first
    # token: the order rotates per prompt (hf_backend stays just before hf_backend_cold, whose
    # emptied cache it must not follow).
    units = [["hf_backend", "hf_backend_cold"]] + [[n] for n in paths if not n.startswith("hf_backend")]
    for i, messages in enumerate(prompts):
        runs["baseline_generate"].append(run_baseline(gen, gen.prompt_ids(messages), args.new_tokens)[0])
        k = i % len(units)
        for name in [n for unit in units[k:] + units[:k] for n in unit]:
            runner = paths[name]
            if name == "hf_backend_cold" and hasattr(runner, "clear_prefix"):
                runner.clear_prefix()
            runs[name].append(with_runner(gen, runner, run_backend, messages, args.new_tokens))
            if name == "hf_backend":
                reused.append(getattr(runner, "reused_tokens", 0))
                # The next prompt finds this one in the prefix cache (shared system prompt only).
    greedy = {}
    for name in ("hf_backend", "hf_float32_prefill", "hf_exact", "hf_forward_loop"):
        if name in paths:
            checks = []
            for messages in prompts:
                reference, mine = with_runner(gen, paths[name], greedy_ids, messages, args.new_tokens)
                checks.append(agreement(reference, mine))
            greedy[name] = {
                "identical_prompts": sum(c["identical"] for c in checks), "prompts": len(checks),
                "same_positions": round(statistics.mean(c["same_positions"] for c in checks), 3),
                "first_divergences": [c["first_divergence"] for c in checks],
            }
    quality = prefill_quality(gen, prompts) if int8 else None
    keys = ("ttft_ms", "decode_tok_s", "cpu_ttft_ms", "cpu_decode_tok_s")
    med = {name: {k: median_of(r, k) for k in keys} for name, r in runs.items()}
    base = med["baseline_generate"]

    def ratios(name: str) -> dict:
        m = med[name]
        return {"ttft_speedup": round(base["ttft_ms"] / m["ttft_ms"], 3),
                "decode_speedup": round(m["decode_tok_s"] / base["decode_tok_s"], 3),
                "cpu_ttft_speedup": round(base["cpu_ttft_ms"] / m["cpu_ttft_ms"], 3),
                "cpu_decode_speedup": round(m["cpu_decode_tok_s"] / base["cpu_decode_tok_s"], 3)}

    result = {
        "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
        "runner": type(shipped).__name__,
        "decode_dtype": str(getattr(shipped, "decode_dtype", None) or dtype).replace("torch.", ""),
        "prompt_tokens": [len(gen.prompt_ids(m)) for m in prompts],
        "prefix_cache_reused_tokens": reused, "new_tokens": args.new_tokens, **med,
        "vs_generate": {name: ratios(name) for name in paths},
        "greedy_vs_generate": greedy,
        "int8_prefill": int8,
        "prefill_quality": quality,
        "runs": runs,
    }
    summary = {k: v for k, v in result.items() if k != "runs"}
    print(f"# {json.dumps(summary)}", file=sys.stderr, flush=True)
    del gen, paths, shipped
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model folder or 'default' (SmolLM2-135M-Instruct)")
    ap.add_argument("--data-dir", default=str(ROOT / "var"), help="where the default model is converted")
    ap.add_argument("--kb", default=str(ROOT.parent / "shared" / "data" / "dstc11" / "kb.jsonl"),
                    help="sources for the prompt (KB JSONL; falls back to samples/faq/faq.csv)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32",
                    help="CPU dtypes of the model to measure (bfloat16 is slow without native kernels)")
    ap.add_argument("--threads", default="0", help="comma list of torch CPU threads (0 = torch default)")
    ap.add_argument("--no-cpu", action="store_true", help="measure only on CUDA")
    args = ap.parse_args(argv)

    import torch

    model_dir = args.model
    t0 = time.perf_counter()
    if model_dir == "default":
        from bot.generators.default_model import default_generator_dir

        model_dir = str(default_generator_dir(Path(args.data_dir)))
    prepare_s = time.perf_counter() - t0
    kb = Path(args.kb)
    sources = kb_sources(kb if kb.is_file() else ROOT / "samples" / "faq" / "faq.csv")

    configs = []
    if not args.no_cpu:
        for threads in (int(t) for t in args.threads.split(",")):
            configs += [("cpu", d.strip(), threads) for d in args.dtypes.split(",") if d.strip()]
    if torch.cuda.is_available():
        configs.append(("cuda", "bfloat16", 0))
    results = []
    for device, dtype, threads in configs:
        print(f"# {device} {dtype} threads={threads or 'default'} ...", file=sys.stderr, flush=True)
        results.append(bench_config(model_dir, device, dtype, threads, sources, args))

    load_t0 = time.perf_counter()
    from bot.generators.hf_generator import HFGenerator

    HFGenerator(model_dir, device="cpu", dtype="float32").load()
    load_s = time.perf_counter() - load_t0
    cpu = [r for r in results if r["device"] == "cpu"]
    best = max(cpu, key=lambda r: r["hf_backend"]["decode_tok_s"]) if cpu else None
    best_keys = ("dtype", "decode_dtype", "threads", "prompt_tokens", "prefix_cache_reused_tokens",
                 "baseline_generate", "hf_backend", "hf_backend_cold", "hf_float32_prefill", "hf_exact",
                 "vs_generate", "greedy_vs_generate", "int8_prefill", "prefill_quality")
    print(json.dumps({
        "model": model_dir,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "first_start_prepare_s": round(prepare_s, 2),
        "converted_model_load_s": round(load_s, 2),
        "results": results,
        "best_cpu": None if best is None else {k: best[k] for k in best_keys if k in best},
    }, indent=2))


if __name__ == "__main__":
    main()
