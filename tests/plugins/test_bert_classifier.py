"""bert-classifier: fine-tuning a pretrained BERT's encoder with a new head, or training the same from scratch.

The texts are made here: each class writes with words of its own, so a model that
reads them must get every held-out text right. The conformance kit runs the generic
checks (tests/plugins/test_conformance.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from zoo import api
from zoo.cli import main
from zoo.errors import UsageError
from zoo_bert import classifier, tokenizer as bert_tokenizer
from zoo_bert.tokenizer import CLS, SEP

from lm_helpers import tiny_corpus

TINY = dict(layers=1, width=64, heads=2, context=32, vocab_size=300, tokenizer_capacity=1 << 14)
WORDS = (("mirth", "jest", "wedding"), ("blood", "grave", "dagger"), ("king", "crown", "battle"), ("sweet", "love", "rose"))
"""The words of each class's texts (four classes, like shakespeare-genre's)."""


def class_texts(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` passages of 256 bytes, labels cycling through the classes, each of its class's words in random order."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % len(WORDS)
    texts = np.zeros((n, 256), np.uint8)
    for row, label in enumerate(labels):
        words = " ".join(rng.choice(WORDS[label], 60)).encode()[:256]
        texts[row, : len(words)] = np.frombuffer(words, np.uint8)
    return {"text": texts, "length": np.full(n, 256, np.int32), "label": labels, "work": np.zeros(n, np.int32)}


def train_classifier(workdir, steps: int, **options):
    settings = TINY | {"num_classes": 4, "train.learning_rate": 3e-3, "train.warmup_steps": 5} | options.pop("settings", {})
    return api.train(
        "bert-classifier", dataset="shakespeare-genre", workdir=workdir, steps=steps, batch_size=32, progress=False,
        mesh={"data": 1}, settings=settings, train_data=class_texts(128, seed=0), eval_data=class_texts(64, seed=1),
        **options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny ``bert`` pretrained a few steps: its workdir."""
    corpus, _ = tiny_corpus(16)
    workdir = tmp_path_factory.mktemp("bert") / "run"
    api.train(
        "bert", dataset="shakespeare", workdir=workdir, steps=4, batch_size=8, progress=False, mesh={"data": 1},
        settings=TINY, train_data=corpus, eval_data=corpus,
    )  # fmt: skip
    return workdir


@pytest.fixture(scope="module")
def from_scratch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cls") / "run"
    train_classifier(workdir, steps=60)
    return workdir


def test_learns_to_tell_the_classes_apart(from_scratch):
    loaded = api.load(from_scratch)
    held_out = class_texts(64, seed=2)
    metrics = loaded.evaluate(held_out)
    assert metrics["accuracy"] == 1.0 and all(metrics[f"accuracy/{k}"] == 1.0 for k in range(4))
    texts = bert_tokenizer.window_texts(held_out)
    probabilities = loaded.predict(texts)
    assert probabilities.shape == (64, 4) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.array_equal(probabilities.argmax(1), held_out["label"])


def test_fine_tuning_restores_the_encoder_and_says_the_head_is_new(pretrained, tmp_path, capfd):
    train_classifier(tmp_path / "ft", steps=3, init_from=str(pretrained), settings={"train.freeze": "backbone"})
    assert "re-initialised classifier/bias, classifier/kernel" in capfd.readouterr().err
    source, tuned = api.load(pretrained).model, api.load(tmp_path / "ft").model
    assert bert_tokenizer.load(tuned).to_str() == bert_tokenizer.load(source).to_str(), "the pretrained tokenizer"
    pretrained_weights = dict(nnx.to_flat_state(nnx.state(source, nnx.Param)))
    for path, variable in nnx.to_flat_state(nnx.state(tuned, nnx.Param)):  # the frozen backbone: bitwise as pretrained
        if path[0] != "classifier":
            np.testing.assert_array_equal(variable[...], pretrained_weights[path][...], err_msg=str(path))
    assert np.abs(np.asarray(tuned.classifier.bias[...])).max() > 0, "the new head trained"


def test_a_mismatched_backbone_is_a_readable_shape_error(pretrained, tmp_path):
    with pytest.raises(UsageError, match=r"does not declare these replaceable:\n  blocks/0/"):
        train_classifier(tmp_path / "w", steps=1, init_from=str(pretrained), settings={"width": 32, "heads": 2})


def test_num_classes_must_match_the_dataset(tmp_path):
    with pytest.raises(UsageError, match=r"shakespeare-genre has 4 classes; the model has num_classes=3 \(--set num_classes=4\)"):
        train_classifier(tmp_path / "w", steps=1, settings={"num_classes": 3})


def test_bert_itself_refuses_a_classifier_config(tmp_path):
    corpus, _ = tiny_corpus(4)
    with pytest.raises(UsageError, match="bert-classifier"):
        api.train("bert", workdir=tmp_path / "w", steps=1, batch_size=4, progress=False, mesh={"data": 1},
                  settings=TINY | {"num_classes": 4}, train_data=corpus)  # fmt: skip


def test_long_texts_are_cut_to_the_context_with_their_separator(from_scratch):
    tokenizer = bert_tokenizer.load(api.load(from_scratch).model)
    encoded = classifier.encode_texts(tokenizer, ["king crown " * 50, "rose"], context=32)
    assert encoded["tokens"].shape == (2, 32) and encoded["length"].tolist()[0] == 32
    assert encoded["tokens"][0, 0] == CLS and encoded["tokens"][0, 31] == SEP
    short = encoded["tokens"][1, : encoded["length"][1]]
    assert short[0] == CLS and short[-1] == SEP and tokenizer.decode(short[1:-1].tolist()) == "rose"


def test_zoo_predict_prints_the_genres(from_scratch, tmp_path, capsys):
    (tmp_path / "passage.txt").write_text("king crown battle king battle crown\n")
    assert main_code("predict", str(from_scratch), "--input", str(tmp_path / "passage.txt"), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["top"][0]["class"] == "history"
    with pytest.raises(UsageError, match="classifies texts"):
        api.load(from_scratch).predict(np.zeros((1, 4), np.float32))


def test_the_classifier_has_no_pretraining_heads():
    from zoo_bert.model import Bert, BertConfig

    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: Bert(BertConfig(**TINY, num_classes=4), nnx.Rngs(0)))
    names = {str(path[0]) for path, _ in nnx.to_flat_state(nnx.state(model))}
    assert "classifier" in names and "pooler" in names and not names & {"nsp", "mlm_transform", "mlm_bias"}


def main_code(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0
