"""``python -m pipeline.dialogue``: retrain the dialogue stage from ChatbotData (``__main__``, ``data``).

What the stage is, how it is found and merged into the extended base, and the ``--dialogue`` flag
live in :mod:`pipeline.dialogue_stage`, which extend and train import without this trainer.
"""
