"""YOLOv8's head (ultralytics YOLOv8, anchor-free): task-aligned assignment, the v8 loss and its NMS.

The model is `jaxcv.models.yolov8.YOLOv8` (`model.name = "yolov8"`, `model.scale` n/s/m/l/x); any model whose
outputs are `boxes` [B, A, 4 * reg_max] (DFL logits), `scores` [B, A, K] (class logits) and `decoded`
[B, A, 4 + K] ((cx, cy, w, h) input pixels, class probabilities) over the stride 8/16/32 anchor points in that
model's order can use this head.

- Loss: `jaxcv.ops.yolov8_loss.yolov8_loss` (ultralytics `v8DetectionLoss`: TOOD's task-aligned assigner with
  `config.loss.topk / alpha / beta`, BCE classification, CIoU and DFL box terms, gains `box / cls / dfl`). The
  scalar minimized is ultralytics' back-propagated `loss.sum()` = (box + cls + dfl) * batch size, so its SGD
  recipe (lr 0.01, weight decay 5e-4, gradient norm clipped at 10) carries over unchanged; the logged terms are
  its `loss_items` (per image, gained).
- Decoding: `jaxcv.ops.yolov8_loss.yolov8_nms` on `decoded` (ultralytics `non_max_suppression`): candidates with
  score > `postprocess.conf_thres`, one per (anchor, class) with `multi_label` (the validator's default) or one
  per anchor, class-aware NMS at `iou_thres`, the best `max_det`. The defaults are ultralytics' validation
  settings (conf 0.001, IoU 0.7, 300 detections); boxes are not clipped here (the COCO evaluator clips them to
  the original image, as ultralytics' `scale_boxes`).

Inputs are the detection task's images, normalized and padded bottom/right as `config.preprocess` says
(`normalize`, `pad_value`; `jaxcv.data.detection.to_model_input` and `pad_color`). ultralytics' own weights expect
RGB in [0, 1] with a grey 114 letterbox: configs/coco_yolov8n.py and coco_json_yolov8n.py set `normalize="unit"`,
`pad_value=114`; the detection default (configs/shapes_yolov8n.py) is ImageNet mean/std with mean-colour padding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

import jaxcv.models.yolov8  # noqa: F401  (registers the "yolov8" model)
from jaxcv.detectors import HEADS, DetectionHead
from jaxcv.ops.yolov8_loss import yolov8_loss, yolov8_nms

Array = jax.Array
STRIDES = (8, 16, 32)


def _fail(key: str, value: object, problem: str) -> None:
    raise ValueError(f"config.{key}={value!r}: {problem}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@HEADS.register("yolov8")
class YOLOv8Head(DetectionHead):
    """YOLOv8's assignment, loss and decoding (module docstring). `self.reg_max`: DFL bins per box side
    (`config.model.reg_max`, 16 by default), passed to the model so both agree."""

    name = "yolov8"

    def __init__(self, config: ml_collections.ConfigDict, image_hw: tuple[int, int], num_classes: int):
        super().__init__(config, image_hw, num_classes)
        self.reg_max = int(config.model.get("reg_max", 16))

    @classmethod
    def default_config(cls, preset: str = "") -> dict[str, ml_collections.ConfigDict]:
        """ultralytics' `default.yaml` loss gains and assigner, its validator's NMS settings (no presets:
        `preset` is ignored, as the detection config passes its own default)."""
        return {
            "model": ml_collections.ConfigDict({"name": "yolov8", "scale": "n", "reg_max": 16}),
            "loss": ml_collections.ConfigDict({
                "box": 7.5, "cls": 0.5, "dfl": 1.5,  # gains of the CIoU, BCE and DFL terms
                "topk": 10, "alpha": 0.5, "beta": 6.0,  # task-aligned assigner: score^alpha * CIoU^beta
            }),
            "postprocess": ml_collections.ConfigDict({
                "conf_thres": 0.001, "iou_thres": 0.7, "max_det": 300,
                "multi_label": True,  # one candidate per (anchor, class) above conf_thres, as ultralytics' val
                "agnostic": False,  # True: NMS across classes
                "max_nms": 30000,  # candidates entering NMS, the best by score
            }),
        }

    def validate(self) -> None:
        lc, pc = self.config.loss, self.config.postprocess
        size = self.config.data.image_size
        if any(s % STRIDES[-1] for s in self.image_hw):
            _fail("data.image_size", size, f"must be a multiple of {STRIDES[-1]}, YOLOv8's largest stride")
        if self.reg_max < 2:
            _fail("model.reg_max", self.config.model.get("reg_max"), "must be an integer >= 2 (DFL bins per side)")
        for key in ("box", "cls", "dfl", "alpha", "beta"):
            if not _is_number(lc[key]) or lc[key] < 0:
                _fail(f"loss.{key}", lc[key], "must be a number >= 0")
        if isinstance(lc.topk, bool) or not isinstance(lc.topk, int) or lc.topk < 1:
            _fail("loss.topk", lc.topk, "must be an integer >= 1 (anchors per gt box)")
        if not _is_number(pc.conf_thres) or not 0.0 <= pc.conf_thres < 1.0:
            _fail("postprocess.conf_thres", pc.conf_thres, "must be in [0, 1)")
        if not _is_number(pc.iou_thres) or not 0.0 <= pc.iou_thres <= 1.0:
            _fail("postprocess.iou_thres", pc.iou_thres, "must be in [0, 1]")
        for key in ("max_det", "max_nms"):
            if isinstance(pc[key], bool) or not isinstance(pc[key], int) or pc[key] < 1:
                _fail(f"postprocess.{key}", pc[key], "must be an integer >= 1")

    def model_kwargs(self) -> dict[str, Any]:
        return {"reg_max": self.reg_max}

    def _check(self, outputs: dict[str, Any]) -> None:
        """The model's outputs against this head's class count and reg_max (trace time)."""
        got = (outputs["boxes"].shape[-1], outputs["scores"].shape[-1])
        want = (4 * self.reg_max, self.num_classes)
        if got != want:
            raise ValueError(f"model {self.config.model.name!r} gives (box, class) channels {got}, but head "
                             f"{self.name!r} expects {want} (reg_max={self.reg_max}, {self.num_classes} classes)")

    def loss(self, outputs, boxes, labels, mask):
        """ultralytics' `loss.sum()` on `boxes`/`scores` ([B, A, 4 * reg_max], [B, A, K]); terms `box_loss`,
        `cls_loss`, `dfl_loss` (its `loss_items`)."""
        self._check(outputs)
        lc = self.config.loss
        out = yolov8_loss(outputs["boxes"], outputs["scores"], boxes, labels, mask, image_hw=self.image_hw,
                          strides=STRIDES, reg_max=self.reg_max, box_gain=float(lc.box), cls_gain=float(lc.cls),
                          dfl_gain=float(lc.dfl), topk=int(lc.topk), alpha=float(lc.alpha), beta=float(lc.beta))
        return out["loss"], {k: out[k] for k in ("box_loss", "cls_loss", "dfl_loss")}

    def decode(self, outputs):
        """`yolov8_nms` on `decoded` [B, A, 4 + K] -> boxes [B, max_det, 4] xyxy input pixels, scores, labels
        int32, valid (zeros / False past the kept detections)."""
        self._check(outputs)
        pc = self.config.postprocess
        dets, _, valid = yolov8_nms(outputs["decoded"], conf_thres=float(pc.conf_thres),
                                    iou_thres=float(pc.iou_thres), max_det=int(pc.max_det),
                                    multi_label=bool(pc.multi_label), agnostic=bool(pc.agnostic),
                                    max_nms=int(pc.max_nms))
        return {"boxes": dets[..., :4], "scores": dets[..., 4], "labels": dets[..., 5].astype(jnp.int32),
                "valid": valid}
