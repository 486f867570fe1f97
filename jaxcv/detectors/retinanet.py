"""RetinaNet's head (Lin et al. 2017): anchors, torchvision's matching and loss, torchvision's decoding.

Assignment is torchvision's `Matcher(fg_iou, bg_iou, allow_low_quality_matches)` over the anchors (or ATSS's
adaptive threshold, `loss.assigner = "atss"`), the
loss `jaxcv.losses.retinanet_loss` (sigmoid focal classification, L1 / smooth L1 / GIoU box terms), and
decoding `jaxcv.ops.postprocess.retinanet_postprocess` (per-level top-k, class-wise NMS). The model is
`jaxcv.models.retinanet.RetinaNet` (`model.name = "retinanet"`); any model whose outputs are `cls_logits`
[B, A, K] and `bbox_regression` [B, A, 4] in this head's anchor order can use it.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcv.detectors import HEADS, DetectionHead
from jaxcv.losses import retinanet_loss, upcast
from jaxcv.ops.anchors import AnchorConfig, generate_anchors
from jaxcv.ops.matching import ASSIGNERS
from jaxcv.ops.postprocess import retinanet_postprocess

PRESETS = ("torchvision", "tf_model_garden")
BOX_LOSSES = ("l1", "smooth_l1", "giou")
LOSS_NORMALIZERS = ("per_image", "global")
CLASSIFICATION_LOSSES = ("focal", "bce")


def _fail(key: str, value: object, problem: str) -> None:
    raise ValueError(f"config.{key}={value!r}: {problem}")


class AnchorHead(DetectionHead):
    """Anchor-based dense head: a fixed anchor set, RetinaNet's matching, loss and decoding.

    Subclasses give the anchors (`make_anchors`). `self.anchors`: [A, 4] xyxy input pixels (numpy, a
    constant inside jit); `self.num_anchors_per_level`: anchors per level (static, for decoding).
    """

    def __init__(self, config, image_hw, num_classes):
        super().__init__(config, image_hw, num_classes)
        self.anchors, self.num_anchors_per_level, self.num_anchors_per_location = self.make_anchors()

    def make_anchors(self) -> tuple[np.ndarray, list[int], int]:
        raise NotImplementedError

    @classmethod
    def default_config(cls, preset: str = "") -> dict[str, ml_collections.ConfigDict]:
        loss = ml_collections.ConfigDict({
            "classification": "focal",  # or "bce" (= focal with gamma 0, no alpha weighting)
            "alpha": 0.25,
            "gamma": 2.0,
            "box_loss": "l1",  # l1 | smooth_l1 | giou
            "smooth_l1_beta": 1.0 / 9,
            "box_weight": 1.0,
            "normalizer": "per_image",  # per_image (torchvision) | global (detectron2, TF)
            # "max_iou": torchvision's Matcher (fg_iou, bg_iou, allow_low_quality_matches); "atss": ATSS's
            # adaptive IoU threshold over the atss_topk nearest anchors per level (Zhang et al. 2020)
            "assigner": "max_iou",
            "atss_topk": 9,
            "fg_iou": 0.5,
            "bg_iou": 0.4,
            "allow_low_quality_matches": True,
            "coder_weights": (1.0, 1.0, 1.0, 1.0),
        })
        postprocess = ml_collections.ConfigDict(
            {"score_thresh": 0.05, "topk_candidates": 1000, "nms_thresh": 0.5, "detections_per_img": 100}
        )
        return {"loss": loss, "postprocess": postprocess}

    def validate(self) -> None:
        lc = self.config.loss
        if lc.classification not in CLASSIFICATION_LOSSES:
            _fail("loss.classification", lc.classification, f"use one of {', '.join(CLASSIFICATION_LOSSES)}")
        if lc.box_loss not in BOX_LOSSES:
            _fail("loss.box_loss", lc.box_loss, f"unknown box loss; known: {', '.join(BOX_LOSSES)}")
        if lc.assigner not in ASSIGNERS:
            _fail("loss.assigner", lc.assigner, f"use one of {', '.join(ASSIGNERS)}")
        if isinstance(lc.atss_topk, bool) or not isinstance(lc.atss_topk, int) or lc.atss_topk < 1:
            _fail("loss.atss_topk", lc.atss_topk, "must be an integer >= 1")
        if lc.normalizer not in LOSS_NORMALIZERS:
            _fail("loss.normalizer", lc.normalizer, f"unknown; known: {', '.join(LOSS_NORMALIZERS)}")
        if not 0.0 <= lc.bg_iou <= lc.fg_iou <= 1.0:
            _fail("loss.bg_iou", lc.bg_iou, f"need 0 <= bg_iou <= fg_iou ({lc.fg_iou}) <= 1")

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_anchors": self.num_anchors_per_location}

    def loss(self, outputs, boxes, labels, mask):
        lc = self.config.loss
        if outputs["cls_logits"].shape[1] != len(self.anchors):
            raise ValueError(
                f"model {self.config.model.name!r} gives {outputs['cls_logits'].shape[1]} anchors but head "
                f"{self.config.head!r} makes {len(self.anchors)}"
            )
        bce = lc.classification == "bce"
        terms = retinanet_loss(
            upcast(outputs["cls_logits"]),
            upcast(outputs["bbox_regression"]),
            self.anchors,
            boxes,
            labels,
            mask,
            alpha=-1.0 if bce else lc.alpha,
            gamma=0.0 if bce else lc.gamma,
            box_loss=lc.box_loss,
            smooth_l1_beta=lc.smooth_l1_beta,
            normalizer=lc.normalizer,
            fg_iou=lc.fg_iou,
            bg_iou=lc.bg_iou,
            allow_low_quality_matches=lc.allow_low_quality_matches,
            coder_weights=tuple(lc.coder_weights),
            assigner=lc.assigner,
            num_anchors_per_level=tuple(self.num_anchors_per_level),
            atss_topk=lc.atss_topk,
        )
        total = terms["classification"] + lc.box_weight * terms["box_regression"]
        return total, {"cls_loss": terms["classification"], "box_loss": terms["box_regression"]}

    def decode(self, outputs):
        pc = self.config.postprocess
        return retinanet_postprocess(
            outputs["cls_logits"].astype(jnp.float32),
            outputs["bbox_regression"].astype(jnp.float32),
            self.anchors,
            self.num_anchors_per_level,
            self.image_hw,
            score_thresh=pc.score_thresh,
            topk_candidates=pc.topk_candidates,
            nms_thresh=pc.nms_thresh,
            detections_per_img=pc.detections_per_img,
            coder_weights=tuple(self.config.loss.coder_weights),
        )


@HEADS.register("retinanet")
class RetinaNetHead(AnchorHead):
    """RetinaNet: pyramid anchors (`config.anchors`: levels, sizes, scales, aspect ratios, convention).

    `default_config(preset)`: "torchvision" (ignore band [0.4, 0.5), focal gamma 2 / alpha 0.25, L1 on
    encoded boxes, loss per image over its foreground count, torchvision anchors) or "tf_model_garden"
    (gamma 1.5, Huber (smooth L1, delta 0.1) with weight 50, normalized by the global batch's foreground
    count, anchors centred at (i + 0.5) * stride; the model's P6 from C5).
    """

    name = "retinanet"

    @classmethod
    def default_config(cls, preset: str = "torchvision") -> dict[str, ml_collections.ConfigDict]:
        preset = preset or "torchvision"
        if preset not in PRESETS:
            raise ValueError(f"unknown RetinaNet preset {preset!r}; known: {', '.join(PRESETS)}")
        sections = super().default_config()
        sections["anchors"] = ml_collections.ConfigDict({
            "levels": (3, 4, 5, 6, 7),
            "sizes": (32.0, 64.0, 128.0, 256.0, 512.0),
            "scales": (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
            "aspect_ratios": (0.5, 1.0, 2.0),
            "convention": "torchvision",
        })
        if preset == "tf_model_garden":
            sections["anchors"].convention = "tf_model_garden"
            loss = sections["loss"]
            loss.gamma, loss.box_loss, loss.smooth_l1_beta = 1.5, "smooth_l1", 0.1
            loss.box_weight, loss.normalizer = 50.0, "global"
        return sections

    def anchor_config(self) -> AnchorConfig:
        a = self.config.anchors
        return AnchorConfig(
            levels=tuple(a.levels),
            sizes=tuple(float(s) for s in a.sizes),
            scales=tuple(float(s) for s in a.scales),
            aspect_ratios=tuple(float(r) for r in a.aspect_ratios),
            convention=a.convention,
        )

    def make_anchors(self):
        cfg = self.anchor_config()
        anchors, per_level = generate_anchors(self.image_hw, cfg)
        return anchors, per_level, cfg.num_anchors_per_location

    def validate(self) -> None:
        super().validate()
        levels = tuple(self.config.anchors.levels)
        stride = 2 ** max(levels)
        if any(s % stride for s in self.image_hw):
            raise ValueError(f"data.image_size={self.config.data.image_size} must be divisible by the largest "
                             f"stride {stride} (anchors.levels={levels})")
        if len(self.config.anchors.sizes) != len(levels):
            _fail("anchors.sizes", tuple(self.config.anchors.sizes), f"needs one size per level of {levels}")
        if self.config.model.name == "retinanet":  # the anchors must sit on the levels the model produces
            from jaxcv.models import create_model

            kwargs = {k: v for k, v in self.config.model.to_dict().items() if k != "name"}
            produced = create_model("retinanet", **kwargs).pyramid_levels()
            if produced != levels:
                _fail("anchors.levels", levels, f"the model's pyramid (model.fpn_levels, model.extra_blocks) has "
                                                f"levels {produced} (log2 strides); set anchors.levels to them")
