"""Around a plugin's ``predict``: inputs in (arrays, texts, files), ranked classes (or candidates) out.

What reaches ``predict(model, inputs)`` is float32 ``(N, H, W, C)`` in [0, 1]
for images, ``(H, W, C)`` being the training dataset's ``image_shape`` when it
declares one, or ``list[str]`` for texts. Files are converted to that: images
through Pillow (``zoo.images.read_image``), ``.npy`` arrays as they are (uint8
scaled by 1/255), ``.txt`` files one text each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo import images
from zoo.errors import UsageError

TEXT_SUFFIXES = (".txt",)
ARRAY_SUFFIXES = (".npy",)


def prepare(inputs: Any, image_shape: tuple[int, int, int] | None) -> np.ndarray | list[str]:
    """``inputs`` as ``predict`` takes them: a non-empty ``list[str]``, or float32 ``(N, *image_shape)`` in [0, 1].

    Arrays may be one example ``(H, W, C)`` or a batch, float in [0, 1] or uint8 in
    [0, 255]. Without a declared ``image_shape`` an array is taken as a batch as it is.
    """
    if isinstance(inputs, list | tuple) and inputs and all(isinstance(x, str) for x in inputs):
        return list(inputs)
    if isinstance(inputs, str):
        raise UsageError("predict takes a list of texts, not one string: wrap it in [ ]")
    array = np.asarray(inputs)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype.kind == "f":
        array = array.astype(np.float32)
    else:
        raise UsageError(f"predict takes images as float in [0, 1] or uint8, or a list of texts; got {array.dtype}")
    if image_shape is not None:
        image_shape = tuple(image_shape)
        if array.shape == image_shape:
            array = array[None]
        elif array.shape[1:] != image_shape:
            raise UsageError(f"inputs of shape {array.shape}; the model takes images {image_shape} or (N, *{image_shape})")
    if array.ndim == 0 or len(array) == 0:
        raise UsageError(f"predict needs at least one input; got shape {array.shape}")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise UsageError(f"image values must lie in [0, 1]; got [{np.nanmin(array)}, {np.nanmax(array)}]")
    return array


def check_paths(paths: Sequence[Path]) -> None:
    """Refuse, before any model is loaded, files ``read_files`` cannot read or cannot mix."""
    readable = images.IMAGE_SUFFIXES + ARRAY_SUFFIXES + TEXT_SUFFIXES
    for path in paths:
        if path.suffix.lower() not in readable:
            raise UsageError(f"{path}: cannot predict from {path.suffix or 'a file without suffix'}; use {', '.join(readable)}")
    texts = {p.suffix.lower() in TEXT_SUFFIXES for p in paths}
    if len(texts) > 1:
        raise UsageError("inputs mix texts and images/arrays; predict on one kind at a time")


def read_files(paths: Sequence[Path], image_shape: tuple[int, int, int] | None) -> tuple[Any, list[str]]:
    """Files -> (inputs for ``prepare``, one label per example: the file name, ``name[i]`` inside a .npy batch)."""
    check_paths(paths)
    if paths[0].suffix.lower() in TEXT_SUFFIXES:
        return [p.read_text(encoding="utf-8").rstrip("\n") for p in paths], [str(p) for p in paths]
    arrays, labels = [], []
    for path in paths:
        if path.suffix.lower() in ARRAY_SUFFIXES:
            batch = prepare(_read_npy(path), image_shape)
            arrays.append(batch)
            labels += [str(path)] if len(batch) == 1 else [f"{path}[{i}]" for i in range(len(batch))]
        else:
            if image_shape is None:
                raise UsageError(f"{path}: the model's dataset declares no image_shape to convert images to; pass .npy")
            arrays.append(images.read_image(path, image_shape)[None])
            labels.append(str(path))
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise UsageError(f"inputs of different shapes {sorted(shapes)}")
    return np.concatenate(arrays), labels


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:  # not a .npy file, or one holding Python objects
        raise UsageError(f"{path}: not a numeric .npy array ({e})") from None


def top_classes(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row, the ``k`` likeliest classes: ``[{"class": name, "index": i, "probability": p}, ...]``, best first.

    ``classes`` names column ``i`` (the dataset's); columns it does not name are called by their index.
    """
    ranked = []
    for row in np.asarray(probabilities, np.float64):
        order = np.argsort(-row, kind="stable")[:k]
        ranked.append(
            [{"class": classes[i] if i < len(classes) else str(i), "index": int(i), "probability": float(row[i])} for i in order]
        )
    return ranked


def is_ranked(result: Any) -> bool:
    """Whether ``predict`` answered with ranked candidates (API 1.2: per input, slots of candidates), not ``(N, K)``."""
    return isinstance(result, list)


def top_candidates(result: list, k: int) -> list[list[list[dict[str, Any]]]]:
    """Ranked candidates cut to the ``k`` best of each slot."""
    return [[list(slot[:k]) for slot in slots] for slots in result]


def describe_slot(candidates: Sequence[dict[str, Any]]) -> str:
    """``'not' 0.412, 'the' 0.103``: labels quoted, since their spaces matter (a word start, a continuation)."""
    return ", ".join(f"{c['label']!r} {c['probability']:.3f}" for c in candidates)
