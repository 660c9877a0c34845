"""Tiny text data for the language-model plugin tests."""

from __future__ import annotations

import numpy as np

from zoo.data import shakespeare

SENTENCE = "To be, or not to be, that is the question. "


def tiny_corpus(windows: int = 8) -> tuple[dict[str, np.ndarray], str]:
    """One sentence repeated, cut into Shakespeare-layout windows; and the sentence."""
    text = (SENTENCE * (windows * shakespeare.WINDOW // len(SENTENCE) + 1)).encode()
    tokens, lengths = shakespeare.windows(text[: windows * (shakespeare.WINDOW - 1) + 1])
    return {"text": tokens, "length": lengths, "work": np.zeros(len(lengths), np.int32)}, SENTENCE
