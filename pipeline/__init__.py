"""Stage entry points: prepare, extend, train, evaluate, run (``python -m pipeline.<stage>``)."""
