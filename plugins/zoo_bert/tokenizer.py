"""The BERT plugin's subword tokenizer: byte-level BPE trained with the ``tokenizers`` package, kept in the model.

Byte-level BPE (GPT-2's and RoBERTa's scheme) rather than WordPiece: it starts from
the 256 bytes, so any text encodes (no ``[UNK]``) and decoding gives back exactly the
text, newlines and spacing of verse included; WordPiece's pre-tokenizer drops the
whitespace. ``[MASK]`` strips the space before it (RoBERTa's ``lstrip``), so in
"or [MASK] to" the mask stands for the token " not", as it did in training.

Special tokens take the first ids: ``[PAD]`` 0, ``[CLS]`` 1, ``[SEP]`` 2, ``[MASK]`` 3.
Training is deterministic (the same text gives the same JSON), so a resumed run
re-trains exactly the tokenizer it started with.

Storage: the tokenizer's JSON (``Tokenizer.to_str``) in the model's
``TokenizerStore`` (``uint8`` buffer + length), so checkpoints carry it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from zoo.errors import UsageError, ZooError

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
NUM_SPECIAL = len(SPECIAL_TOKENS)
MIN_VOCAB = 256 + NUM_SPECIAL + 1  # the byte alphabet, the specials, and at least one merge


def train(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` of at most ``vocab_size`` tokens trained on ``texts``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise UsageError(f"vocab_size {vocab_size} is too small for a byte-level BPE; use at least {MIN_VOCAB}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, lstrip=t == "[MASK]") for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(list(texts), trainer)
    found = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if found != list(range(NUM_SPECIAL)):
        raise ZooError(f"the trained tokenizer gave the special tokens ids {found}, not 0..{NUM_SPECIAL - 1}")
    return tokenizer


def window_texts(data: Mapping[str, np.ndarray]) -> list[str]:
    """The valid part of each byte window (``{"text": uint8 (N, W), "length": (N,)}``) as text."""
    rows, lengths = np.asarray(data["text"]), np.asarray(data["length"])
    return [bytes(row[:n]).decode("utf-8", errors="replace") for row, n in zip(rows, lengths)]


def encode_literally(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids, taken literally: a "[MASK]" written in a text is text, not the special token."""
    tokenizer.encode_special_tokens = True
    try:
        return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    finally:
        tokenizer.encode_special_tokens = False


def tokenize_windows(tokenizer, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each window's tokens: ``{"tokens": int32 (N, L), "length": int32 (N,)}``, L the longest (padded with [PAD]).

    The corpus is taken literally (``encode_literally``).
    """
    encoded = encode_literally(tokenizer, window_texts(data))
    lengths = np.array([len(ids) for ids in encoded], np.int32)
    tokens = np.full((len(encoded), max(1, int(lengths.max(initial=0)))), PAD, np.int32)
    for row, ids in zip(tokens, encoded):
        row[: len(ids)] = ids
    return {"tokens": tokens, "length": lengths}


# --------------------------------------------------------------------------- inside the model


def serialise(tokenizer, capacity: int) -> np.ndarray:
    """The tokenizer's JSON as ``uint8 (len,)``; UsageError if it exceeds ``capacity``."""
    data = np.frombuffer(tokenizer.to_str().encode("utf-8"), np.uint8)
    if len(data) > capacity:
        raise UsageError(
            f"the tokenizer takes {len(data)} bytes, more than tokenizer_capacity={capacity}; "
            f"raise it (--set tokenizer_capacity={1 << max(len(data) - 1, 1).bit_length()})"
        )
    return data


def store(model, tokenizer) -> None:
    """Write ``tokenizer`` into ``model.tokenizer`` (a ``TokenizerStore``); works under jit and eval_shape."""
    data = serialise(tokenizer, model.cfg.tokenizer_capacity)
    buffer = np.zeros(model.cfg.tokenizer_capacity, np.uint8)
    buffer[: len(data)] = data
    model.tokenizer.data[...] = jnp.asarray(buffer)
    model.tokenizer.length[...] = jnp.int32(len(data))


def load(model):
    """The ``tokenizers.Tokenizer`` stored in ``model``; ZooError if it holds none."""
    from tokenizers import Tokenizer

    length = int(np.asarray(model.tokenizer.length[...]))
    if length <= 0:
        raise ZooError("this model holds no tokenizer: it was built, not trained (train it with `zoo train bert`)")
    data = np.asarray(model.tokenizer.data[...])[:length].tobytes()
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type for a damaged JSON
        raise ZooError(f"the model's stored tokenizer does not load ({e})") from None
