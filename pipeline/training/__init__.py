"""Training internals for ``python -m pipeline.train``.

- :mod:`.data`: pairs -> rendered examples, rehearsal data, length-bucketed batches, collate.
- :mod:`.loss`: the loss with the vocabulary projection only at supervised positions.
- :mod:`.config`: :class:`TrainConfig` (every flag's default) and the persona's data.
- :mod:`.methods`: the LoRA config (all linear layers + the new chat-token rows).
- :mod:`.loop`: optimizer, schedule, accumulation, evaluation, checkpoints, resume, Ctrl-C.
- :mod:`.run`: one run end to end, writing the adapter folder (:mod:`core.adapter_format`).
- :mod:`.plots`: the loss-curve PNG.
"""
