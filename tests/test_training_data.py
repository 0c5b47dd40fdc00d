"""Transcript import (JSONL, CSV, store) and the SFT dataset: examples, the loss mask, the split."""
from __future__ import annotations

import json

import pytest

from bot.prompting import build_messages
from bot.core.settings import DialogueSettings
from training.importers import CsvColumns, Transcript, TranscriptError, import_transcripts
from training.pii import PIIScrubber
from training.sft_dataset import (
    IGNORE,
    Collator,
    GoldSources,
    SFTExample,
    build_examples,
    encode_example,
    read_examples,
    split_by_conversation,
    write_dataset,
)

SHORT = DialogueSettings(system_prompt="Answer from the sources.", history_tokens=64, context_turns=6)


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


# -- import ---------------------------------------------------------------------------------------
def test_jsonl_both_formats_dedup_scrub_and_merge(tmp_path):
    f = _write(tmp_path / "t.jsonl", [
        {"id": "a", "turns": [{"role": "customer", "text": "Hi, I'm jo@x.org"},
                              {"role": "user", "text": "my card is 4111 1111 1111 1111"},
                              {"role": "agent", "text": "Thanks!"}], "metadata": {"email": "jo@x.org"}},
        {"id": "b", "turns": [{"role": "user", "text": "hi,  I'm JO@x.org\nmy card is 4111 1111 1111 1111"},
                              {"role": "bot", "text": "Thanks!"}]},  # same conversation as "a"
        {"id": "v1", "dialogue": "d1", "target": True, "turns": [{"role": "user", "text": "Free wifi?"}],
         "gold_doc_ids": ["h:1"], "gold_response": "Yes, wifi is free."},
        {"id": "v2", "dialogue": "d1", "target": False, "turns": [{"role": "user", "text": "Book it"}]},
    ])
    kept, report = import_transcripts([f], PIIScrubber())
    assert [t.id for t in kept] == ["a", "v1", "v2"]
    assert report.duplicates == 1 and report.read == 4 and report.kept == 3
    a = kept[0]
    assert a.turns[0] == {"role": "user", "text": "Hi, I'm [EMAIL]\nmy card is [CARD]"}
    assert a.metadata["email"] == "[EMAIL]"
    assert dict(report.pii) == {"EMAIL": 2, "CARD": 1}
    v1 = kept[1]
    assert v1.group == "d1" and kept[2].group == "d1"
    assert v1.turns[-1] == {"role": "agent", "text": "Yes, wifi is free.", "sources": ["h:1"]}


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = _write(tmp_path / "bad.jsonl", [
        {"id": "ok", "turns": [{"role": "user", "text": "q"}, {"role": "agent", "text": "a"}]},
        "{not json",
        {"id": "r", "turns": [{"role": "wizard", "text": "x"}]},
        {"id": "e", "turns": [{"role": "user", "text": "  "}]},
        {"turns": [{"role": "user", "text": "q"}]},
    ])
    with pytest.raises(TranscriptError) as err:
        import_transcripts([f], PIIScrubber())
    msgs = err.value.errors
    assert [m.split(": ", 1)[0] for m in msgs] == [f"{f}:2", f"{f}:3", f"{f}:4", f"{f}:5"]
    assert "turns[0].role 'wizard'" in msgs[1] and "turns[0].text" in msgs[2] and "'id'" in msgs[3]
    kept, report = import_transcripts([f], PIIScrubber(), strict=False)
    assert [t.id for t in kept] == ["ok"] and len(report.errors) == 4


def test_csv_custom_columns_sorted_by_timestamp(tmp_path):
    f = tmp_path / "chats.csv"
    f.write_text(
        "conv,who,body,at\n"
        "c1,agent,Refunds take 5 days.,2024-01-01T10:00:05Z\n"
        "c1,user,How long do refunds take?,2024-01-01T10:00:00Z\n"
        "c2,user,Call me on +44 20 7946 0958,2024-01-01T11:00:00\n"
        "c2,agent,Will do.,2024-01-01T11:00:09\n"
        ",user,orphan,2024-01-01T11:00:09\n"
    )
    cols = CsvColumns(conversation="conv", role="who", text="body", timestamp="at")
    kept, report = import_transcripts([f], PIIScrubber(), csv_columns=cols, strict=False)
    assert [(t.id, [x["role"] for x in t.turns]) for t in kept] == [("c1", ["user", "agent"]), ("c2", ["user", "agent"])]
    assert kept[1].turns[0]["text"] == "Call me on [PHONE]"
    assert report.errors == [f"{f}:6: column 'conv' is empty"]
    with pytest.raises(TranscriptError, match="missing column"):
        import_transcripts([f], PIIScrubber())  # default column names are not in this file


def test_store_import_learns_only_from_good_replies(settings):
    from bot.conversations import ConversationStore
    from bot.core.store import Database

    db = Database(settings.db_url)
    db.migrate()
    store = ConversationStore(db)
    bot = db.bot_id("default")
    c = store.create(bot, "v1")
    store.add_message(c, "user", "Where is my parcel? mail me at a@b.co")
    up = store.add_message(c, "bot", "It ships tomorrow.", sources=[{"n": 1, "doc_id": "ship"}])
    store.add_feedback(c, up, +1)
    store.add_message(c, "user", "And refunds?")
    down = store.add_message(c, "bot", "No idea.")
    store.add_feedback(c, down, -1)
    store.add_message(c, "user", "A person please")
    store.add_message(c, "human", "Refunds take 5 days.")
    store.add_message(c, "user", "Thanks")
    store.add_message(c, "bot", "You're welcome.")  # never rated
    store.set_status(c, "resolved")
    open_conv = store.create(bot, "v2")
    store.add_message(open_conv, "user", "hello")
    store.add_message(open_conv, "human", "hi")

    kept, report = import_transcripts([], PIIScrubber(), db=db, store_bot="default")
    assert [t.id for t in kept] == [c]
    turns = kept[0].turns
    assert turns[0]["text"] == "Where is my parcel? mail me at [EMAIL]"
    learnt = [t["text"] for t in turns if t["role"] == "agent" and t.get("train", True)]
    assert learnt == ["It ships tomorrow.", "Refunds take 5 days."]
    assert turns[1]["sources"] == ["ship"]
    examples = list(build_examples(kept, SHORT))
    assert [e.reply for e in examples] == learnt


# -- examples -------------------------------------------------------------------------------------
def _conv(cid, group=""):
    return Transcript(cid, [
        {"role": "agent", "text": "Welcome!"},  # no user message before it: no example
        {"role": "user", "text": "Is parking free?"},
        {"role": "agent", "text": "Yes, parking is free.", "sources": ["p:1", "p:9"]},
        {"role": "user", "text": "And breakfast?"},
        {"role": "agent", "text": "Breakfast is 10 dollars.", "sources": ["b:1"]},
    ], group=group)


def test_one_example_per_agent_turn_with_the_serving_prompt():
    kb = GoldSources({"p:1": {"doc_id": "p:1", "title": "Hotel", "text": "Parking is free."},
                      "b:1": {"doc_id": "b:1", "title": "Hotel", "text": "Breakfast costs 10."}})
    # A second instance of the same dialogue repeats its first turns: no duplicate examples.
    prefix = Transcript("x2", _conv("x").turns[:3], group="g")
    examples = list(build_examples([_conv("x", "g"), prefix], SHORT, sources=kb))
    assert [(e.turn, e.reply) for e in examples] == [(2, "Yes, parking is free."), (4, "Breakfast is 10 dollars.")]
    second = examples[1]
    assert second.sources == ["b:1"]
    assert second.messages == build_messages(
        "And breakfast?", [kb.kb["b:1"]],
        [{"role": "agent", "text": "Welcome!"}, {"role": "user", "text": "Is parking free?"},
         {"role": "agent", "text": "Yes, parking is free."}],
        SHORT.system_prompt, history_tokens=SHORT.history_tokens,
    )
    assert "[1] Hotel: Breakfast costs 10." in second.messages[-1]["content"]
    assert examples[0].sources == ["p:1"]  # unknown ids are left out


def test_split_is_by_conversation_and_reproducible(tmp_path):
    examples = [SFTExample(f"g{i % 10}", i, [{"role": "user", "content": "q"}], f"r{i}") for i in range(50)]
    train, dev = split_by_conversation(examples, 0.2, seed=3)
    assert {e.conversation for e in train}.isdisjoint({e.conversation for e in dev})
    assert len({e.conversation for e in dev}) == 2 and len(train) + len(dev) == 50
    assert split_by_conversation(examples, 0.2, seed=3) == (train, dev)
    stats = write_dataset(tmp_path / "ds", train, dev, {"sources": "gold"})
    again = write_dataset(tmp_path / "ds2", train, dev, {"sources": "gold"})
    assert stats["data_sha256"] == again["data_sha256"] and stats["dev_conversations"] == 2
    assert read_examples(tmp_path / "ds" / "dev.jsonl") == dev


# -- tokenisation and the mask --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def test_mask_covers_exactly_the_reply_token_by_token(tokenizer):
    messages = build_messages("Is parking free?", [{"title": "Hotel", "text": "Parking is free."}],
                              [{"role": "user", "text": "hi"}, {"role": "agent", "text": "Hello!"}],
                              "Answer from the sources.")
    reply = "Yes, parking is free [1]."
    enc = encode_example(tokenizer, messages, reply, max_length=512)
    ids, labels = enc["input_ids"], enc["labels"]
    # The prompt is tokenised exactly as the generator tokenises it when serving.
    served = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    served = served["input_ids"] if hasattr(served, "keys") else served
    n = len(served)
    assert ids[:n] == list(served)
    for i, (tok, lab) in enumerate(zip(ids, labels)):
        if i < n:
            assert lab == IGNORE, f"prompt token {i} ({tokenizer.decode([tok])!r}) carries loss"
        else:
            assert lab == tok, f"reply token {i} is not its own label"
    assert tokenizer.decode(ids[n:]) == reply + tokenizer.eos_token
    assert labels[-1] == tokenizer.eos_token_id  # learns to stop, nothing after end-of-turn


def test_too_long_prompt_is_skipped_and_long_reply_truncated(tokenizer):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert encode_example(tokenizer, messages, "a " * 50, max_length=prompt_len + 4) is None
    enc = encode_example(tokenizer, messages, "refunds " * 200, max_length=prompt_len + 20)
    assert len(enc["input_ids"]) == prompt_len + 20
    assert enc["labels"][prompt_len:] == enc["input_ids"][prompt_len:]
    assert tokenizer.eos_token_id not in enc["labels"]


def test_collator_pads_right_and_masks_padding():
    batch = Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
