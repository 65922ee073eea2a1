"""Shared code every folder may import: errors, CLI plumbing, the chat format, files, the adapter format.

Importing :mod:`core` (or :mod:`core.errors`) loads nothing heavy: modules that need
torch or transformers import them inside the functions that use them. ``core``
imports nothing from ``data_prep``, ``pipeline`` or ``chatbot``.
"""
