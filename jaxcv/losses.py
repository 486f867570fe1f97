"""Losses. Elementwise losses return unreduced arrays; `retinanet_loss` returns normalized scalars.

Sections: classification, detection (box losses, focal loss, RetinaNet). Segmentation losses are
appended in their own section below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jaxcv.ops.boxes import BoxCoder
from jaxcv.ops.matching import detection_targets

Array = jnp.ndarray

# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """logits [..., K], integer labels [...] -> per-example loss [...] (reduction none).

    With label_smoothing e the target is (1 - e) * one_hot + e / K, as torch `CrossEntropyLoss`."""
    logits = logits.astype(jnp.float32)
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, label_smoothing))


def sigmoid_binary_cross_entropy(logits: Array, targets: Array) -> Array:
    """Elementwise BCE on logits (torch `binary_cross_entropy_with_logits`, reduction none);
    targets in [0, 1] with the shape of logits (multi-label classification)."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------


def sigmoid_focal_loss(logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0) -> Array:
    """Elementwise focal loss (Lin et al. 2017), torchvision `sigmoid_focal_loss` with reduction none:
    BCE * (1 - p_t) ** gamma, times alpha_t = alpha*t + (1-alpha)*(1-t) unless alpha < 0."""
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, targets)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def l1_loss(pred: Array, target: Array) -> Array:
    """Elementwise |pred - target|."""
    return jnp.abs(pred - target)


def smooth_l1_loss(pred: Array, target: Array, beta: float = 1.0 / 9) -> Array:
    """Elementwise smooth L1 (torch `smooth_l1_loss`): 0.5 d^2 / beta if |d| < beta else |d| - beta/2;
    beta = 0 is plain L1."""
    d = jnp.abs(pred - target)
    if beta == 0:
        return d
    return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def giou_loss(pred_boxes: Array, target_boxes: Array, eps: float = 1e-7) -> Array:
    """Paired 1 - GIoU: pred_boxes [..., 4], target_boxes [..., 4] xyxy -> [...]
    (torchvision `generalized_box_iou_loss`, reduction none, same eps placement)."""
    x1, y1, x2, y2 = jnp.moveaxis(pred_boxes, -1, 0)
    x1g, y1g, x2g, y2g = jnp.moveaxis(target_boxes, -1, 0)
    iw = jnp.minimum(x2, x2g) - jnp.maximum(x1, x1g)
    ih = jnp.minimum(y2, y2g) - jnp.maximum(y1, y1g)
    inter = jnp.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    hull = (jnp.maximum(x2, x2g) - jnp.minimum(x1, x1g)) * (jnp.maximum(y2, y2g) - jnp.minimum(y1, y1g))
    return 1 - (iou - (hull - union) / (hull + eps))


def retinanet_loss(
    cls_logits: Array,
    box_regression: Array,
    anchors: Array,
    gt_boxes: Array,
    gt_labels: Array,
    gt_mask: Array,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_loss: Literal["l1", "smooth_l1", "giou"] = "l1",
    smooth_l1_beta: float = 1.0 / 9,
    normalizer: Literal["per_image", "global"] = "per_image",
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality_matches: bool = True,
    coder_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> dict[str, Array]:
    """RetinaNet losses (torchvision `RetinaNet.compute_loss`), jit-able, fixed shapes.

    cls_logits [B, A, K], box_regression [B, A, 4] (encoded), anchors [A, 4] xyxy pixels,
    gt_boxes [B, G, 4] xyxy pixels, gt_labels [B, G] int class indices into K, gt_mask [B, G] bool
    -> dict(classification, box_regression) scalars.

    classification: sigmoid focal loss summed over classes and over anchors outside the ignore band
    (one-hot target at the matched gt's label for foreground anchors). box_regression: over
    foreground anchors, L1 / smooth L1 on encoded boxes summed over coordinates, or 1 - GIoU on
    decoded boxes. normalizer "per_image" (torchvision): each image's sum / max(1, its #foreground),
    averaged over images; "global" (detectron2 / TF): batch sum / max(1, batch #foreground).
    Images with no gt give all-background targets and zero box loss.
    """
    if box_loss not in ("l1", "smooth_l1", "giou"):
        raise ValueError(f"unknown box_loss {box_loss!r}; use l1, smooth_l1 or giou")
    if normalizer not in ("per_image", "global"):
        raise ValueError(f"unknown normalizer {normalizer!r}; use per_image or global")
    coder = BoxCoder(weights=tuple(coder_weights))
    anchors = jnp.asarray(anchors, jnp.float32)
    t = detection_targets(
        anchors, gt_boxes, gt_labels, gt_mask, coder, fg_iou, bg_iou, allow_low_quality_matches
    )
    fg, valid = t["fg_mask"], t["valid_mask"]
    num_classes = cls_logits.shape[-1]
    onehot = jax.nn.one_hot(jnp.where(fg, t["cls_targets"], -1), num_classes, dtype=jnp.float32)
    focal = sigmoid_focal_loss(cls_logits, onehot, alpha, gamma).sum(-1)  # [B, A]
    cls_sum = jnp.where(valid, focal, 0.0).sum(-1)  # [B]

    box_regression = box_regression.astype(jnp.float32)
    if box_loss == "giou":
        pred_boxes = coder.decode(box_regression, anchors[None])
        target_boxes = coder.decode(t["box_targets"], anchors[None])
        per_anchor = giou_loss(pred_boxes, target_boxes)
    elif box_loss == "smooth_l1":
        per_anchor = smooth_l1_loss(box_regression, t["box_targets"], smooth_l1_beta).sum(-1)
    else:
        per_anchor = l1_loss(box_regression, t["box_targets"]).sum(-1)
    box_sum = jnp.where(fg, per_anchor, 0.0).sum(-1)  # [B]

    num_fg = fg.sum(-1).astype(jnp.float32)  # [B]
    if normalizer == "per_image":
        denom = jnp.maximum(num_fg, 1.0)
        return {"classification": jnp.mean(cls_sum / denom), "box_regression": jnp.mean(box_sum / denom)}
    denom = jnp.maximum(num_fg.sum(), 1.0)
    return {"classification": cls_sum.sum() / denom, "box_regression": box_sum.sum() / denom}
