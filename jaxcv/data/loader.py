"""Deterministic, resumable batch loader over a random-access source.

The order of epoch `e` is a permutation drawn from `(seed, e)`, and the augmentation randomness of
item `i` in epoch `e` comes from `np.random.default_rng([seed, e, i])`. So batch `s` is a pure
function of `(seed, s)`: resuming at step `s` continues the data order and augmentations exactly
where an uninterrupted run would be. Each process reads only its own slice of every global batch
(multi-host ready). Items are loaded by a thread pool (Pillow and numpy release the GIL) and the
next batches are prefetched in the background.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxcv.data.base import DataError, Source

Example = dict[str, Any]
EVAL_EPOCH = 2**32 - 1  # the "epoch" in the rng key of eval items: never a training epoch
Transform = Callable[[Example, np.random.Generator], Example]


def collate(examples: list[Example]) -> dict[str, np.ndarray]:
    """Stacks a list of same-shaped examples into a batch dict."""
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


class Loader:
    """Batches of transformed examples for one process.

    Args:
      source: random-access dataset of raw examples.
      transform: maps a raw example and a Generator to a fixed-shape example.
      global_batch_size: examples per step over all processes.
      seed: seed of the order and of the augmentations.
      bad_input: "fail" raises the source's DataError (it names the file); "skip" replaces the item
        by the next readable one (in evaluation the replacement is marked `valid=False`, so no image
        counts twice) and records each bad item once in `self.skipped` (its reason); a known-bad item
        is not read again. `self.skipped` starts with the source's own `skipped` list, if any.
    """

    def __init__(
        self,
        source: Source,
        transform: Transform,
        *,
        global_batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        bad_input: str = "fail",
        num_threads: int = 4,
        prefetch: int = 2,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"batch_size={global_batch_size} is not divisible by the number of processes "
                f"({process_count})"
            )
        if bad_input not in ("fail", "skip"):
            raise ValueError(f"data.bad_input must be 'fail' or 'skip', got {bad_input!r}")
        if len(source) == 0:
            raise DataError(f"dataset {type(source).__name__} is empty")
        self.source = source
        self.transform = transform
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self.bad_input = bad_input
        self.prefetch = prefetch
        # Problems a source already skipped while indexing (e.g. COCO annotations, images without masks)
        # count too, so `len(skipped)` is everything "skip" left out.
        self.skipped: list[str] = [str(s) for s in getattr(source, "skipped", None) or []]
        if self.skipped:
            logging.warning("%s skipped %d bad input(s) while indexing, e.g. %s", type(source).__name__,
                            len(self.skipped), self.skipped[0])
        self._bad: set[int] = set()  # indices known to be unreadable, recorded once in `skipped`
        self._bad_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (training drops the remainder)."""
        return max(1, len(self.source) // self.global_batch_size)

    def _load(self, index: int, rng_key: list[int]) -> tuple[Example, bool]:
        """Item `index` transformed, or (with "skip") the next readable one; and whether it was replaced."""
        n = len(self.source)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            try:
                return self.transform(self.source[i], np.random.default_rng(rng_key + [i])), attempt > 0
            except DataError as e:
                if self.bad_input == "fail":
                    raise
                with self._bad_lock:
                    new = i not in self._bad
                    if new:
                        self._bad.add(i)
                        self.skipped.append(str(e))
                if new:
                    logging.warning("skipping bad input (%d so far): %s", len(self.skipped), e)
        raise DataError(f"no readable item in {type(self.source).__name__}")

    def _batch(self, indices: np.ndarray, rng_key: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The collated items and bool [len(indices)]: which ones were replaced by a readable neighbour."""
        loaded = list(self._pool.map(lambda i: self._load(int(i), rng_key), indices))
        return collate([ex for ex, _ in loaded]), np.array([replaced for _, replaced in loaded], bool)

    def train_indices(self, step: int) -> tuple[np.ndarray, int]:
        """This process's item indices of global batch `step`, and its epoch."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
        start = k * self.global_batch_size + self.process_index * self.local_batch_size
        return order[start : start + self.local_batch_size], epoch

    def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Endless training batches from `start_step` on, prefetched in a background thread."""

        def make(step: int) -> dict[str, np.ndarray]:
            idx, epoch = self.train_indices(step)
            return self._batch(idx, [self.seed, epoch])[0]

        return _prefetch((make(s) for s in _count(start_step)), self.prefetch)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the split in order; the last batch is padded and `valid` marks real items.

        Items are split between processes by global batch, like training. Eval transforms are
        expected to be deterministic; the Generator they get is seeded by the item index.
        """
        n = len(self.source)
        num_batches = -(-n // self.global_batch_size)

        def make(b: int) -> dict[str, np.ndarray]:
            start = b * self.global_batch_size + self.process_index * self.local_batch_size
            idx = np.arange(start, start + self.local_batch_size)
            valid = idx < n
            batch, replaced = self._batch(np.where(valid, idx, 0), [self.seed, EVAL_EPOCH])
            batch["valid"] = valid & ~replaced
            return batch

        return _prefetch((make(b) for b in range(num_batches)), self.prefetch)


def _count(start: int) -> Iterator[int]:
    while True:
        yield start
        start += 1


def _prefetch(it: Iterator[Any], size: int) -> Iterator[Any]:
    """Runs `it` in a daemon thread, `size` items ahead; re-raises its errors in the consumer."""
    if size <= 0:
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def worker() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    threading.Thread(target=worker, daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
