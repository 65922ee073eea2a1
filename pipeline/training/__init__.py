"""Training internals for ``python -m pipeline.train``.

- :mod:`.data`: pairs -> rendered examples, rehearsal data, length-bucketed batches, collate.
- :mod:`.loss`: the loss with the vocabulary projection only at supervised positions.
- :mod:`.methods`: PEFT configs per method and LoRA target modules per architecture.
- :mod:`.loop`: optimizer, schedule, accumulation, evaluation, checkpoints, resume, Ctrl-C.
- :mod:`.adapter_io`: the adapter directory (weights, tokenizer, manifest): save, check, load.
- :mod:`.plots`: the loss-curve PNG.
"""
