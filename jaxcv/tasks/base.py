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
from jaxcv.registry import Registry

Batch = dict[str, Any]
# type -> callable(task, **kwargs) -> Evaluator; `config.evals.NAME = {"type": TYPE, **kwargs}` (big_vision).
EVALUATORS = Registry("evaluator")


class Evaluator:
    """Accumulates host-side predictions over a split; `result()` gives named scalar metrics."""

    def update(self, batch: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Writes artifacts (JSON, PNG) of the last `result()` to `directory`."""


class MultiEvaluator(Evaluator):
    """Several evaluators over the same predictions; their metrics merged (a name given twice is an error)."""

    def __init__(self, evaluators: dict[str, Evaluator]):
        self.evaluators = evaluators

    def update(self, batch, preds) -> None:
        for e in self.evaluators.values():
            e.update(batch, preds)

    def result(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for name, e in self.evaluators.items():
            metrics = e.result()
            clash = sorted(set(metrics) & set(merged))
            if clash:
                raise ValueError(f"evaluator config.evals.{name} reports {clash}, already reported by another")
            merged.update(metrics)
        return merged

    def save(self, directory: Path) -> None:
        for e in self.evaluators.values():
            e.save(directory)


class Task:
    """Base class; subclasses set `name` and implement the abstract parts."""

    name = ""
    # How `jaxcv.show` draws this task's examples and predictions: "boxes" (padded boxes + labels), "box"
    # (one relative box), "mask" (a class map), "labels" (multi-hot classes) or "label" (one class).
    picture_kind = "label"
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
        dtype = self.config.dtype
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
    def evaluator_specs(self) -> dict[str, tuple[Any, dict[str, Any]]]:
        """`config.evals` as {name: (builder, kwargs)}; an unknown type fails naming the key."""
        specs = {}
        for name, spec in (self.config.evals or {}).items():
            kwargs = dict(spec)
            kind = kwargs.pop("type", name)
            if kind not in EVALUATORS:
                import importlib

                from jaxcv.tasks import TASK_MODULES

                for module in TASK_MODULES:  # each registers its evaluators: list them all
                    importlib.import_module(f"jaxcv.tasks.{module}")
                raise ValueError(f"config.evals.{name}.type={kind!r}: unknown evaluator; known: "
                                 f"{', '.join(EVALUATORS.names())}")
            specs[name] = (EVALUATORS.get(kind), kwargs)
        if not specs:
            raise ValueError("config.evals names no evaluator")
        return specs

    def evaluator(self) -> Evaluator:
        """The evaluators of `config.evals`, built for this task (one, or a MultiEvaluator)."""
        built = {name: builder(self, **kwargs) for name, (builder, kwargs) in self.evaluator_specs().items()}
        return next(iter(built.values())) if len(built) == 1 else MultiEvaluator(built)

    def validate(self) -> None:
        """Checks the config for inconsistent values before anything compiles."""

    def predict_files(self, apply_fn: Any, variables: Any, paths: list[str], outdir: Path) -> None:
        raise NotImplementedError(f"--mode=predict is not implemented for task {self.name!r}")
