"""Fine-tuning the generator on the team's own support transcripts.

Pipeline (each step a module, each usable alone; ``training.cli`` wires them to ``supportbot``):

  importers     JSONL / CSV / dialogue-store transcripts -> validated, de-duplicated ``Transcript``s
  pii           ``PIIScrubber.scrub(text)``: emails, phones, cards, IBANs, IPs, extra patterns -> [TYPE]
  sft_dataset   one example per agent turn, prompted by ``bot.prompting.build_messages``; reply-only loss
  trainer       ``Trainer.fit()``: accelerate loop with checkpoints, resume, early stopping, TensorBoard
  finetune      base model (+LoRA) -> Trainer -> merged export + ``model_card``
  registry      ``data_dir/models/CURRENT`` pointer, ``ModelRegistry`` (the read side, ``current_model`` and ``FollowingGenerator``, is bot/generators/following.py)
  promotion     the gate: candidate vs serving model on the same dev dialogues (``bot.evaluate``)
"""
