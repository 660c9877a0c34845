"""The genre passages of Shakespeare, tested on made-up texts for every work of the table.

The real corpus is read only by the test marked ``shakespeare`` (skipped when not cached).
"""

from __future__ import annotations

import numpy as np
import pytest

import zoo.data
from zoo.data import shakespeare_genre as genre
from zoo.errors import UsageError, ZooError

ALL_WORKS = sorted(name for names in genre.GENRES.values() for name in names)


def made_up_works() -> dict[str, bytes]:
    """Each work's text: its name repeated, of a length that leaves a partial last passage."""
    return {name: (name.encode() + b"\n") * (40 + i) for i, name in enumerate(ALL_WORKS)}


def test_the_table_names_each_of_the_42_works_once():
    assert len(ALL_WORKS) == len(set(ALL_WORKS)) == 42
    assert all(tuple(sorted(names)) == names for names in genre.GENRES.values())


def test_train_and_test_share_no_work_and_every_genre_is_in_both():
    works = made_up_works()
    train, test = genre.passages(works, "train"), genre.passages(works, "test")
    assert not set(train["work"]) & set(test["work"])
    assert set(train["work"]) | set(test["work"]) == set(range(42))
    assert set(train["label"]) == set(test["label"]) == {0, 1, 2, 3}


def test_the_test_works_are_the_nine_the_docstring_names():
    test = {name for name in ALL_WORKS if genre.split_of(name) == "test"}
    assert test == {
        "loves_labours_lost", "midsummer_nights_dream", "tempest", "henry_vi_part_1", "john",
        "hamlet", "othello", "troilus_and_cressida", "rape_of_lucrece",
    }  # fmt: skip


def test_each_passage_is_a_consecutive_slice_of_its_work_and_tails_are_dropped():
    works = made_up_works()
    names = list(works)
    batch = genre.passages(works, "train")
    for work in set(batch["work"].tolist()):
        text = works[names[work]]
        rows = batch["text"][batch["work"] == work]
        assert len(rows) == len(text) // 256
        assert b"".join(bytes(row) for row in rows) == text[: len(rows) * 256]
        expected = [g for g, members in genre.GENRES.items() if names[work] in members][0]
        assert {genre.CLASSES[label] for label in batch["label"][batch["work"] == work]} == {expected}
    assert (batch["length"] == 256).all()


def test_a_corpus_other_than_the_table_is_refused():
    works = made_up_works()
    works.pop("hamlet")
    with pytest.raises(ZooError, match="differ from the genre table"):
        genre.passages(works, "train")


def test_unknown_split_is_refused():
    with pytest.raises(UsageError, match="valid: train, test"):
        genre.load("validation")


def test_synthetic_has_the_layout_of_the_passages():
    real = genre.passages(made_up_works(), "test")
    fake = zoo.data.synthetic("shakespeare-genre", 8, seed=1)
    assert {k: (v.dtype, v.shape[1:]) for k, v in fake.items()} == {k: (v.dtype, v.shape[1:]) for k, v in real.items()}
    assert len(fake["text"]) == 8 and fake["label"].max() < len(genre.CLASSES)


def test_the_registered_dataset_names_the_classes_in_label_order():
    assert zoo.data.get("shakespeare-genre").classes == genre.CLASSES


@pytest.mark.shakespeare
def test_real_corpus_regression():
    """Regression test pinning the real passages' counts per class (measured once, 2026-11-29)."""
    train, test = zoo.data.load("shakespeare-genre", "train"), zoo.data.load("shakespeare-genre", "test")
    assert np.bincount(train["label"], minlength=4).tolist() == [5638, 4524, 4632, 470]
    assert np.bincount(test["label"], minlength=4).tolist() == [1261, 1892, 979, 336]
