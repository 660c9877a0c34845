"""zoo.data.loader: deterministic, resumable, process-sliced batches and the prefetch thread.

The loop's exact resume and its multi-process correctness rest on these
properties: the batch sequence is a function of (seed, position) alone,
``state()``/``set_state()`` continue with the very next batch, and the slices of
N processes concatenate to the batch one process would see.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from zoo.data.loader import ArrayLoader, Prefetcher
from zoo.errors import UsageError

N = 50  # not a multiple of the batch sizes below: the remainder is dropped each epoch


def arrays(n: int = N) -> dict[str, np.ndarray]:
    """Each example carries its own index, so a batch says exactly which examples it holds."""
    return {
        "index": np.arange(n, dtype=np.int64),
        "image": np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3),
    }


def take(loader, k: int) -> list[dict[str, np.ndarray]]:
    return [next(loader) for _ in range(k)]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# --------------------------------------------------------------------------- determinism and epochs


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = ArrayLoader(arrays(), 8, seed=3), ArrayLoader(arrays(), 8, seed=3), ArrayLoader(arrays(), 8, seed=4)
    first, second, third = take(a, 15), take(b, 15), take(c, 15)
    assert_same(first, second)
    assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(first, third))
    for batch in first:  # leaves stay aligned: row i of every array is the same example
        np.testing.assert_array_equal(batch["image"], arrays()["image"][batch["index"]])
        assert batch["index"].shape == (8,) and batch["image"].shape == (8, 2, 3)


def test_each_epoch_is_a_fresh_permutation_without_repeats():
    loader = ArrayLoader(arrays(), 8, seed=0)
    assert loader.batches_per_epoch == 6  # 50 // 8; two examples are dropped per epoch
    epochs = [np.concatenate([b["index"] for b in take(loader, 6)]) for _ in range(3)]
    for seen in epochs:
        assert len(set(seen.tolist())) == 48 and set(seen.tolist()) <= set(range(N))
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    assert loader.state() == {"epoch": 2, "index": 6}


# --------------------------------------------------------------------------- state / set_state


@pytest.mark.parametrize("taken", [0, 1, 5, 6, 7, 13])  # before, inside, at and across epoch ends
def test_set_state_continues_with_the_very_next_batch(taken):
    reference = ArrayLoader(arrays(), 8, seed=1)
    take(reference, taken)
    state = reference.state()
    expected = take(reference, 9)

    resumed = ArrayLoader(arrays(), 8, seed=1)
    take(resumed, 2)  # wherever it was before is irrelevant
    resumed.set_state(state)
    assert_same(take(resumed, 9), expected)
    assert resumed.state() == reference.state()


def test_state_is_plain_json_ints():
    import json

    loader = ArrayLoader(arrays(), 8, seed=0)
    take(loader, 7)
    state = json.loads(json.dumps(loader.state()))
    assert state == {"epoch": 1, "index": 1}
    again = ArrayLoader(arrays(), 8, seed=0)
    again.set_state(state)
    assert_same(take(again, 3), take(loader, 3))


# --------------------------------------------------------------------------- processes


@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_process_slices_concatenate_to_the_one_process_batch(count, steps_per_call):
    whole = ArrayLoader(arrays(), 8, seed=5, steps_per_call=steps_per_call)
    parts = [
        ArrayLoader(arrays(), 8, seed=5, steps_per_call=steps_per_call, process_index=i, process_count=count)
        for i in range(count)
    ]
    axis = 0 if steps_per_call == 1 else 1  # the batch axis
    for _ in range(10):  # across epoch ends
        expected = next(whole)
        slices = [next(p) for p in parts]
        for key in expected:
            assert slices[0][key].shape[axis] == 8 // count
            np.testing.assert_array_equal(np.concatenate([s[key] for s in slices], axis=axis), expected[key])
        assert all(p.state() == whole.state() for p in parts)


# --------------------------------------------------------------------------- steps_per_call


def test_steps_per_call_stacks_consecutive_batches():
    single = ArrayLoader(arrays(), 8, seed=2)
    stacked = ArrayLoader(arrays(), 8, seed=2, steps_per_call=4)
    for _ in range(4):  # 16 batches: crosses two epoch ends (6 per epoch)
        group = next(stacked)
        assert group["index"].shape == (4, 8) and group["image"].shape == (4, 8, 2, 3)
        expected = take(single, 4)
        for key in group:
            np.testing.assert_array_equal(group[key], np.stack([b[key] for b in expected]))
        assert stacked.state() == single.state()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "data,batch,count,needle",
    [
        ({}, 8, 1, "non-empty and equally long"),
        ({"a": np.zeros(10), "b": np.zeros(9)}, 2, 1, "{'a': 10, 'b': 9}"),
        ({"a": np.zeros(10)}, 11, 1, "batch size 11 is larger than the dataset (10 examples)"),
        ({"a": np.zeros(10)}, 5, 2, "batch size 5 does not divide over 2 processes"),
    ],
)
def test_errors_name_the_problem(data, batch, count, needle):
    with pytest.raises(UsageError) as error:
        ArrayLoader(data, batch, 0, process_count=count)
    assert needle in str(error.value)


# --------------------------------------------------------------------------- Prefetcher


def test_prefetcher_yields_each_batch_with_the_state_after_it():
    loader = ArrayLoader(arrays(), 8, seed=0)
    reference = ArrayLoader(arrays(), 8, seed=0)
    placed = []
    prefetch = Prefetcher(loader, lambda batch: placed.append(1) or {k: v + 0 for k, v in batch.items()}, depth=2)
    try:
        for _ in range(8):
            batch, state = next(prefetch)
            assert_same([batch], take(reference, 1))
            assert state == reference.state()  # resuming from it repeats nothing and skips nothing
    finally:
        prefetch.close()
    assert not prefetch._thread.is_alive()
    assert len(placed) <= 8 + 2 + 1  # runs at most `depth` (+ one in hand) ahead


def test_prefetcher_hands_loader_errors_to_the_consumer():
    class Failing:
        def __next__(self):
            raise RuntimeError("disk on fire")

        def state(self):
            return {}

    prefetch = Prefetcher(Failing(), lambda b: b)
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            next(prefetch)
    finally:
        prefetch.close()


def test_prefetcher_close_stops_a_thread_blocked_on_a_full_queue():
    prefetch = Prefetcher(ArrayLoader(arrays(), 8, seed=0), lambda b: b, depth=1)
    time.sleep(0.3)  # let it fill the queue and block
    started = time.perf_counter()
    prefetch.close()
    assert time.perf_counter() - started < 2
    assert not prefetch._thread.is_alive()
    assert not [t for t in threading.enumerate() if t is prefetch._thread]


def test_prefetcher_depth_0_runs_inline_with_the_same_results():
    reference = ArrayLoader(arrays(), 8, seed=0)
    threads_before = threading.active_count()
    inline = Prefetcher(ArrayLoader(arrays(), 8, seed=0), lambda b: b, depth=0)
    assert threading.active_count() == threads_before  # no thread
    for _ in range(8):
        batch, state = next(inline)
        assert_same([batch], take(reference, 1))
        assert state == reference.state()
    inline.close()


# --------------------------------------------------------------------------- data kept on the devices


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_indices_gathered_on_the_devices_are_the_host_batches(steps_per_call):
    import jax

    from zoo.data.loader import DeviceRows

    host = ArrayLoader(arrays(), 8, seed=6, steps_per_call=steps_per_call)
    indexed = ArrayLoader(arrays(), 8, seed=6, steps_per_call=steps_per_call, indices_only=True)
    rows = DeviceRows(arrays(), jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    gather = jax.jit(rows.gather)
    for _ in range(5):  # across epoch ends (6 batches an epoch)
        indices = next(indexed)
        assert indices.dtype == np.int32 and indices.shape == ((8,) if steps_per_call == 1 else (steps_per_call, 8))
        expected = next(host)
        got = gather(rows.rows, indices)
        for key in expected:
            assert got[key].dtype == jax.numpy.asarray(expected[key]).dtype  # as the jitted call would hold it
            np.testing.assert_array_equal(np.asarray(got[key]), expected[key])
        assert indexed.state() == host.state()


def test_batch_spec_is_one_global_step():
    spec = ArrayLoader(arrays(), 8, seed=0, steps_per_call=3).batch_spec()
    assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {"index": ((8,), np.int64), "image": ((8, 2, 3), np.float32)}


def test_data_fits_by_size_against_the_device_memory_or_the_budget(monkeypatch):
    from zoo.data import loader

    class Device:
        def __init__(self, limit):
            self.limit = limit

        def memory_stats(self):
            return None if self.limit is None else {"bytes_limit": self.limit}

    data = {"x": np.zeros(1000, np.uint8), "y": np.zeros(250, np.float32)}  # 2000 bytes
    assert loader.fits_on_devices(data, [Device(8000)]) and not loader.fits_on_devices(data, [Device(7999)])
    monkeypatch.setattr(loader, "DEVICE_DATA_BUDGET", 4000)  # no reported limit: one copy per device
    assert loader.fits_on_devices(data, [Device(None)] * 2) and not loader.fits_on_devices(data, [Device(None)] * 3)
