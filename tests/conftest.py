"""Session-wide fixtures: tiny base models built once per test session (seconds).

Their tokenizers are trained on Korean text from ``../shared/data`` (SmileStyle and
ChatbotData beside the repository); without it every test that needs a tiny model is
skipped, and the skip reason names the missing file.
"""
from __future__ import annotations

import pytest

from tests import tiny_models


def _needs_shared_data() -> None:
    missing = [p for p in (tiny_models.SMILESTYLE_TSV, tiny_models.CHATBOT_CSV) if not p.is_file()]
    if missing:
        pytest.skip(f"needs ../shared/data beside the repository (tiny tokenizers are trained on it): no {missing[0]}")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A KoGPT2-style tiny base model directory (GPT-2 + Korean byte-level BPE)."""
    _needs_shared_data()
    return tiny_models.make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory):
    """A Gemma-3-style tiny base model directory (SentencePiece tokenizer, tied output)."""
    _needs_shared_data()
    return tiny_models.make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def tiny_gemma_untied_dir(tmp_path_factory):
    """Like tiny_gemma_dir, with an untied output layer."""
    _needs_shared_data()
    return tiny_models.make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma-untied"), tie=False)
