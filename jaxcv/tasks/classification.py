"""Image classification: single-label (softmax cross-entropy) or multi-label (sigmoid BCE).

Config: `model.name` (e.g. "resnet18", "small_cnn"), `data.*` (see `jaxcv.data.classification`),
`loss.label_smoothing`, `multilabel` (bool: sigmoid binary cross-entropy over the set of classes
present, evaluated with per-class F1 and mAP).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcv.evaluation import classification as cls_eval
from jaxcv.losses import softmax_cross_entropy, upcast
from jaxcv.tasks import TASKS
from jaxcv.tasks.base import EVALUATORS, Evaluator, Task


@TASKS.register("classification")
class ClassificationTask(Task):
    name = "classification"

    @property
    def picture_kind(self) -> str:
        return "labels" if self.multilabel else "label"

    @property
    def multilabel(self) -> bool:
        return bool(self.config.multilabel)

    @property
    def device_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("image", "labels") if self.multilabel else ("image", "label")

    @property
    def num_classes(self) -> int:
        return int(self.source("train").num_classes)

    def validate(self) -> None:
        n = self.config.data.num_classes
        if n and self.num_classes != n:
            raise ValueError(
                f"data.num_classes={n} but dataset {self.config.data.name!r} has {self.num_classes} classes"
            )

    def make_transform(self, train: bool):
        from jaxcv.data.classification import make_classification_transform

        d = self.config.data
        aug = d.augment
        return make_classification_transform(
            self.image_size,
            train,
            hflip=aug.hflip,
            random_resized_crop=aug.random_resized_crop,
            crop_scale=tuple(aug.crop_scale),
            eval_crop_ratio=aug.eval_crop_ratio or None,
            pad_crop=int(aug.pad_crop),
            rotation=float(aug.rotation),
            multilabel_classes=self.num_classes if self.multilabel else None,
        )

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = super().model_kwargs()
        kwargs["num_classes"] = self.num_classes
        return kwargs

    def loss(self, outputs, batch):
        logits = upcast(outputs["logits"])
        if self.multilabel:
            loss = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean()
            return loss, {}
        loss = softmax_cross_entropy(logits, batch["label"], float(self.config.loss.label_smoothing)).mean()
        acc = (jnp.argmax(logits, -1) == batch["label"]).mean()
        return loss, {"accuracy": acc}

    def predict(self, outputs, batch):
        return {"logits": outputs["logits"].astype(jnp.float32)}

    # ---- prediction (jaxcv.predict) ----------------------------------------------------------------
    prediction_json = "predictions.json"  # [{"file", "class", "class_name", "score", "top5"}]

    def prepare_input(self, image):
        ex = self.predict_transform()({"image": image, "label": 0, "labels": np.zeros((0,), np.int32)},
                                      np.random.default_rng(0))
        return ex["image"], None

    def predict_outputs(self, outputs):
        """`probs` [B, K]: softmax (single-label) or per-class sigmoid (multi-label)."""
        logits = self.predict(outputs, {})["logits"]
        return {"probs": jax.nn.sigmoid(logits) if self.multilabel else jax.nn.softmax(logits, -1)}

    def postprocess(self, pred, meta):
        """`probs` [K], the top class (`class`, `class_name`, `score`) and `top5` [(class_name, prob)]."""
        names = list(self.source("train").class_names)
        probs = np.asarray(pred["probs"], np.float32)
        top = np.argsort(-probs, kind="stable")[:5]
        return {"probs": probs, "class": int(top[0]), "class_name": names[top[0]], "score": float(probs[top[0]]),
                "top5": [(names[k], float(probs[k])) for k in top]}

    def draw(self, image, result):
        from jaxcv.viz import draw_caption

        return np.asarray(draw_caption(image, f"{result['class_name']}: {result['score']:.2f}"))

    def result_record(self, result):
        return {"class": result["class"], "class_name": result["class_name"], "score": result["score"],
                "top5": [{"class": c, "prob": p} for c, p in result["top5"]]}

    def save_prediction(self, path, index, image, result, outdir):
        from PIL import Image

        Image.fromarray(self.draw(image, result)).save(outdir / f"{path.stem}_{result['class_name']}.png")
        return [{"file": str(path), **self.result_record(result)}]

class ClassificationEvaluator(Evaluator):
    """Top-1/top-5 accuracy, per-class precision/recall and the confusion matrix over the whole split
    (single-label), or per-class F1 and mAP (multi-label); see `jaxcv.evaluation.classification`."""

    def __init__(self, num_classes: int, class_names: list[str], multilabel: bool):
        self.names = class_names
        self.multilabel = multilabel
        self.metrics = cls_eval.ClassificationEvaluator(num_classes, multilabel=multilabel)
        self._result: dict[str, Any] = {}

    def update(self, batch, preds) -> None:
        valid = np.asarray(batch["valid"], bool)
        key = "labels" if self.multilabel else "label"
        self.metrics.update(np.asarray(preds["logits"])[valid], np.asarray(batch[key])[valid])

    def result(self) -> dict[str, float]:
        r = self._result = self.metrics.compute()
        if self.multilabel:
            return {"mAP": float(r["mAP"]), "macro_f1": float(r["macro_f1"])}
        out = {"accuracy": float(r["top1"]), "macro_recall": float(r["macro_recall"])}
        if "top5" in r:
            out["top5_accuracy"] = float(r["top5"])
        return out

    def save(self, directory: Path) -> None:
        r = self._result
        serial = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}
        (directory / "classification.json").write_text(json.dumps(serial, indent=2, default=str))
        if not self.multilabel:
            cls_eval.save_confusion_matrix(
                r["confusion_matrix"], self.names,
                directory / "confusion_matrix.png", directory / "confusion_matrix.json",
            )


@EVALUATORS.register("classification")
def _classification_evaluator(task: ClassificationTask, split: str = "validation") -> ClassificationEvaluator:
    src = task.source(split)
    return ClassificationEvaluator(src.num_classes, list(src.class_names), task.multilabel)
