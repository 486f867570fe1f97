"""On-disk cache of a frozen image encoder's outputs, one row per dataset item (SAM fine-tuning, where the ViT
image encoder costs nearly all of a step and does not change while frozen: SAM's own training computes image
embeddings once per image for its interactive rounds, for the same reason).

Layout, under `directory` (the trainer's `WORKDIR/embeddings`):
- `{split}.npy`: [N, F, g, g, D] (a `np.load(mmap_mode="r")` memmap): item i's embedding, F = 2 when the split is
  augmented with horizontal flips (slot 1 = the embedding of the flipped image), else 1. float32, or bfloat16 kept
  bit for bit as uint16 when the encoder computes in bfloat16 (`{split}.json` says which).
- `{split}.json`: `key` (sha256 of the encoder's weights and of `meta`: architecture, dtype, image size, the data
  config, the flips, the number of items), `shape`, `dtype`, `meta`. A cache whose key differs is rebuilt; the
  files are written under temporary names and renamed when complete, so an interrupted build is never reused.

The key trusts the data config: images replaced on disk under the same paths and config are not noticed (delete
the folder). On several processes, process 0 builds and the others wait for it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from jaxcv.data.base import DataError

CACHE_VERSION = 1
# split -> how many times its cache was (re)built in this process; tests check that a second run reuses it.
BUILDS: collections.Counter[str] = collections.Counter()


def weights_digest(params: Any) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in sorted(flatten_dict(jax.device_get(params), sep="/").items()):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(params: Any, meta: dict[str, Any]) -> str:
    """The key of a cache: the weights' digest and `meta` (JSON, keys sorted), with the format version."""
    text = json.dumps({"version": CACHE_VERSION, "meta": meta}, sort_keys=True, default=str)
    return hashlib.sha256((weights_digest(params) + text).encode()).hexdigest()


def to_stored(x: np.ndarray) -> tuple[np.ndarray, str]:
    """Embeddings -> (array to store, dtype name): bfloat16 as its uint16 bits (npy has no bfloat16)."""
    if x.dtype == jax.numpy.bfloat16:
        return x.view(np.uint16), "bfloat16"
    return x.astype(np.float32, copy=False), "float32"


def from_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """A stored row -> float32 (exact: bfloat16 bits widen to the same float32 value)."""
    if dtype == "bfloat16":
        return np.asarray(x, np.uint16).view(jax.numpy.bfloat16).astype(np.float32)
    return np.asarray(x, np.float32)


class EmbeddingCache:
    """One split's cache, read row by row (`row(i)` -> float32 [F, g, g, D])."""

    def __init__(self, path: Path, dtype: str, built: bool = False):
        self.path = path
        self.dtype = dtype
        self.built = built  # computed by this call (else reused)
        self.array = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.array)

    @property
    def flips(self) -> int:
        return int(self.array.shape[1])

    def row(self, index: int) -> np.ndarray:
        return from_stored(self.array[index], self.dtype)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def open_or_build(directory: Path, split: str, key: str, meta: dict[str, Any], num_items: int, flips: int,
                  load: Callable[[int, bool], np.ndarray], embed: Callable[[np.ndarray], np.ndarray],
                  batch_size: int, num_threads: int = 4) -> EmbeddingCache:
    """The cache of `split` when `directory/{split}.json` has `key`, else built: item i's image `load(i, flip)`
    (float32 [S, S, 3], the model's input; a `DataError` leaves the row zero: the loader never reads a bad item)
    through `embed` (images [batch_size, S, S, 3] -> [batch_size, g, g, D], jitted: the last batch is padded so
    one compilation serves all), `batch_size` images at a time."""
    directory = Path(directory)
    npy, info = directory / f"{split}.npy", directory / f"{split}.json"
    multi = jax.process_count() > 1
    built = False
    if not multi or jax.process_index() == 0:
        found = _read_json(info)
        if not (found and found.get("key") == key and npy.exists()):
            _build(directory, split, key, meta, num_items, flips, load, embed, batch_size, num_threads)
            built = True
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxcv embedding cache {split}")
    found = _read_json(info)
    if not found or found.get("key") != key:
        raise RuntimeError(f"embedding cache {info} is missing or stale after building it")
    cache = EmbeddingCache(npy, found["dtype"], built)
    if cache.array.shape[:2] != (num_items, flips):
        raise RuntimeError(f"embedding cache {npy} has shape {cache.array.shape}, expected ({num_items}, {flips}, ...)")
    return cache


def _build(directory: Path, split: str, key: str, meta: dict[str, Any], num_items: int, flips: int,
           load: Callable[[int, bool], np.ndarray], embed: Callable[[np.ndarray], np.ndarray], batch_size: int,
           num_threads: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    BUILDS[split] += 1
    jobs = [(i, f) for i in range(num_items) for f in range(flips)]
    logging.info("embedding cache %s: computing %d embeddings", directory / f"{split}.npy", len(jobs))

    def load_job(job: tuple[int, int]) -> np.ndarray | None:
        try:
            return load(job[0], bool(job[1]))
        except DataError:  # the loader skips (or fails on) this item itself
            return None

    tmp = directory / f".{split}.npy.tmp"
    out = None
    dtype = "float32"
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            images = list(pool.map(load_job, chunk))
            shape = next((im.shape for im in images if im is not None), None)
            if shape is None:
                continue
            batch = np.zeros((batch_size, *shape), np.float32)
            for j, im in enumerate(images):
                if im is not None:
                    batch[j] = im
            emb = np.asarray(jax.device_get(embed(batch)))
            stored, dtype = to_stored(emb)
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=stored.dtype,
                                                shape=(num_items, flips, *stored.shape[1:]))
            for j, (i, f) in enumerate(chunk):
                if images[j] is not None:
                    out[i, f] = stored[j]
    if out is None:
        raise DataError(f"embedding cache {split}: no readable item among {num_items}")
    shape = list(out.shape)
    out.flush()
    del out
    os.replace(tmp, directory / f"{split}.npy")
    tmp_info = directory / f".{split}.json.tmp"
    tmp_info.write_text(json.dumps({"key": key, "shape": shape, "dtype": dtype, "meta": meta}, indent=2,
                                   default=str) + "\n")
    os.replace(tmp_info, directory / f"{split}.json")
