"""The locally built tokenizers load in GenAI and keep the build's vocabulary words whole."""

from __future__ import annotations

import openvino_genai as ov_genai
import pytest

from tests.models.conftest import model_dir

# (model, tokenizer folder, leading special ids, trailing special ids)
TOKENIZERS = [
    ("sd15", "tokenizer", 1, 1),
    ("sdxl", "tokenizer_2", 1, 1),
    ("flux", "tokenizer", 1, 1),
    ("flux", "tokenizer_2", 0, 1),
]


@pytest.mark.parametrize(("model", "folder", "lead", "trail"), TOKENIZERS)
def test_vocabulary_words_are_single_tokens(model: str, folder: str, lead: int, trail: int) -> None:
    tok = ov_genai.Tokenizer(model_dir(model) / folder)
    ids = [int(i) for i in tok.encode("a red cat on a blue background").input_ids.data[0]]
    assert len(ids) == lead + 7 + trail
    assert ids[lead] == ids[lead + 4], "'a' must map to one id"
    assert tok.decode([ids]) == ["a red cat on a blue background"]


def test_unknown_words_still_tokenize() -> None:
    tok = ov_genai.Tokenizer(model_dir("sd15") / "tokenizer")
    ids = [int(i) for i in tok.encode("zebra").input_ids.data[0]]
    assert len(ids) > 3
    assert tok.decode([ids]) == ["zebra"]
