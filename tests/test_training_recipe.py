"""Training recipes (training/recipe.py, `supportbot train --recipe`) and the adapter applied at load
(bot/generators/hf_generator.py ``adapter``), on the tiny model and tiny data written here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent

KB = [
    {"id": "hotel:1:faq:1", "title": "ALLENBELL", "text": "Is parking free?\nYes, parking is free.",
     "question": "Is parking free?", "answer": "Yes, parking is free.",
     "metadata": {"entity_name": "ALLENBELL", "doc_type": "faq"}},
    {"id": "hotel:1:faq:2", "title": "ALLENBELL", "text": "Is WiFi free?\nYes, WiFi is free in all rooms.",
     "question": "Is WiFi free?", "answer": "Yes, WiFi is free in all rooms.",
     "metadata": {"entity_name": "ALLENBELL", "doc_type": "faq"}},
]
FAQ = """# Acme FAQ

### Q: How long does delivery take?
**A:** Delivery takes 3 business days. Call +1 415 555 0134 to speed it up.

### Q: Can I return an opened item?
**A:** Only within 14 days, in its original box.
"""
HELD_OUT_FAQ = """# Zeta FAQ

### Q: Do you sell gift cards?
**A:** Yes, gift cards from 10 to 200 dollars.
"""


def _dialogues(n):
    return [{"id": f"d{i}", "dialogue": f"g{i}", "target": True, "turns": [
        {"role": "user", "text": f"I need a hotel for {i + 1} nights."},
        {"role": "agent", "text": "The Allenbell has rooms."},
        {"role": "user", "text": "Is parking free at the Allenbell?" if i % 2 else "Is WiFi free there?"}],
        "gold_doc_ids": ["hotel:1:faq:1" if i % 2 else "hotel:1:faq:2"],
        "gold_response": "Yes, parking is free." if i % 2 else "Yes, WiFi is free in all rooms."} for i in range(n)]


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "proj"
    _write(root / "data" / "kb.jsonl", KB)
    _write(root / "data" / "dialogues_train.jsonl", _dialogues(6))
    _write(root / "data" / "dialogues_dev.jsonl", _dialogues(2))
    _write(root / "data" / "bitext.jsonl", [
        {"id": "b1", "turns": [{"role": "user", "text": "how do I cancel my order"},
                               {"role": "agent", "text": "Open Orders and click Cancel."}],
         "metadata": {"intent": "cancel_order"}},
        {"id": "b2", "turns": [{"role": "user", "text": "cancel it"},
                               {"role": "agent", "text": "Go to {{Website URL}} and cancel."}],
         "metadata": {"intent": "cancel_order"}},
        {"id": "b3", "turns": [{"role": "user", "text": "write a review"},
                               {"role": "agent", "text": "Thanks for the review."}],
         "metadata": {"intent": "review"}},
    ])
    corpus = root / "corpus"
    (corpus / "acme").mkdir(parents=True)
    (corpus / "acme" / "faq.md").write_text(FAQ)
    (corpus / "acme" / "questions.json").write_text(json.dumps({"company": "Acme", "questions": [
        {"q": "how many days for delivery", "kind": "in_scope", "entry": "How long does delivery take?",
         "expect": ["3 business days"]},
        {"q": "can i send back an opened thing", "kind": "trap", "entry": "Can I return an opened item?",
         "expect": ["14 days"], "contradiction": ["any time"]},
        {"q": "do you sell cars", "kind": "out_of_scope"}]}))
    (corpus / "zeta").mkdir()
    (corpus / "zeta" / "faq.md").write_text(HELD_OUT_FAQ)
    (corpus / "zeta" / "questions.json").write_text(json.dumps({"company": "Zeta", "questions": [
        {"q": "gift card prices?", "kind": "in_scope", "entry": "Do you sell gift cards?", "expect": ["10 to 200"]}]}))
    (corpus / "split.json").write_text(json.dumps({"acme": "fit", "zeta": "held_out"}))
    return root


RECIPE = """
name = "tiny-lora"
root = "."
out = "work"
install = "shipped/tiny-lora"
seed = 0
dev_fraction = 0.3

[data.dstc11]
dialogues = "data/dialogues_train.jsonl"
kb = "data/kb.jsonl"
sources = "retrieve"

[data.bitext]
transcripts = "data/bitext.jsonl"
intents = ["cancel_order"]
per_intent = 5

[data.faq]
corpus = "corpus"
parts = ["fit"]

[lora]
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj"]

[train]
lr = 0.01
batch_size = 2
max_length = 512
eval_every = 1
warmup_ratio = 0.0
mixed_precision = "no"

[evaluate]
kb = "data/kb.jsonl"
dialogues = "data/dialogues_dev.jsonl"
corpus = "corpus"
answer_part = "held_out"
"""


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    monkeypatch.setenv("SUPPORTBOT_GENERATOR__MAX_NEW_TOKENS", "6")
    monkeypatch.setenv("SUPPORTBOT_GENERATOR__DEVICE", "cpu")
    monkeypatch.setenv("SUPPORTBOT_DIALOGUE__ANSWER_THRESHOLD", "0")
    monkeypatch.setenv("SUPPORTBOT_DIALOGUE__CLARIFY_THRESHOLD", "0")
    from bot.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), *map(str, args)])

    return invoke


def _recipe(data: Path, text: str = RECIPE) -> Path:
    path = data / "recipe.toml"
    path.write_text(text)
    return path


def test_shipped_recipe_loads_with_training_data_only():
    from bot.core.settings import TrainingSettings
    from training.recipe import load_recipe, training_settings

    recipe = load_recipe(REPO / "training" / "recipes" / "support-lora.toml")
    assert set(recipe.data) == {"dstc11", "bitext", "faq"}
    assert recipe.data["dstc11"]["dialogues"] == (REPO.parent / "shared" / "data" / "dstc11" / "dialogues_train.jsonl").resolve()
    assert recipe.data["dstc11"]["sources"] == "retrieve" and recipe.data["faq"]["parts"] == ["fit"]
    assert recipe.data["dstc11"]["replies"] == "all"  # the default: every agent turn
    assert recipe.install == REPO / "bot" / "generators" / "adapters" / "support-lora"
    ts = training_settings(recipe, TrainingSettings())
    assert (ts.lora_r, ts.lora_alpha, ts.method, ts.merge_lora) == (16, 32, "lora", False)
    assert "down_proj" in ts.lora_target_modules and ts.max_length == 768


def test_recipe_trains_a_step_evaluates_and_installs_the_adapter(run, data, tiny_lm_dir):
    res = run("train", "--recipe", _recipe(data), "--base", tiny_lm_dir, "--max-steps", "1", "--eval-limit", "2")
    assert res.exit_code == 0, res.output
    assert "1 steps, dev loss" in res.output and "adapter installed in" in res.output

    stats = json.loads((data / "work" / "dataset" / "stats.json").read_text())
    assert set(stats["by_source"]) == {"dstc11", "bitext", "faq"}
    assert stats["by_source"]["bitext"]["conversations"] == 1  # the placeholder reply and other intents left out
    assert stats["pii"] == {"PHONE": 2}  # the FAQ answer's phone, in its entry and its paraphrase
    rows = [json.loads(line) for name in ("train.jsonl", "dev.jsonl")
            for line in (data / "work" / "dataset" / name).read_text().splitlines()]
    text = json.dumps(rows)
    assert "gift card" not in text.lower()  # the held-out company never trains
    faq = [r for r in rows if r["conversation"].startswith("faq:acme")]
    assert len(faq) == 4  # two entries, two visitor questions (the out-of-scope one has no reply)
    assert all(r["sources"] for r in faq) and any("3 business days" in r["messages"][-1]["content"] for r in faq)
    dstc = [r for r in rows if r["conversation"].startswith("g")]
    assert dstc and all(set(r["sources"]) <= {d["id"] for d in KB} for r in dstc)

    again = run("train", "--recipe", _recipe(data), "--base", tiny_lm_dir, "--max-steps", "1", "--no-evaluate",
                "--no-install", "--no-resume")
    assert again.exit_code == 0 and "built from the same inputs before, reused" in again.output, again.output

    shipped = data / "shipped" / "tiny-lora"
    assert sorted(p.name for p in shipped.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors", "training_card.json"]
    assert (shipped / "adapter_model.safetensors").stat().st_size < 20e6
    card = json.loads((shipped / "training_card.json").read_text())
    assert card["data"]["data_sha256"] == stats["data_sha256"] and card["data"]["pii"] == {"PHONE": 2}
    assert card["recipe"]["by_source"]["faq"]["train_examples"] + card["recipe"]["by_source"]["faq"]["dev_examples"] == 4
    assert card["hyperparameters"]["lora_r"] == 4 and card["hyperparameters"]["lora_target_modules"] == ["q_proj", "v_proj"]
    assert card["machine"]["cpu"] and card["metrics"]["train_seconds"] > 0
    # the card ships with the adapter: no path of this machine, only ones relative to the recipe's root
    assert (card["recipe"]["path"], card["data"]["path"]) == ("recipe.toml", "work/dataset")
    for label in ("untuned", "tuned"):
        figures = card["evaluation"][label]
        assert figures["dialogues"]["n"] >= 2 and "rougeL" in figures["dialogues"]
        assert figures["answers"]["all"]["n"] == 1  # the held-out company's one question
    assert "## Recipe" in (shipped / "README.md").read_text()

    # The installed adapter is applied at load: it changes the weights it wraps, and only those.
    from bot.generators.hf_generator import HFGenerator

    opts = dict(device="cpu", dtype="float32", decode_dtype="model", prefill="model")
    tuned = HFGenerator(tiny_lm_dir, adapter=str(shipped), **opts).load().model.state_dict()
    base = HFGenerator(tiny_lm_dir, adapter="", **opts).load().model.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not bool((tuned[q] == base[q]).all())
    assert bool((tuned["model.layers.0.mlp.up_proj.weight"] == base["model.layers.0.mlp.up_proj.weight"]).all())


def test_missing_data_file_is_named(run, data, tiny_lm_dir):
    (data / "data" / "kb.jsonl").unlink()
    res = run("train", "--recipe", _recipe(data), "--base", tiny_lm_dir)
    assert res.exit_code == 1 and "[data.dstc11] kb:" in res.output and "kb.jsonl not found" in res.output
    res = run("train", "--recipe", data / "nope.toml")
    assert res.exit_code == 1 and "nope.toml: recipe file not found" in res.output


def test_optional_source_is_skipped_with_a_note(data):
    from training.recipe import check_files, load_recipe

    (data / "data" / "bitext.jsonl").unlink()
    recipe = load_recipe(_recipe(data, RECIPE.replace('per_intent = 5', 'per_intent = 5\noptional = true')))
    notes = check_files(recipe)
    assert "bitext" not in recipe.data and "[data.bitext] skipped" in notes[0]


def test_knowledge_replies_learn_only_the_grounded_gold_reply(data):
    """replies = "knowledge": an instance's gold reply is learnt, the booking reply before it is
    context only, and an instance without a gold reply (target false) brings nothing."""
    from bot.core.errors import SupportbotError
    from training.importers import import_transcripts
    from training.pii import PIIScrubber
    from training.recipe import knowledge_replies_only, load_recipe

    rows = _dialogues(2) + [{"id": "n1", "dialogue": "gn", "target": False, "turns": [
        {"role": "user", "text": "A taxi please."}, {"role": "agent", "text": "Where to?"},
        {"role": "user", "text": "To the station."}]}]
    transcripts, _ = import_transcripts([_write(data / "data" / "mixed.jsonl", rows)], PIIScrubber())
    kept = knowledge_replies_only(transcripts)
    assert [t.id for t in kept] == ["d0", "d1"]
    learnt = [t["text"] for tr in kept for t in tr.turns if t["role"] == "agent" and t.get("train") is not False]
    assert learnt == ["Yes, WiFi is free in all rooms.", "Yes, parking is free."]
    assert [t["text"] for t in kept[0].turns] == [t["text"] for t in transcripts[0].turns]  # context kept
    assert "train" not in transcripts[0].turns[1]  # the imported transcripts are not changed

    recipe = load_recipe(_recipe(data, RECIPE.replace('[data.dstc11]', '[data.dstc11]\nreplies = "knowledge"')))
    assert recipe.data["dstc11"]["replies"] == "knowledge"
    with pytest.raises(SupportbotError, match="replies = 'gold'"):
        load_recipe(_recipe(data, RECIPE.replace('[data.dstc11]', '[data.dstc11]\nreplies = "gold"')))


@pytest.mark.parametrize("change, message", [
    ('dialogues = "data/dialogues_train.jsonl"', "is an evaluation split"),
    ('parts = ["fit"]', "only the fit part may be trained on"),
    ("[lora]", "unknown key(s) rank"),
])
def test_recipe_refuses_evaluation_data_and_unknown_keys(data, change, message):
    from bot.core.errors import SupportbotError
    from training.recipe import load_recipe

    replaced = {
        'dialogues = "data/dialogues_train.jsonl"': 'dialogues = "data/dialogues_dev.jsonl"',
        'parts = ["fit"]': 'parts = ["fit", "held_out"]',
        "[lora]": "[lora]\nrank = 8",
    }[change]
    with pytest.raises(SupportbotError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(_recipe(data, RECIPE.replace(change, replaced)))


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, tiny_lm_dir):
    """A LoRA adapter of the tiny model with random (non-zero) B matrices on q_proj and v_proj."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "support-lora"
    peft_model.save_pretrained(out)
    return out


def test_adapter_setting_default_empty_and_path(random_adapter, tiny_lm_dir, tmp_path):
    import torch

    from bot.core.errors import GeneratorError
    from bot.generators.hf_generator import HFGenerator, resolve_adapter
    from bot.core.settings import GeneratorSettings
    from bot.generators import build_generator

    assert GeneratorSettings().adapter == "default"
    # "default": the shipped adapter on the bundled model only; none shipped -> the untuned model.
    assert resolve_adapter("default", "default", shipped=random_adapter) == random_adapter
    assert resolve_adapter("default", "default", shipped=tmp_path / "absent") is None
    assert resolve_adapter("default", str(tiny_lm_dir), shipped=random_adapter) is None
    assert resolve_adapter("", "default", shipped=random_adapter) is None
    with pytest.raises(GeneratorError, match="not a LoRA adapter folder"):
        resolve_adapter(str(tmp_path), "default")

    settings = GeneratorSettings(model=str(tiny_lm_dir), device="cpu", dtype="float32", decode_dtype="model",
                                 prefill="model", adapter=str(random_adapter))
    tuned = build_generator(settings, tmp_path).load()
    untuned = build_generator(settings.model_copy(update={"adapter": ""}), tmp_path).load()
    assert tuned.model_id == f"{tiny_lm_dir}+support-lora" and untuned.model_id == str(tiny_lm_dir)
    t, b = tuned.model.state_dict(), untuned.model.state_dict()
    base = HFGenerator(tiny_lm_dir, device="cpu", dtype="float32").load().model.state_dict()
    for name, value in b.items():
        assert torch.equal(value, base[name]), name  # "" is the base model
        touched = name.endswith(("q_proj.weight", "v_proj.weight"))
        assert torch.equal(t[name], value) != touched, name  # LoRA changed exactly what it wraps
    assert not any("lora" in k for k in t)  # merged: a plain model at serving speed


def test_adapter_for_another_model_is_a_clear_error(random_adapter, tmp_path):
    from tiny_models import build_tiny_causal_lm

    from bot.core.errors import GeneratorError
    from bot.generators.hf_generator import HFGenerator

    other = build_tiny_causal_lm(tmp_path / "wide", hidden=96)
    with pytest.raises(GeneratorError, match="cannot be applied"):
        HFGenerator(other, device="cpu", adapter=str(random_adapter)).load()


def test_promoted_model_is_served_without_the_adapter(random_adapter, tiny_lm_dir, tmp_path):
    from bot.core.settings import GeneratorSettings
    from bot.generators.following import following_generator
    from training.registry import ModelRegistry

    ModelRegistry(tmp_path).set_current(tiny_lm_dir)
    gs = GeneratorSettings(model="default", device="cpu", adapter=str(random_adapter))
    served = following_generator(gs, tmp_path, poll_interval_s=0).served
    assert served.adapter is None and "+" not in served.model_id
