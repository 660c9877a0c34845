"""predict end to end: a tiny third-party classifier trained on a tiny third-party dataset, used from Python and the CLI.

The classifier (``helpers.CLASSIFIER_SOURCE``) is one linear layer on 4x4 grey
images whose brightness is the class, so the reference for every probability is
numpy's softmax of ``x @ kernel + bias`` with the restored weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_one_line_error,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    run_main,
    trained_tiny_classifier,
)
from PIL import Image

import zoo


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The classifier trained 150 steps on ``tiny``; its distributions stay on sys.path for the module."""
    with trained_tiny_classifier(tmp_path_factory.mktemp("predict"), steps=150, batch_size=16, learning_rate=0.1) as run:
        yield run


def reference_probabilities(model, images_unit: np.ndarray) -> np.ndarray:
    """numpy's softmax of the linear layer, from the restored weights."""
    kernel, bias = np.asarray(model.model.kernel[...]), np.asarray(model.model.bias[...])
    logits = images_unit.reshape(len(images_unit), -1).astype(np.float64) @ kernel + bias
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------- Python


def test_predict_in_python_matches_numpy_and_learns_the_classes(workdir):
    model = zoo.load(workdir)
    assert model.classes == ("dark", "grey", "bright")
    test = zoo.data.load("tiny", "test")
    probabilities = model.predict(test["image"])  # uint8 batch
    assert probabilities.shape == (24, 3)
    np.testing.assert_allclose(probabilities, reference_probabilities(model, test["image"] / 255.0), rtol=1e-5, atol=1e-6)
    assert (probabilities.argmax(-1) == test["label"]).mean() >= 0.9  # columns are the dataset's classes
    received = sys.modules["clf_pkg_model"].CALLS[-1]
    assert received.dtype == np.float32 and received.shape == (24, 4, 4, 1)  # float in [0, 1], as documented
    np.testing.assert_array_equal(received, test["image"].astype(np.float32) / 255)


def test_one_image_float_or_uint8_and_options(workdir):
    model = zoo.load(workdir)
    image = np.full((4, 4, 1), 0.9, np.float32)
    one = model.predict(image)
    assert one.shape == (1, 3) and one.argmax() == 2
    as_uint8, as_float = np.full((4, 4, 1), 230, np.uint8), np.full((1, 4, 4, 1), 230 / 255, np.float32)
    np.testing.assert_allclose(model.predict(as_uint8), model.predict(as_float))  # uint8 is scaled by 1/255
    hot, cold = model.predict(image, temperature=0.5), model.predict(image, temperature=5.0)
    assert hot.max() > one.max() > cold.max()  # the plugin's own option reached it


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        (np.zeros((2, 5, 5, 1), np.float32), "the model takes images (4, 4, 1)"),
        (np.full((1, 4, 4, 1), 2.0, np.float32), "must lie in [0, 1]"),
        (np.zeros((1, 4, 4, 1), np.int64), "float in [0, 1] or uint8"),
        ("a text", "not one string"),
    ],
)
def test_bad_inputs_are_usage_errors(workdir, inputs, needle):
    with pytest.raises(zoo.UsageError) as e:
        zoo.load(workdir).predict(inputs)
    assert needle in str(e.value)


def test_sample_and_predict_refuse_models_without_them(workdir):
    with pytest.raises(zoo.UsageError, match="plugin 'clf' has no sample: it predicts"):
        zoo.load(workdir).sample(2)
    vae = zoo.load("vae-mnist")
    with pytest.raises(zoo.UsageError, match="plugin 'vae' has no predict: it generates"):
        vae.predict(np.zeros((1, 28, 28, 1), np.float32))


# --------------------------------------------------------------------------- the CLI


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(pixels).save(path) if mode is None else Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_zoo_predict_reads_images_of_any_size_and_mode_and_arrays(workdir, tmp_path):
    dark = write_png(tmp_path / "dark.png", np.full((4, 4), 20, np.uint8))  # exact size, grey
    bright = tmp_path / "bright.jpg"  # colour JPEG, 32x32: converted to grey, resized
    Image.new("RGB", (32, 32), (230, 230, 230)).save(bright, quality=95)
    batch = tmp_path / "batch.npy"
    np.save(batch, np.stack([np.full((4, 4, 1), 120, np.uint8), np.full((4, 4, 1), 10, np.uint8)]))
    code, out, err = run_main(["predict", str(workdir), "--input", str(dark), "--input", str(bright),
                               "--input", str(batch), "--json", "--top", "2"])  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert [r["input"] for r in rows] == [str(dark), str(bright), f"{batch}[0]", f"{batch}[1]"]
    assert [r["top"][0]["class"] for r in rows] == ["dark", "bright", "grey", "dark"]
    assert all(len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in rows)
    model = zoo.load(workdir)  # the PNG's exact pixels went in: compare with the reference on 20/255
    expected = reference_probabilities(model, np.full((1, 4, 4, 1), 20 / 255))[0]
    assert rows[0]["top"][0]["probability"] == pytest.approx(expected.max(), rel=1e-5)
    assert rows[0]["top"][0]["index"] == 0
    code, out, err = run_main(["predict", str(workdir), "--input", str(dark)])
    assert code == 0 and out.startswith(f"{dark}: dark 0.") and out.count(",") == 2  # --top 3 by default


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("x.gif.bak", b"", "cannot predict from .bak"),
        ("text.png", b"just some text", "not an image Pillow can read"),
        ("truncated.png", b"\x89PNG\r\n\x1a\nnot really", "cannot decode the image"),
        ("wrong.npy", None, "the model takes images (4, 4, 1)"),
        ("objects.npy", "pickle", "not a numeric .npy array"),
    ],
)
def test_zoo_predict_bad_files_are_one_line(workdir, tmp_path, name, content, needle):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((3, 3)))
    elif content == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    code, out, err = run_main(["predict", str(workdir), "--input", str(path)])
    assert code == 2 and out == ""
    assert_one_line_error(err, needle)


def test_zoo_predict_usage_errors(workdir, tmp_path):
    image = write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    text = tmp_path / "a.txt"
    text.write_text("hello")
    for argv, needle in [
        (["predict", str(workdir), "--input", str(image), "--input", str(text)], "mix texts and images"),
        (["predict", str(workdir), "--input", str(image), "--option", "heat=2"], "unknown clf predict option 'heat'"),
        (["predict", str(workdir), "--input", str(tmp_path / "missing.png")], "does not exist"),
        (["predict", "vae-mnist", "--input", str(image)], "plugin 'vae' has no predict"),
        (["sample", str(workdir)], "plugin 'clf' has no sample"),
    ]:
        code, out, err = run_main(argv)
        assert code == 2 and out == "", (argv, err)
        assert_one_line_error(err, needle)


# --------------------------------------------------------------------------- zoo.prediction on its own


def test_text_files_are_one_input_each(tmp_path):
    from zoo import prediction

    (tmp_path / "a.txt").write_text("first review\nsecond line\n")
    (tmp_path / "b.txt").write_text("ünïcode")
    texts, labels = prediction.read_files([tmp_path / "a.txt", tmp_path / "b.txt"], (4, 4, 1))
    assert texts == ["first review\nsecond line", "ünïcode"] and labels == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert prediction.prepare(texts, (4, 4, 1)) == texts  # texts pass through whatever images the dataset has


def test_top_classes_ranks_and_names_columns():
    from zoo import prediction

    ranked = prediction.top_classes(np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]), ("cat", "dog"), k=2)
    assert ranked == [
        [{"class": "dog", "index": 1, "probability": 0.6}, {"class": "2", "index": 2, "probability": 0.3}],
        [{"class": "cat", "index": 0, "probability": 0.5}, {"class": "2", "index": 2, "probability": 0.3}],
    ]  # a column the dataset does not name is called by its index
