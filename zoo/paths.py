"""Variable paths, one convention for the whole zoo.

Inside a tree a variable's path is the tuple of its keys, as flax's
``traverse_util.flatten_dict`` gives it: ``("blocks", 0, "kernel")``. Wherever a
path is shown, typed or stored (checkpoints, ``--init-from``, ``train.freeze``,
``Plugin.replaceable``) it is the "/"-joined name ``"blocks/0/kernel"``. ``name``
turns the first into the second; ``under`` is the one prefix rule.
"""

from __future__ import annotations

from typing import Any


def name(path: tuple) -> str:
    """``("blocks", 0, "kernel")`` -> ``"blocks/0/kernel"``."""
    return "/".join(map(str, path))


def under(path_name: str, prefix: str) -> bool:
    """Whether ``path_name`` is ``prefix`` or lies below it: ``"head/kernel"`` is under ``"head"``, ``"header"`` is not."""
    return path_name == prefix or path_name.startswith(prefix + "/")


def _key(key: Any) -> Any:
    for attr in ("key", "idx", "name"):  # DictKey.key, SequenceKey.idx, GetAttrKey.name (NamedTuples)
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


def keys(key_path: tuple) -> tuple:
    """A jax key path (``DictKey("blocks"), SequenceKey(0), ...``) -> the path ``("blocks", 0, ...)``."""
    return tuple(map(_key, key_path))


def tree_paths(tree: Any) -> dict[str, Any]:
    """Flatten a pytree of nested dicts (lists, NamedTuples) to ``{"params/encoder/kernel": leaf}``."""
    import jax

    return {name(keys(path)): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
