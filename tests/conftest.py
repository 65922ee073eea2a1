"""Session-wide fixtures: tiny base models built once per test session (seconds)."""
from __future__ import annotations

import pytest

from tests import tiny_models


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A KoGPT2-style tiny base model directory (GPT-2 + Korean byte-level BPE)."""
    return tiny_models.make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory):
    """A Gemma-3-style tiny base model directory (SentencePiece tokenizer, tied output)."""
    return tiny_models.make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def tiny_gemma_untied_dir(tmp_path_factory):
    """Like tiny_gemma_dir, with an untied output layer."""
    return tiny_models.make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma-untied"), tie=False)
