"""A short CPU fine-tune of the real default generator (SmolLM2-135M-Instruct) on a DSTC11 slice.

Runs the whole training pipeline on real data: import + PII scrub -> SFT examples built with the
serving prompt builder (gold knowledge from kb.jsonl as the prompt's sources) -> split by
conversation -> LoRA training with dev loss -> merged export with a card. Prints the dev loss of
the untuned model (the baseline, measured in the same process at step 0) and after training, as
a ratio, plus training throughput. Not part of the test suite.

    nice python bench/finetune_cpu.py --conversations 150 --max-steps 16

The trainer picks the dtype (bfloat16 autocast where the CPU has native bf16, AVX-512-BF16 / AMX;
float32 elsewhere) and the threads (one per physical core); ``--threads`` overrides the latter.
The raw speed of the training loop against a plain PyTorch loop is bench/train_speed.py.

Figures depend on the machine (a shared 2-core CPU here); the GPU run is bench/finetune_gpu.sh.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.core.settings import Settings  # noqa: E402
from training.finetune import finetune, resolve_base  # noqa: E402
from training.importers import import_transcripts  # noqa: E402
from training.pii import PIIScrubber  # noqa: E402
from training.sft_dataset import GoldSources, build_examples, split_by_conversation, write_dataset  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "dstc11"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path("var/bench-finetune"))
    ap.add_argument("--conversations", type=int, default=150, help="dialogue groups taken from the train file")
    ap.add_argument("--dev-fraction", type=float, default=0.2)
    ap.add_argument("--dev-examples", type=int, default=16,
                    help="training.max_dev_examples: dev loss on a fixed sample of this many (cost on a CPU)")
    ap.add_argument("--max-steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--history-tokens", type=int, default=128, help="history budget in prompts (serving: 384)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for training (0: the trainer's choice, one per physical core)")
    ap.add_argument("--mixed-precision", default="auto", help="auto | no | bf16")
    args = ap.parse_args()

    settings = Settings(data_dir=args.work / "var")
    settings.dialogue.history_tokens = args.history_tokens
    t0 = time.perf_counter()
    transcripts, report = import_transcripts([args.data / "dialogues_train.jsonl"], PIIScrubber())
    groups: list[str] = []
    for tr in transcripts:
        if tr.group not in groups:
            groups.append(tr.group)
    keep = set(groups[: args.conversations])
    transcripts = [tr for tr in transcripts if tr.group in keep]

    base = resolve_base("default", settings.data_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    stats: Counter = Counter()
    examples = list(build_examples(
        transcripts, settings.dialogue, GoldSources.from_jsonl(args.data / "kb.jsonl"),
        lambda text: len(tok(text, add_special_tokens=False)["input_ids"]), stats,
    ))
    train, dev = split_by_conversation(examples, args.dev_fraction, seed=0)
    ds = args.work / "dataset"
    info = write_dataset(ds, train, dev, {"sources": "gold", "pii": dict(report.pii), "import": report.to_json(),
                                          "builder": dict(stats)})
    prep_s = time.perf_counter() - t0
    print(f"data: {len(keep)} dialogues, {info['train_examples']} train / {info['dev_examples']} dev examples "
          f"({prep_s:.1f} s to prepare)", flush=True)

    ts = settings.training.model_copy(update={"max_length": args.max_length, "patience": 0,
                                              "max_dev_examples": args.dev_examples,
                                              "threads": args.threads, "mixed_precision": args.mixed_precision})
    t1 = time.perf_counter()
    card = finetune(ds, "default", args.work / "model", ts, data_dir=settings.data_dir, resume=False,
                    method=args.method, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                    eval_every=args.eval_every, warmup_ratio=0.1, log_every=1)
    wall = time.perf_counter() - t1
    m, hp = card["metrics"], card["hyperparameters"]
    print(f"\n{args.method} fine-tune of SmolLM2-135M-Instruct, {m['steps']} steps x {args.batch_size} examples, "
          f"{hp.get('cpu', hp['device'])} {hp.get('cpu_features', '')}, {hp['mixed_precision']}, "
          f"{hp.get('torch_threads')} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"  dev examples           {m['dev_examples']} of {card['data']['dev_fit']}")
    print(f"  training tokens/s      {m['train_tokens_per_s']}")
    print(f"  training minutes       {m['train_seconds'] / 60:.2f} (wall incl. evals and export {wall / 60:.2f})")
    print(f"  dev loss untuned       {m['dev_loss_before']:.4f}  (baseline, same process)")
    print(f"  dev loss best          {m['dev_loss_best']:.4f}  ratio {m['dev_loss_best'] / m['dev_loss_before']:.3f}")
    print(f"  model                  {args.work / 'model'}")


if __name__ == "__main__":
    main()
