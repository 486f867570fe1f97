"""Object detection with RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection").

Wires the model (`config.model`), anchors (`config.anchors`), the loss (`config.loss`, see
`jaxcv.losses.retinanet_loss`), post-processing (`config.postprocess`) and COCO evaluation
(`jaxcv.evaluation.coco`, equal to pycocotools). Ground truth arrives padded to
`config.data.max_boxes` with `box_mask`, so one compilation serves every image.

The same task trains the SSD-style teaching detector (`ssd_grid`): `config.anchors.kind = "grid"`
swaps the pyramid anchors for `grid_anchors` (anchors.grid_sizes / zooms / ratios), and
`config.loss.classification = "bce"` uses plain sigmoid BCE (focal with gamma 0, no alpha).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.data.base import load_image
from jaxcv.evaluation.coco import coco_evaluate
from jaxcv.losses import retinanet_loss, upcast
from jaxcv.ops.anchors import AnchorConfig, generate_anchors, grid_anchors
from jaxcv.ops.postprocess import retinanet_postprocess
from jaxcv.tasks import TASKS
from jaxcv.tasks.base import Evaluator, Task

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@TASKS.register("detection")
class DetectionTask(Task):
    name = "detection"
    device_keys = ("image", "boxes", "labels", "box_mask")

    def __init__(self, config):
        super().__init__(config)
        a = config.anchors
        self.anchor_config = AnchorConfig(
            levels=tuple(a.levels),
            sizes=tuple(float(s) for s in a.sizes),
            scales=tuple(float(s) for s in a.scales),
            aspect_ratios=tuple(float(r) for r in a.aspect_ratios),
            convention=a.convention,
        )
        s = self.image_size
        # anchors.kind: "pyramid" (RetinaNet levels, above) or "grid" (SSD-style square grids of the
        # teaching detector `ssd_grid`: anchors.grid_sizes / zooms / ratios, see `grid_anchors`).
        self.anchor_kind = a.get("kind", "pyramid")
        if self.anchor_kind == "grid":
            zooms, ratios = tuple(float(z) for z in a.zooms), tuple(float(r) for r in a.ratios)
            self.grid_sizes = tuple(int(k) for k in a.grid_sizes)
            anchors, self.num_anchors_per_level = grid_anchors((s, s), self.grid_sizes, zooms, ratios)
            self.num_anchors_per_location = len(zooms) * len(ratios)
        elif self.anchor_kind == "pyramid":
            anchors, self.num_anchors_per_level = generate_anchors((s, s), self.anchor_config)
            self.num_anchors_per_location = self.anchor_config.num_anchors_per_location
        else:
            raise ValueError(f"unknown anchors.kind {self.anchor_kind!r}; use 'pyramid' or 'grid'")
        self.anchors = anchors  # [A, 4] xyxy pixels, numpy (a constant inside jit)

    @property
    def label_map(self) -> str:
        """`data.label_map`: "contiguous" (class k = k-th category in sorted id order) or "category_id"
        (class k = category id k, with unused ids never positive: torchvision's 91-output COCO models)."""
        return self.config.data.get("label_map", "contiguous")

    @property
    def num_classes(self) -> int:
        if self.label_map == "category_id":
            return int(max(label_to_category_id(self.source("train")))) + 1
        return int(self.source("train").num_classes)

    def class_space(self, split: str) -> tuple[np.ndarray, list[str]]:
        """Model class -> dataset category id [num_classes], and the class names (torchvision's "N/A"
        for ids without a category under `label_map="category_id"`)."""
        src = self.source(split)
        ids = label_to_category_id(src)
        if self.label_map != "category_id":
            return ids, list(src.class_names)
        names = ["N/A"] * self.num_classes
        for cid, name in zip(ids, src.class_names, strict=True):
            names[int(cid)] = name
        return np.arange(self.num_classes, dtype=np.int64), names

    def validate(self) -> None:
        stride = 2 ** max(self.anchor_config.levels)
        if self.anchor_kind == "pyramid" and self.image_size % stride:
            raise ValueError(
                f"data.image_size={self.image_size} must be divisible by the largest stride {stride} "
                f"(anchors.levels={tuple(self.anchor_config.levels)})"
            )
        if self.label_map not in ("contiguous", "category_id"):
            raise ValueError(f"data.label_map={self.label_map!r}: use 'contiguous' or 'category_id'")
        n = self.config.data.get("num_classes")
        if n and n != self.num_classes:
            raise ValueError(
                f"data.num_classes={n} but dataset {self.config.data.name!r} has {self.num_classes} classes"
            )
        if self.config.loss.get("classification", "focal") not in ("focal", "bce"):
            raise ValueError(f"loss.classification must be 'focal' or 'bce', got {self.config.loss.classification!r}")

    def make_transform(self, train: bool):
        from jaxcv.data.detection import make_detection_transform

        aug = self.config.data.get("augment", {}) or {}
        jitter = aug.get("scale_jitter")
        return make_detection_transform(
            self.image_size,
            int(self.config.data.max_boxes),
            train,
            hflip=bool(aug.get("hflip", True)),
            scale_jitter=tuple(jitter) if jitter else None,
            photometric=bool(aug.get("photometric", False)),
        )

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = super().model_kwargs()
        kwargs["num_classes"] = self.num_classes
        kwargs["num_anchors"] = self.num_anchors_per_location
        if self.anchor_kind == "grid":
            kwargs["grid_sizes"] = self.grid_sizes
        return kwargs

    def loss(self, outputs, batch):
        lc = self.config.loss
        if outputs["cls_logits"].shape[1] != len(self.anchors):
            raise ValueError(
                f"model {self.config.model.name!r} gives {outputs['cls_logits'].shape[1]} anchors but "
                f"anchors.kind={self.anchor_kind!r} makes {len(self.anchors)}"
            )
        # loss.classification: "focal" (RetinaNet) or "bce" = focal with gamma 0 and no alpha weighting.
        bce = lc.get("classification", "focal") == "bce"
        labels = batch["labels"]
        if self.label_map == "category_id":  # contiguous source labels -> category ids (padding is masked)
            cat_ids = jnp.asarray(label_to_category_id(self.source("train")), jnp.int32)
            labels = jnp.where(batch["box_mask"], cat_ids[jnp.clip(labels, 0, len(cat_ids) - 1)], labels)
        terms = retinanet_loss(
            upcast(outputs["cls_logits"]),
            upcast(outputs["bbox_regression"]),
            self.anchors,
            batch["boxes"],
            labels,
            batch["box_mask"],
            alpha=-1.0 if bce else lc.alpha,
            gamma=0.0 if bce else lc.gamma,
            box_loss=lc.box_loss,
            smooth_l1_beta=lc.smooth_l1_beta,
            normalizer=lc.normalizer,
            fg_iou=lc.fg_iou,
            bg_iou=lc.bg_iou,
            allow_low_quality_matches=lc.allow_low_quality_matches,
            coder_weights=tuple(lc.coder_weights),
        )
        total = terms["classification"] + lc.box_weight * terms["box_regression"]
        return total, {"cls_loss": terms["classification"], "box_loss": terms["box_regression"]}

    def predict(self, outputs, batch):
        pc = self.config.postprocess
        s = self.image_size
        return retinanet_postprocess(
            outputs["cls_logits"].astype(jnp.float32),
            outputs["bbox_regression"].astype(jnp.float32),
            self.anchors,
            self.num_anchors_per_level,
            (s, s),
            score_thresh=pc.score_thresh,
            topk_candidates=pc.topk_candidates,
            nms_thresh=pc.nms_thresh,
            detections_per_img=pc.detections_per_img,
            coder_weights=tuple(self.config.loss.coder_weights),
        )

    def evaluator(self) -> Evaluator:
        cat_ids, names = self.class_space("validation")
        return DetectionEvaluator(self.source("validation").coco_ground_truth(), cat_ids, names)

    def predict_files(self, apply_fn, variables, paths, outdir: Path) -> None:
        from jaxcv.viz import draw_detections

        transform = self.make_transform(train=False)
        cat_ids, names = self.class_space("train")
        fn = jax.jit(lambda v, x: self.predict(apply_fn(v, x, train=False), {}))
        results = []
        for i, path in enumerate(paths):
            image = load_image(path)
            empty = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int32),
                     "image_id": i}
            ex = transform(empty, np.random.default_rng(0))
            det = jax.device_get(fn(variables, ex["image"][None]))
            keep = det["valid"][0] & (det["scores"][0] >= self.config.predict.score_thresh)
            h, w = image.shape[:2]
            boxes = np.clip(det["boxes"][0][keep] / ex["scale"], 0, [w, h, w, h])  # padding -> image
            scores, labels = det["scores"][0][keep], det["labels"][0][keep]
            draw_detections(image, boxes, labels, scores, names).save(outdir / f"{Path(path).stem}_det.png")
            for b, s, lab in zip(boxes, scores, labels, strict=True):
                results.append({"file": str(path), "image_id": i, "category_id": int(cat_ids[int(lab)]),
                                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                "score": float(s)})
        (outdir / "detections.json").write_text(json.dumps(results))


def label_to_category_id(source: Any) -> np.ndarray:
    """Contiguous label -> dataset category id (the source's `category_ids`, else the sorted ids of
    its COCO ground truth)."""
    ids = getattr(source, "category_ids", None)
    if ids is None:
        ids = sorted(c["id"] for c in source.coco_ground_truth()["categories"])
    return np.asarray(ids, np.int64)


class DetectionEvaluator(Evaluator):
    """Collects detections as COCO results at the original image resolution and evaluates them
    against the split's COCO-format ground truth."""

    def __init__(self, gt: dict[str, Any], cat_ids: np.ndarray, class_names: list[str]):
        self.gt = gt
        self.cat_ids = cat_ids
        self.class_names = class_names
        self.results: list[dict[str, Any]] = []
        self._metrics: dict[str, float] = {}
        self.samples: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

    def update(self, batch, preds) -> None:
        valid = np.asarray(batch["valid"], bool)
        for b in np.flatnonzero(valid):
            keep = np.asarray(preds["valid"][b], bool)
            scale = float(batch["scale"][b])
            h, w = (int(v) for v in batch["orig_size"][b])
            boxes = np.asarray(preds["boxes"][b][keep], np.float64) / scale
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            image_id = int(batch["image_id"][b])
            for box, score, label in zip(boxes, preds["scores"][b][keep], preds["labels"][b][keep], strict=True):
                self.results.append({
                    "image_id": image_id,
                    "category_id": int(self.cat_ids[int(label)]),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": float(score),
                })
            if len(self.samples) < 16:
                self.samples.append((batch["image"][b], {k: np.asarray(preds[k][b]) for k in preds}))

    def result(self) -> dict[str, float]:
        stats = coco_evaluate(self.gt, self.results)
        self._metrics = {k: float(stats[k]) for k in COCO_METRICS}
        return dict(self._metrics)

    def save(self, directory: Path) -> None:
        (directory / "detections.json").write_text(json.dumps(self.results))
        try:
            from jaxcv.viz import detection_gallery

            detection_gallery(self.samples, self.class_names, directory / "predictions.png")
        except ImportError:
            pass
