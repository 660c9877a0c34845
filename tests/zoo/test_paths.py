"""zoo.paths: the one convention for naming variables."""

from typing import NamedTuple

import numpy as np

from zoo import paths


class Pair(NamedTuple):
    mu: np.ndarray
    nu: np.ndarray


def test_a_tuple_path_is_named_with_slashes():
    assert paths.name(("blocks", 0, "attn", "kernel")) == "blocks/0/attn/kernel"
    assert paths.name(()) == ""


def test_under_is_a_prefix_of_whole_parts():
    assert paths.under("head", "head")
    assert paths.under("head/kernel", "head")
    assert not paths.under("header/kernel", "head")  # a string prefix, not a path prefix
    assert not paths.under("head", "head/kernel")


def test_tree_paths_names_dict_keys_list_indices_and_namedtuple_fields():
    a, b, c = np.zeros(1), np.ones(2), np.full(3, 2.0)
    named = paths.tree_paths({"encoder": {"layers": [a, {"kernel": b}]}, "opt": Pair(mu=c, nu=a)})
    assert sorted(named) == ["encoder/layers/0", "encoder/layers/1/kernel", "opt/mu", "opt/nu"]
    assert named["encoder/layers/1/kernel"] is b and named["opt/mu"] is c
