"""Object detection: what every detector shares, around a registered head (`jaxcv.detectors`).

The task owns the data (boxes padded to `config.data.max_boxes` with `box_mask`, so one compilation
serves every image), the label map, evaluation (`config.evals`), prediction on files and drawing. The
head named by `config.head` (RetinaNet's, SSD's, ...) owns target assignment, the loss and decoding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxcv.detectors import DetectionHead, create_head
from jaxcv.evaluation.coco import coco_evaluate, detections_to_coco_results
from jaxcv.evaluation.voc import voc_evaluate
from jaxcv.tasks import TASKS
from jaxcv.tasks.base import EVALUATORS, Evaluator, Task

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@TASKS.register("detection")
class DetectionTask(Task):
    name = "detection"
    picture_kind = "boxes"
    device_keys = ("image", "boxes", "labels", "box_mask")

    def __init__(self, config):
        super().__init__(config)
        self._head: DetectionHead | None = None

    @property
    def head(self) -> DetectionHead:
        """The detection head of `config.head`, built on first use (it needs the dataset's class count)."""
        if self._head is None:
            s = self.image_size
            self._head = create_head(self.config, (s, s), self.num_classes)
        return self._head

    @property
    def label_map(self) -> str:
        """`data.label_map`: "contiguous" (class k = k-th category in sorted id order) or "category_id"
        (class k = category id k, with unused ids never positive: torchvision's 91-output COCO models)."""
        return self.config.data.label_map

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
        if self.label_map not in ("contiguous", "category_id"):
            raise ValueError(f"data.label_map={self.label_map!r}: use 'contiguous' or 'category_id'")
        self._validate_input_keys()
        n = self.config.data.num_classes
        if n and n != self.num_classes:
            raise ValueError(
                f"data.num_classes={n} but dataset {self.config.data.name!r} has {self.num_classes} classes"
            )
        self.head.validate()

    def _validate_input_keys(self) -> None:
        """`data.augment.mosaic` / `close_mosaic` and `preprocess`, checked before anything compiles."""
        from jaxcv.data.detection import NORMALIZATIONS

        aug, pre = self.config.data.augment, self.config.get("preprocess") or {}
        prob, close = aug.get("mosaic", 0.0), aug.get("close_mosaic", 0)
        if not _is_number(prob) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"config.data.augment.mosaic={prob!r}: must be a probability in [0, 1] (0 = off)")
        if isinstance(close, bool) or not isinstance(close, int) or close < 0:
            raise ValueError(f"config.data.augment.close_mosaic={close!r}: must be an integer >= 0 (epochs at the "
                             "end without mosaic)")
        mode, pad = pre.get("normalize", "imagenet"), pre.get("pad_value", -1.0)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"config.preprocess.normalize={mode!r}: unknown; known: {', '.join(NORMALIZATIONS)}")
        if not _is_number(pad) or not (pad == -1 or 0 <= pad <= 255):
            raise ValueError(f"config.preprocess.pad_value={pad!r}: must be a grey level in [0, 255] or -1 (the "
                             "mean colour)")

    @property
    def normalize(self) -> str:
        """`preprocess.normalize`: "imagenet" (torchvision's mean/std) or "unit" (pixels / 255, RGB)."""
        return (self.config.get("preprocess") or {}).get("normalize", "imagenet")

    def mosaic_close_epoch(self) -> int | None:
        """The first training epoch without mosaic (`data.augment.close_mosaic` before the end of the run; the
        Loader's epochs: `num_train_steps` steps of `max(1, len(train) // batch_size)`), None when it never
        closes."""
        close = int(self.config.data.augment.get("close_mosaic", 0))
        if close <= 0:
            return None
        steps_per_epoch = max(1, len(self.source("train")) // int(self.config.batch_size))
        epochs = -(-int(self.config.num_train_steps) // steps_per_epoch)
        return max(0, epochs - close)

    def make_transform(self, train: bool):
        """Training: YOLO's mosaic (`jaxcv.data.mosaic`, ultralytics' pipeline: mosaic, affine with the
        `scale_jitter` range, HSV jitter when `photometric`, flip) when `data.augment.mosaic` > 0, else
        `make_detection_transform`'s resize/crop/flip/jitter; evaluation and prediction: the latter's resize
        and pad. Both normalize and pad by `config.preprocess`."""
        from jaxcv.data.detection import make_detection_transform

        aug = self.config.data.augment
        jitter = aug.scale_jitter
        pre = self.config.get("preprocess") or {}
        pad = float(pre.get("pad_value", -1.0))
        if train and float(aug.get("mosaic", 0.0)) > 0:
            from jaxcv.data.mosaic import make_mosaic_transform

            kwargs = {} if aug.photometric else {"hsv": (0.0, 0.0, 0.0)}
            return make_mosaic_transform(
                self.source("train"), self.image_size, int(self.config.data.max_boxes),
                prob=float(aug.mosaic), scale=tuple(jitter) if jitter else (1.0, 1.0), hflip=bool(aug.hflip),
                fill=round(pad) if pad >= 0 else 114, normalize=self.normalize,
                close_epoch=self.mosaic_close_epoch(), **kwargs)
        return make_detection_transform(
            self.image_size,
            int(self.config.data.max_boxes),
            train,
            hflip=bool(aug.hflip),
            scale_jitter=tuple(jitter) if jitter else None,
            photometric=bool(aug.photometric),
            normalize=self.normalize,
            pad_value=pad,
        )

    def model_kwargs(self) -> dict[str, Any]:
        return {**super().model_kwargs(), "num_classes": self.num_classes, **self.head.model_kwargs()}

    def loss(self, outputs, batch):
        labels = batch["labels"]
        if self.label_map == "category_id":  # contiguous source labels -> category ids (padding is masked)
            cat_ids = jnp.asarray(label_to_category_id(self.source("train")), jnp.int32)
            labels = jnp.where(batch["box_mask"], cat_ids[jnp.clip(labels, 0, len(cat_ids) - 1)], labels)
        return self.head.loss(outputs, batch["boxes"], labels, batch["box_mask"])

    def predict(self, outputs, batch):
        return self.head.decode(outputs)

    # ---- prediction (jaxcv.predict) ----------------------------------------------------------------
    prediction_json = "detections.json"  # COCO results (xywh, original pixels) with "file" and "class" (its name)

    def _prediction_classes(self) -> tuple[np.ndarray, list[str]]:
        """`class_space("train")`, computed once (it may walk the COCO ground truth) for every frame."""
        if getattr(self, "_pred_classes", None) is None:
            self._pred_classes = self.class_space("train")
        return self._pred_classes

    def prepare_input(self, image):
        empty = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int32)}
        ex = self.predict_transform()(empty, np.random.default_rng(0))
        return ex["image"], {"scale": float(ex["scale"]), "hw": image.shape[:2]}

    def postprocess(self, pred, meta):
        """Detections kept (valid, score >= `predict.score_thresh`): `boxes` [N, 4] xyxy original pixels
        (divided by the transform's scale, clipped to the image), `scores` [N], `labels` [N] model classes,
        `category_ids` [N], `class_names` [N]."""
        cat_ids, names = self._prediction_classes()
        keep = np.asarray(pred["valid"], bool) & (pred["scores"] >= self.config.predict.score_thresh)
        h, w = meta["hw"]
        boxes = np.clip(np.asarray(pred["boxes"], np.float64)[keep] / np.float64(meta["scale"]), 0.0,
                        np.array([w, h, w, h], np.float64))
        labels = np.asarray(pred["labels"])[keep].astype(np.int64)
        return {"boxes": boxes, "scores": np.asarray(pred["scores"])[keep], "labels": labels,
                "category_ids": np.asarray(cat_ids)[labels], "class_names": [names[int(k)] for k in labels]}

    def draw(self, image, result):
        from jaxcv.viz import draw_detections

        _, names = self._prediction_classes()
        return np.asarray(draw_detections(image, result["boxes"], result["labels"], result["scores"], names))

    def result_record(self, result):
        return {"detections": [
            {"box_xyxy": [float(v) for v in box], "score": float(score), "label": int(label),
             "category_id": int(cat), "class": name}
            for box, score, label, cat, name in zip(result["boxes"], result["scores"], result["labels"],
                                                     result["category_ids"], result["class_names"], strict=True)]}

    def save_prediction(self, path, index, image, result, outdir):
        from PIL import Image

        Image.fromarray(self.draw(image, result)).save(outdir / f"{path.stem}_det.png")
        cat_ids, _ = self._prediction_classes()
        found = detections_to_coco_results([index], result["boxes"][None], result["scores"][None],
                                           result["labels"][None], np.ones((1, len(result["labels"])), bool), cat_ids)
        return [{"file": str(path), **r, "class": name} for r, name in zip(found, result["class_names"], strict=True)]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def label_to_category_id(source: Any) -> np.ndarray:
    """Contiguous label -> dataset category id (the source's `category_ids`, else the sorted ids of
    its COCO ground truth)."""
    ids = getattr(source, "category_ids", None)
    if ids is None:
        ids = sorted(c["id"] for c in source.coco_ground_truth()["categories"])
    return np.asarray(ids, np.int64)


class DetectionEvaluator(Evaluator):
    """COCO box metrics (equal to pycocotools): collects detections as COCO results at the original image
    resolution and evaluates them against the split's COCO-format ground truth. `config.evals.NAME.type =
    "coco"`."""

    def __init__(self, task: DetectionTask, split: str = "validation"):
        self.gt = task.source(split).coco_ground_truth()
        self.cat_ids, self.class_names = task.class_space(split)
        self.normalize = task.normalize
        self.results: list[dict[str, Any]] = []
        self.samples: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

    def update(self, batch, preds) -> None:
        real = np.flatnonzero(np.asarray(batch["valid"], bool))
        self.results += detections_to_coco_results(
            np.asarray(batch["image_id"])[real], np.asarray(preds["boxes"])[real], np.asarray(preds["scores"])[real],
            np.asarray(preds["labels"])[real], np.asarray(preds["valid"])[real], self.cat_ids,
            scales=np.asarray(batch["scale"])[real], clip_hw=np.asarray(batch["orig_size"])[real],
        )
        from jaxcv.data.detection import from_model_input

        for b in real[: max(0, 16 - len(self.samples))]:  # as uint8: the gallery draws them as the model saw them
            self.samples.append((from_model_input(batch["image"][b], self.normalize),
                                 {k: np.asarray(preds[k][b]) for k in preds}))

    def result(self) -> dict[str, float]:
        stats = coco_evaluate(self.gt, self.results)
        return {k: float(stats[k]) for k in COCO_METRICS}

    def save(self, directory: Path) -> None:
        (directory / "detections.json").write_text(json.dumps(self.results))
        from jaxcv.viz import detection_gallery

        detection_gallery(self.samples, self.class_names, directory / "predictions.png")


class VOCEvaluator(DetectionEvaluator):
    """PASCAL VOC mAP at IoU 0.5 (`jaxcv.evaluation.voc.voc_evaluate`, the devkit's rules: difficult objects
    neither count nor penalize; `use_07_metric` the 11-point VOC2007 AP, else the VOC2010+ area), reported as
    `VOC07_mAP` or `VOC_mAP`. `config.evals.NAME.type = "voc"`."""

    def __init__(self, task: DetectionTask, split: str = "validation", use_07_metric: bool = True,
                 iou_threshold: float = 0.5):
        super().__init__(task, split)
        self.use_07_metric, self.iou_threshold = bool(use_07_metric), float(iou_threshold)

    def result(self) -> dict[str, float]:
        index = {int(c): k for k, c in enumerate(np.asarray(self.cat_ids).tolist())}
        row = {im["id"]: i for i, im in enumerate(self.gt["images"])}
        gt: list[list[dict]] = [[] for _ in row]
        dets: list[list[dict]] = [[] for _ in row]
        for ann in self.gt["annotations"]:
            gt[row[ann["image_id"]]].append(ann)
        for r in self.results:
            dets[row[r["image_id"]]].append(r)

        def xyxy(items: list[dict]) -> np.ndarray:
            b = np.asarray([a["bbox"] for a in items], np.float64).reshape(-1, 4)
            return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)

        def labels(items: list[dict]) -> np.ndarray:
            return np.asarray([index[a["category_id"]] for a in items], np.int64)

        out = voc_evaluate(
            [xyxy(g) for g in gt], [labels(g) for g in gt],
            [np.asarray([bool(a.get("difficult", 0)) for a in g], bool) for g in gt],
            [xyxy(d) for d in dets], [np.asarray([r["score"] for r in d], np.float64) for d in dets],
            [labels(d) for d in dets],
            num_classes=len(index), iou_threshold=self.iou_threshold, use_07_metric=self.use_07_metric,
        )
        return {"VOC07_mAP" if self.use_07_metric else "VOC_mAP": float(out["mAP"])}


EVALUATORS.register("coco", DetectionEvaluator)
EVALUATORS.register("voc", VOCEvaluator)
