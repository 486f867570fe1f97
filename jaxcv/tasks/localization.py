"""Largest-object localization (fastai course part 2, "pascal" notebook): one box and one class per image.

Each image's target is its largest ground-truth box (by box area; the first on ties) and that box's
class, read from any detection source (`boxes` xyxy pixels, `labels`). The model (`localizer` in
`jaxcv.models.simple_detectors`) predicts a box relative to the image (0..1 xyxy) and class logits.
Loss: `loss.cls_weight` * softmax cross-entropy + `loss.box_weight` * L1 on the relative xyxy
coordinates (mean over the 4), averaged over images that have a box (images without any object
count for neither). Metrics over the validation images with a box: `accuracy` (class), `mean_iou`
(IoU of the predicted box with the largest gt box), `acc_iou50` (share with IoU >= 0.5) and
`loc_accuracy` (right class and IoU >= 0.5, the classic localization score).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxcv.data.base import normalize
from jaxcv.losses import softmax_cross_entropy, upcast
from jaxcv.tasks import TASKS
from jaxcv.tasks.base import EVALUATORS, Evaluator, Task

METRICS = ("accuracy", "mean_iou", "acc_iou50", "loc_accuracy")


def paired_box_iou(a: Any, b: Any) -> Any:
    """IoU of paired boxes: a [..., 4], b [..., 4] xyxy (any units) -> [...]. Degenerate boxes have
    area 0; 0 / 0 (two empty boxes) gives 0. numpy in, numpy out; jax in (also traced), jax out."""
    xp = jnp if isinstance(a, jax.Array) or isinstance(b, jax.Array) else np
    iw = xp.clip(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = xp.clip(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih

    def area(x):
        return xp.clip(x[..., 2] - x[..., 0], 0, None) * xp.clip(x[..., 3] - x[..., 1], 0, None)

    union = area(a) + area(b) - inter
    return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0.0)


def largest_box(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """boxes [N, 4] xyxy, labels [N] -> (box [4], label, found): the box of largest area (first on
    ties, as np.argmax); (zeros, 0, False) when N = 0."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(4, np.float32), 0, False
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    i = int(np.argmax(areas))
    return boxes[i], int(np.asarray(labels).reshape(-1)[i]), True


def make_localization_transform(image_size: int, train: bool, hflip: bool = True):
    """Raw detection example -> `image` float32 [S, S, 3] (squashed to S x S, ImageNet-normalized),
    `box` float32 [4] xyxy relative to the image, `label` int32, `has_box` bool, `image_id` int.
    The target is the largest non-crowd box. Training flips horizontally with probability 0.5 when `hflip`."""

    def transform(ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = np.asarray(ex["image"])
        h, w = image.shape[:2]
        boxes = np.asarray(ex.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        labels = np.asarray(ex.get("labels", np.zeros((0,))), np.int32).reshape(-1)
        if "iscrowd" in ex:  # crowd regions are not objects to localize (COCO)
            keep = ~np.asarray(ex["iscrowd"], bool).reshape(-1)
            boxes, labels = boxes[keep], labels[keep]
        box, label, found = largest_box(boxes, labels)
        box = (box / np.array([w, h, w, h], np.float32)).clip(0, 1)
        if (h, w) != (image_size, image_size):
            image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
        if train and hflip and rng.random() < 0.5:
            image = image[:, ::-1]
            box = np.array([1 - box[2], box[1], 1 - box[0], box[3]], np.float32)
        return {
            "image": normalize(np.ascontiguousarray(image)),
            "box": box.astype(np.float32),
            "label": np.int32(label),
            "has_box": np.bool_(found),
            "image_id": int(ex.get("image_id", 0)),
        }

    return transform


@TASKS.register("localization")
class LocalizationTask(Task):
    name = "localization"
    picture_kind = "box"
    device_keys = ("image", "box", "label", "has_box")

    @property
    def num_classes(self) -> int:
        return int(self.source("train").num_classes)

    def validate(self) -> None:
        n = self.config.data.num_classes
        if n and n != self.num_classes:
            raise ValueError(
                f"data.num_classes={n} but dataset {self.config.data.name!r} has {self.num_classes} classes"
            )

    def make_transform(self, train: bool):
        aug = self.config.data.augment
        return make_localization_transform(self.image_size, train, hflip=bool(aug.hflip))

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = super().model_kwargs()
        kwargs["num_classes"] = self.num_classes
        return kwargs

    def loss(self, outputs, batch):
        lc = self.config.loss
        boxes = upcast(outputs["boxes"])  # [B, 4]
        logits = upcast(outputs["logits"])  # [B, K]
        m = batch["has_box"].astype(jnp.float32)  # [B]
        denom = jnp.maximum(m.sum(), 1.0)
        ce = softmax_cross_entropy(logits, batch["label"])  # [B]
        l1 = jnp.abs(boxes - batch["box"]).mean(-1)  # [B]
        cls_loss = (ce * m).sum() / denom
        box_loss = (l1 * m).sum() / denom
        total = float(lc.cls_weight) * cls_loss + float(lc.box_weight) * box_loss
        iou = paired_box_iou(boxes, batch["box"])
        acc = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return total, {"cls_loss": cls_loss, "box_loss": box_loss, "accuracy": (acc * m).sum() / denom,
                       "iou": (iou * m).sum() / denom}

    def predict(self, outputs, batch):
        probs = jax.nn.softmax(outputs["logits"].astype(jnp.float32), -1)
        boxes = jnp.clip(outputs["boxes"].astype(jnp.float32), 0.0, 1.0)  # clipped to the image, as detections
        return {"boxes": boxes, "labels": jnp.argmax(probs, -1).astype(jnp.int32), "scores": jnp.max(probs, -1)}

    # ---- prediction (jaxcv.predict) ----------------------------------------------------------------
    prediction_json = "localizations.json"  # [{"file", "box_xyxy" (original pixels), "class", "score"}]

    def prepare_input(self, image):
        return self.predict_transform()({"image": image}, np.random.default_rng(0))["image"], image.shape[:2]

    def postprocess(self, pred, meta):
        """`box_xyxy` [4] original pixels, `label`, `class_name`, `score`."""
        h, w = meta
        label = int(pred["labels"])
        return {"box_xyxy": np.asarray(pred["boxes"], np.float32) * np.array([w, h, w, h], np.float32),
                "label": label, "class_name": list(self.source("train").class_names)[label],
                "score": float(pred["scores"])}

    def draw(self, image, result):
        from jaxcv.viz import draw_detections

        names = list(self.source("train").class_names)
        return np.asarray(draw_detections(image, result["box_xyxy"][None], [result["label"]], [result["score"]],
                                          names))

    def result_record(self, result):
        return {"box_xyxy": [float(v) for v in result["box_xyxy"]], "class": result["class_name"],
                "score": result["score"]}

    def save_prediction(self, path, index, image, result, outdir):
        Image.fromarray(self.draw(image, result)).save(outdir / f"{path.stem}_loc.png")
        return [{"file": str(path), **self.result_record(result)}]

class LocalizationEvaluator(Evaluator):
    """Accuracy, mean IoU with the largest gt box, accuracy at IoU >= 0.5 and both together, over the
    valid images that have a box."""

    def __init__(self, class_names: list[str]):
        self.class_names = class_names
        self.ious: list[np.ndarray] = []
        self.correct: list[np.ndarray] = []
        self.samples: list[tuple[np.ndarray, dict[str, Any]]] = []
        self._metrics: dict[str, float] = {}

    def update(self, batch, preds) -> None:
        keep = np.asarray(batch["valid"], bool) & np.asarray(batch["has_box"], bool)
        pred_boxes = np.asarray(preds["boxes"], np.float64)[keep]
        gt_boxes = np.asarray(batch["box"], np.float64)[keep]
        self.ious.append(paired_box_iou(pred_boxes, gt_boxes))
        self.correct.append(np.asarray(preds["labels"])[keep] == np.asarray(batch["label"])[keep])
        for b in np.flatnonzero(keep):
            if len(self.samples) < 16:
                self.samples.append((np.asarray(batch["image"][b]), {
                    "gt_box": np.asarray(batch["box"][b]), "gt_label": int(batch["label"][b]),
                    "box": np.asarray(preds["boxes"][b]), "label": int(preds["labels"][b]),
                    "score": float(preds["scores"][b])}))

    def result(self) -> dict[str, float]:
        iou = np.concatenate(self.ious) if self.ious else np.zeros(0)
        correct = np.concatenate(self.correct) if self.correct else np.zeros(0, bool)
        if iou.size == 0:
            self._metrics = {k: 0.0 for k in METRICS}
        else:
            hit = iou >= 0.5
            self._metrics = {"accuracy": float(correct.mean()), "mean_iou": float(iou.mean()),
                             "acc_iou50": float(hit.mean()), "loc_accuracy": float((hit & correct).mean())}
        return dict(self._metrics)

    def save(self, directory: Path) -> None:
        n = int(sum(len(x) for x in self.ious))
        (directory / "localization.json").write_text(json.dumps({**self._metrics, "num_images": n}, indent=2))
        if not self.samples:
            return
        from jaxcv.viz import draw_detections, grid

        k = len(self.class_names)
        names = [f"gt {c}" for c in self.class_names] + list(self.class_names)
        tiles = []
        for image, s in self.samples:
            size = np.array(image.shape[1::-1] * 2, np.float32)  # (w, h, w, h)
            boxes = np.stack([s["gt_box"], s["box"]]) * size
            tiles.append(draw_detections(image, boxes, [s["gt_label"], k + s["label"]], [1.0, s["score"]], names))
        grid(tiles).save(directory / "predictions.png")


@EVALUATORS.register("localization")
def _localization_evaluator(task: LocalizationTask, split: str = "validation") -> LocalizationEvaluator:
    return LocalizationEvaluator(list(task.source(split).class_names))
