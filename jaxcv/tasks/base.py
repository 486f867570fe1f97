"""What a task wires together: model, data transforms, loss, predictions and evaluation.

The trainer (`jaxcv.train`) is task-agnostic; it calls these methods. `loss` and `predict` run
inside jit on the global batch; everything else runs on the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxcv.data import DATASETS
from jaxcv.data.base import Source
from jaxcv.data.loader import Transform
from jaxcv.models import create_model

Batch = dict[str, Any]


class Evaluator:
    """Accumulates host-side predictions over a split; `result()` gives named scalar metrics."""

    def update(self, batch: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Writes artifacts (JSON, PNG) of the last `result()` to `directory`."""


class Task:
    """Base class; subclasses set `name` and implement the abstract parts."""

    name = ""
    # Keys of a batch that the jitted steps receive (others stay on the host).
    device_keys: tuple[str, ...] = ("image",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self._sources: dict[str, Source] = {}

    # ---- data -----------------------------------------------------------------------------
    def source(self, split: str) -> Source:
        """The dataset of a split ("train" | "validation"), built once."""
        if split not in self._sources:
            self._sources[split] = DATASETS.get(self.config.data.name)(self.config.data, split)
        return self._sources[split]

    def make_transform(self, train: bool) -> Transform:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    # ---- model ----------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.config.model.to_dict().items() if k != "name"}
        dtype = self.config.get("dtype", "float32")
        kwargs.setdefault("dtype", jax.numpy.dtype(dtype))
        return kwargs

    def create_model(self) -> nn.Module:
        return create_model(self.config.model.name, **self.model_kwargs())

    def dummy_input(self) -> np.ndarray:
        s = self.image_size
        return np.zeros((1, s, s, 3), np.float32)

    # ---- jitted parts -----------------------------------------------------------------------
    def loss(self, outputs: dict[str, Any], batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar loss and its named terms, from model outputs on the global batch."""
        raise NotImplementedError

    def predict(self, outputs: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
        """Fixed-shape predictions for evaluation."""
        raise NotImplementedError

    # ---- host parts -----------------------------------------------------------------------
    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def validate(self) -> None:
        """Checks the config for inconsistent values before anything compiles."""

    def predict_files(self, apply_fn: Any, variables: Any, paths: list[str], outdir: Path) -> None:
        raise NotImplementedError(f"--mode=predict is not implemented for task {self.name!r}")
