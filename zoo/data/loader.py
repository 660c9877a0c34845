"""Deterministic, checkpointable batches from in-memory arrays, prefetched onto the mesh.

The datasets the zoo trains on fit in host memory (MNIST is 47 MB), so a batch is
a fancy-index into arrays: each epoch draws one permutation from
``(seed, epoch)``, and the position ``(epoch, index)`` is all the state there is.
Saving it with the model makes resume exact. A record-file pipeline (grain) would
add workers and files for no gain at this size; a plugin with a dataset that does
not fit in memory can still hand ``fit`` its own iterator of the same shape.

Every process draws the same global permutation and keeps its own contiguous
slice of each global batch, so N processes together see exactly the batches one
process would.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from zoo.errors import UsageError

Batch = dict[str, np.ndarray]


class ArrayLoader:
    """Shuffled fixed-size batches over a dict of equally long arrays, forever.

    Args:
      arrays: name -> array with the example axis first, e.g. ``{"image": (N, 28, 28, 1) uint8}``.
      batch_size: the global batch size (all processes together).
      seed: shuffling seed; epoch ``e`` uses permutation ``rng((seed, e))``.
      steps_per_call: batches stacked per ``next()``: leaves ``(steps_per_call, B_local, ...)``;
        with 1, leaves are ``(B_local, ...)``.
      process_index, process_count: this process's slice of each global batch.

    The last partial batch of an epoch is dropped so every step sees
    ``batch_size`` examples.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        seed: int,
        *,
        steps_per_call: int = 1,
        process_index: int = 0,
        process_count: int = 1,
    ):
        lengths = {name: len(a) for name, a in arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise UsageError(f"training arrays must be non-empty and equally long; got lengths {lengths}")
        self.size = next(iter(lengths.values()))
        if batch_size > self.size:
            raise UsageError(f"batch size {batch_size} is larger than the dataset ({self.size} examples)")
        if batch_size % process_count:
            raise UsageError(f"batch size {batch_size} does not divide over {process_count} processes")
        self.arrays = dict(arrays)
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_call = steps_per_call
        self.local = slice(process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count)
        self.epoch = 0
        self.index = 0  # batches already taken in this epoch
        self._permutation_epoch = -1
        self._permutation = np.empty(0, np.int64)

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.batch_size

    def state(self) -> dict[str, int]:
        """The position to save; ``set_state`` of it continues with the very next batch."""
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: Mapping[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _indices(self) -> np.ndarray:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self._permutation_epoch != self.epoch:
            self._permutation = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
            self._permutation_epoch = self.epoch
        start = self.index * self.batch_size
        self.index += 1
        return self._permutation[start : start + self.batch_size][self.local]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.steps_per_call == 1:
            idx = self._indices()
        else:  # (K, B_local) -> leaves (K, B_local, ...)
            idx = np.stack([self._indices() for _ in range(self.steps_per_call)])
        return {name: a[idx] for name, a in self.arrays.items()}


class Prefetcher:
    """Runs ``loader`` in a thread, placing batches on devices ahead of the step.

    Yields ``(device_batch, loader_state_after)``: the state to checkpoint once
    that batch has been consumed, so a resume never skips or repeats a batch.
    ``depth=0`` runs the loader inline in the caller's thread instead (no thread,
    no queue): cheaper where there is nothing to overlap, as on CPU.
    """

    _DONE = object()

    def __init__(self, loader: ArrayLoader, put: Callable[[Batch], Any], depth: int = 2):
        self._loader = loader
        self._put = put
        self._thread = None
        if depth == 0:
            return
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zoo-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = (self._put(next(self._loader)), self._loader.state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._queue.put((self._DONE, e))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[Any, dict[str, int]]:
        if self._thread is None:
            return self._put(next(self._loader)), self._loader.state()
        batch, state = self._queue.get()
        if batch is self._DONE:
            raise state
        return batch, state

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
