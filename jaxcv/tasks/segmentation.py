"""Semantic segmentation (U-Net family) with cross-entropy and/or soft Dice losses.

Config: `model.name` (e.g. "unet_resnet34", "unet", "pets_segmenter"), `data.*` (see
`jaxcv.data.segmentation`), `loss.name` ("ce" | "dice" | "ce_dice"), `loss.ce_weight`,
`loss.dice_weight`, `loss.class_weights`, `evals.segmentation.void_class` (a class id excluded from the metrics,
CamVid style). Metrics come from one confusion matrix over the whole split (never per-batch means).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.data.base import IGNORE_INDEX
from jaxcv.evaluation.segmentation import ConfusionMatrix
from jaxcv.losses import segmentation_cross_entropy, soft_dice_loss, upcast
from jaxcv.tasks import TASKS
from jaxcv.tasks.base import EVALUATORS, Evaluator, Task

LOSSES = ("ce", "dice", "ce_dice")


@TASKS.register("segmentation")
class SegmentationTask(Task):
    name = "segmentation"
    picture_kind = "mask"
    device_keys = ("image", "mask")

    @property
    def num_classes(self) -> int:
        return int(self.source("train").num_classes)

    def validate(self) -> None:
        if self.config.loss.name not in LOSSES:
            raise ValueError(f"loss.name={self.config.loss.name!r}; known: {', '.join(LOSSES)}")
        stride = 32  # the U-Nets' deepest level
        if self.image_size % stride:
            raise ValueError(f"data.image_size={self.image_size} must be divisible by {stride} for a U-Net")
        n = self.config.data.num_classes
        if n and n != self.num_classes:
            raise ValueError(
                f"data.num_classes={n} but dataset {self.config.data.name!r} has {self.num_classes} classes"
            )

    def make_transform(self, train: bool):
        from jaxcv.data.segmentation import make_segmentation_transform

        aug = self.config.data.augment
        jitter = aug.scale_jitter
        return make_segmentation_transform(
            self.image_size, train, hflip=bool(aug.hflip), scale_jitter=tuple(jitter) if jitter else None
        )

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = super().model_kwargs()
        kwargs["num_classes"] = self.num_classes
        return kwargs

    def loss(self, outputs, batch):
        lc = self.config.loss
        logits = upcast(outputs["logits"])
        mask = batch["mask"]
        weights = lc.class_weights
        terms: dict[str, jax.Array] = {}
        total = jnp.zeros((), jnp.float32)
        if lc.name in ("ce", "ce_dice"):
            cw = jnp.asarray(weights, jnp.float32) if weights else None
            terms["ce"] = segmentation_cross_entropy(logits, mask, ignore_index=IGNORE_INDEX, class_weights=cw)
            total = total + lc.ce_weight * terms["ce"]
        if lc.name in ("dice", "ce_dice"):
            terms["dice"] = soft_dice_loss(logits, mask, self.num_classes, ignore_index=IGNORE_INDEX)
            total = total + lc.dice_weight * terms["dice"]
        valid = mask != IGNORE_INDEX
        terms["pixel_acc"] = ((jnp.argmax(logits, -1) == mask) & valid).sum() / jnp.maximum(valid.sum(), 1)
        return total, terms

    def predict(self, outputs, batch):
        return {"pred": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)}

    # ---- prediction (jaxcv.predict) ----------------------------------------------------------------
    def prepare_input(self, image):
        h, w = image.shape[:2]
        ex = self.predict_transform()({"image": image, "mask": np.zeros((h, w), np.uint8)}, np.random.default_rng(0))
        # The eval transform resizes the longer side to S and pads bottom/right with IGNORE_INDEX in the mask: the
        # image covers the mask's non-padding rows and columns [:nh, :nw].
        inside = ex["mask"] != IGNORE_INDEX
        return ex["image"], {"hw": (h, w), "resized_hw": (int(inside[:, 0].sum()), int(inside[0].sum()))}

    def postprocess(self, pred, meta):
        """`mask` uint8 [H, W]: class ids at the original resolution (the padding cropped off, then NEAREST)."""
        from PIL import Image

        (h, w), (nh, nw) = meta["hw"], meta["resized_hw"]
        pred = np.asarray(pred["pred"])[:nh, :nw].astype(np.uint8)
        if (nh, nw) != (h, w):
            pred = np.asarray(Image.fromarray(pred).resize((w, h), Image.NEAREST))
        return {"mask": pred}

    def draw(self, image, result):
        from jaxcv.viz import overlay_mask

        return np.asarray(overlay_mask(image, result["mask"]))

    def result_record(self, result):
        """Pixels per predicted class (the masks themselves go to pictures)."""
        names = list(self.source("train").class_names)
        ids, counts = np.unique(result["mask"], return_counts=True)
        return {"class_pixels": {(names[int(k)] if int(k) < len(names) else str(int(k))): int(n)
                                 for k, n in zip(ids, counts, strict=True)}}

    def save_prediction(self, path, index, image, result, outdir):
        from PIL import Image

        from jaxcv.viz import indexed_mask_png

        indexed_mask_png(result["mask"]).save(outdir / f"{path.stem}_mask.png")
        Image.fromarray(self.draw(image, result)).save(outdir / f"{path.stem}_overlay.png")
        return []

class SegmentationEvaluator(Evaluator):
    """mIoU, per-class IoU and Dice (fastai DiceMulti semantics), pixel accuracy."""

    def __init__(self, num_classes: int, class_names: list[str], void_class: int | None):
        self.cm = ConfusionMatrix(num_classes, void_class=void_class)
        self.names = class_names
        self._result: dict[str, Any] = {}
        self.samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, batch, preds) -> None:
        valid = np.asarray(batch["valid"], bool)
        self.cm.update(np.asarray(preds["pred"])[valid], np.asarray(batch["mask"])[valid])
        for b in np.flatnonzero(valid)[: max(0, 8 - len(self.samples))]:
            self.samples.append((batch["image"][b], np.asarray(batch["mask"][b]), np.asarray(preds["pred"][b])))

    def result(self) -> dict[str, float]:
        r = self.cm.compute()
        self._result = r
        return {"mIoU": float(r["mIoU"]), "dice": float(r["mean_dice"]), "pixel_acc": float(r["pixel_accuracy"])}

    def save(self, directory: Path) -> None:
        from jaxcv.viz import grid, overlay_mask

        serial = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in self._result.items()}
        serial["class_names"] = self.names
        (directory / "segmentation.json").write_text(json.dumps(serial, indent=2, default=float))
        tiles = []
        for image, mask, pred in self.samples:
            tiles += [overlay_mask(image, mask), overlay_mask(image, pred)]
        if tiles:
            grid(tiles, cols=4).save(directory / "predictions.png")


@EVALUATORS.register("segmentation")
def _segmentation_evaluator(task: SegmentationTask, split: str = "validation", void_class: int = -1
                            ) -> SegmentationEvaluator:
    """`void_class` >= 0: that class is left out of the mean metrics (CamVid's "Void")."""
    src = task.source(split)
    return SegmentationEvaluator(src.num_classes, list(src.class_names), void_class if void_class >= 0 else None)
