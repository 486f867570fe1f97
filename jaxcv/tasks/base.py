"""What a task wires together: model, data transforms, loss, predictions and evaluation.

The trainer (`jaxcv.train`) is task-agnostic; it calls these methods. `loss` and `predict` run
inside jit on the global batch; everything else runs on the host.
"""

from __future__ import annotations

import json
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
    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        """The model's `__call__` keyword arguments (besides `train`) from the global batch, in the train and eval
        steps. Default: the image, as every model's `x`; a task whose model takes more (prompts, precomputed
        features) returns those from its `device_keys`."""
        return {"x": batch["image"]}

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

    def prepare(self, state: Any, workdir: Path) -> None:
        """Host-side work that needs the run's starting weights (`state`), once, before the first train or eval
        batch (the trainer calls it after restoring); e.g. caching a frozen encoder's outputs. Default: nothing."""

    # ---- prediction on images and video (`jaxcv.predict`, `--mode=predict`) ---------------------------
    # The JSON that `predict_files` writes with every image's records ("" = none).
    prediction_json = ""

    def predict_transform(self) -> Transform:
        """`make_transform(train=False)`, built once for every image and frame predicted."""
        if getattr(self, "_predict_transform", None) is None:
            self._predict_transform = self.make_transform(train=False)
        return self._predict_transform

    def prepare_input(self, image: np.ndarray) -> tuple[np.ndarray, Any]:
        """uint8 RGB image [H, W, 3] -> (model input float32 [S, S, 3], meta for `postprocess`): the eval
        transform of one unlabelled image."""
        raise NotImplementedError(f"--mode=predict is not implemented for task {self.name!r}")

    def predict_outputs(self, outputs: dict[str, Any]) -> dict[str, jax.Array]:
        """Model outputs on a batch -> fixed-shape predictions [B, ...] (inside jit): `predict`'s by default."""
        return self.predict(outputs, {})

    def postprocess(self, pred: dict[str, np.ndarray], meta: Any) -> dict[str, Any]:
        """One image's row of `predict_outputs` (no batch axis) -> its result in the image's own pixels."""
        raise NotImplementedError(f"--mode=predict is not implemented for task {self.name!r}")

    def draw(self, image: np.ndarray, result: dict[str, Any]) -> np.ndarray:
        """The image (uint8 RGB [H, W, 3]) with `result` painted on it, uint8 RGB [H, W, 3]."""
        raise NotImplementedError(f"--mode=predict is not implemented for task {self.name!r}")

    def result_record(self, result: dict[str, Any]) -> dict[str, Any]:
        """`result` as JSON-able values (a video's JSON-lines record, with `frame` and `time` added)."""
        raise NotImplementedError(f"--mode=predict is not implemented for task {self.name!r}")

    def save_prediction(self, path: Path, index: int, image: np.ndarray, result: dict[str, Any],
                        outdir: Path) -> list[dict[str, Any]]:
        """Writes one image's pictures to `outdir`; returns its records for `prediction_json`."""
        raise NotImplementedError(f"--mode=predict is not implemented for task {self.name!r}")

    def predict_files(self, apply_fn: Any, variables: Any, paths: list[str], outdir: Path, *,
                      batch_size: int = 8, predictor: Any = None) -> None:
        """Runs the model on image files (`batch_size` at a time through `jaxcv.predict.Predictor`, or
        `predictor`'s compiled function) and writes each one's pictures plus `prediction_json`."""
        from jaxcv.data.base import load_image
        from jaxcv.predict import Predictor

        predictor = predictor or Predictor(self, apply_fn, variables, batch_size)
        records: list[dict[str, Any]] = []
        images = (load_image(p) for p in paths)
        for i, (path, (image, result)) in enumerate(zip(paths, predictor.predict_images(images), strict=True)):
            records += self.save_prediction(Path(path), i, image, result, Path(outdir))
        if self.prediction_json:
            (Path(outdir) / self.prediction_json).write_text(json.dumps(records, indent=1))
