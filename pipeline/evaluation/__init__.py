"""Evaluation of persona adapters: does it sound like them, and did the model forget Korean?

- :mod:`.scoring`: log-likelihood of a reply given its context, through ``chat_format.render``.
- :mod:`.parallel`: SmileStyle's 17 parallel styles, for persona identification.
- :mod:`.generation`: seeded batched sampling of replies, through the same ``render``.
- :mod:`.style`: style statistics of replies (pure functions) and distances between them.
- :mod:`.charts` and :mod:`.report`: PNG charts, ``eval.json`` and ``eval.md``.

The command is ``python -m pipeline.evaluate`` (see :mod:`pipeline.evaluate`).
"""
