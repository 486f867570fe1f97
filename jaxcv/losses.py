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

from jaxcv.models.layers import output_dtype
from jaxcv.ops.boxes import BoxCoder
from jaxcv.ops.matching import detection_targets

Array = jnp.ndarray


def upcast(x: Array) -> Array:
    """`x` in float32 or wider. Losses of half-precision outputs (bfloat16 mixed precision) are computed in
    float32; float64 (config `dtype="float64"`, a precision for checking numerics) stays float64."""
    x = jnp.asarray(x)
    return x.astype(output_dtype(x.dtype))

# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """logits [..., K], integer labels [...] -> per-example loss [...] (reduction none).

    With label_smoothing e the target is (1 - e) * one_hot + e / K, as torch `CrossEntropyLoss`."""
    logits = upcast(logits)
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, label_smoothing))


def sigmoid_binary_cross_entropy(logits: Array, targets: Array) -> Array:
    """Elementwise BCE on logits (torch `binary_cross_entropy_with_logits`, reduction none);
    targets in [0, 1] with the shape of logits (multi-label classification)."""
    return optax.sigmoid_binary_cross_entropy(upcast(logits), upcast(targets))


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------


def sigmoid_focal_loss(logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0) -> Array:
    """Elementwise focal loss (Lin et al. 2017), torchvision `sigmoid_focal_loss` with reduction none:
    BCE * (1 - p_t) ** gamma, times alpha_t = alpha*t + (1-alpha)*(1-t) unless alpha < 0."""
    logits = upcast(logits)
    targets = upcast(targets)
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
    assigner: str = "max_iou",
    num_anchors_per_level: Sequence[int] = (),
    atss_topk: int = 9,
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
    Images with no gt give all-background targets and zero box loss. `assigner` "atss" replaces the
    IoU matcher by ATSS's (`jaxcv.ops.matching.atss_match`, needs `num_anchors_per_level`).
    """
    if box_loss not in ("l1", "smooth_l1", "giou"):
        raise ValueError(f"unknown box_loss {box_loss!r}; use l1, smooth_l1 or giou")
    if normalizer not in ("per_image", "global"):
        raise ValueError(f"unknown normalizer {normalizer!r}; use per_image or global")
    coder = BoxCoder(weights=tuple(coder_weights))
    anchors = jnp.asarray(anchors, jnp.float32)
    t = detection_targets(
        anchors, gt_boxes, gt_labels, gt_mask, coder, fg_iou, bg_iou, allow_low_quality_matches,
        assigner=assigner, num_anchors_per_level=tuple(num_anchors_per_level), atss_topk=atss_topk,
    )
    fg, valid = t["fg_mask"], t["valid_mask"]
    num_classes = cls_logits.shape[-1]
    onehot = jax.nn.one_hot(jnp.where(fg, t["cls_targets"], -1), num_classes, dtype=jnp.float32)
    focal = sigmoid_focal_loss(cls_logits, onehot, alpha, gamma).sum(-1)  # [B, A]
    cls_sum = jnp.where(valid, focal, 0.0).sum(-1)  # [B]

    box_regression = upcast(box_regression)
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


# ----------------------------------------------------------------------------------------------
# Segmentation losses
#
# Dense per-pixel losses for semantic segmentation. Shapes: logits [B, H, W, K] (any float dtype,
# computed in float32), labels [B, H, W] integer class ids where `ignore_index` marks void pixels.
# Ignored pixels contribute neither to the value nor to the gradient. Every loss returns a float32
# scalar and stays finite (value and gradient) when a class, or every pixel, is absent/ignored.
# ----------------------------------------------------------------------------------------------


def _valid_and_safe_labels(labels: jax.Array, ignore_index: int) -> tuple[jax.Array, jax.Array]:
    """labels [...] -> (valid [...] bool, safe labels [...] int32 with ignored pixels set to 0)."""
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    return valid, jnp.where(valid, labels, 0)


def segmentation_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    ignore_index: int = 255,
    class_weights: jax.Array | None = None,
) -> jax.Array:
    """Softmax cross-entropy averaged over non-ignored pixels.

    logits [B, H, W, K], labels [B, H, W] int. Matches torch `CrossEntropyLoss(weight=w,
    ignore_index=...)` with reduction="mean": sum_i(w[y_i] * nll_i) / sum_i(w[y_i]) over valid pixels.
    Unlike torch (NaN), a batch with no valid pixel gives 0.
    """
    logits = upcast(logits)
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)  # [B, H, W]
    w = valid.astype(jnp.float32)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1e-12)


def soft_dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    num_classes: int,
    ignore_index: int = 255,
    smooth: float = 1.0,
    classes_present_only: bool = True,
) -> jax.Array:
    """Multi-class soft Dice loss on softmax probabilities, 1 - mean_c Dice_c.

    logits [B, H, W, K], labels [B, H, W] int. Per class c, summed over the whole batch and valid
    pixels: Dice_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth). With
    `classes_present_only` the mean runs over classes that occur in the (valid) target, so absent
    classes neither dilute nor dominate the loss (smp's DiceLoss zeroes them but keeps them in the
    mean); otherwise over all K classes. 0 for a perfect confident prediction, ~1 for disjoint masks.
    """
    probs = jax.nn.softmax(upcast(logits), axis=-1)  # [B, H, W, K]
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    vmask = valid[..., None].astype(jnp.float32)
    target = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32) * vmask  # [B, H, W, K]
    probs = probs * vmask
    axes = tuple(range(probs.ndim - 1))
    intersection = jnp.sum(probs * target, axis=axes)  # [K]
    target_sum = jnp.sum(target, axis=axes)  # [K]
    cardinality = jnp.sum(probs, axis=axes) + target_sum  # [K]
    dice = (2.0 * intersection + smooth) / jnp.maximum(cardinality + smooth, 1e-12)  # [K]
    per_class = 1.0 - dice
    if classes_present_only:
        present = (target_sum > 0).astype(jnp.float32)
        return jnp.sum(per_class * present) / jnp.maximum(jnp.sum(present), 1.0)
    return jnp.mean(per_class)


def _binary_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Accepts logits [B, H, W] or [B, H, W, 1] for labels [B, H, W]; returns float32 [B, H, W]."""
    if logits.ndim == labels.ndim + 1 and logits.shape[-1] == 1:
        logits = logits[..., 0]
    if logits.shape != labels.shape:
        raise ValueError(f"binary logits {logits.shape} do not match labels {labels.shape}")
    return upcast(logits)


def binary_segmentation_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    ignore_index: int = 255,
    pos_weight: float | None = None,
) -> jax.Array:
    """Sigmoid BCE averaged over non-ignored pixels; labels [B, H, W] in {0, 1, ignore_index}.

    logits [B, H, W] or [B, H, W, 1]. Matches torch `BCEWithLogitsLoss(pos_weight=...)` (mean) on the
    valid pixels: -(pos_weight * y * log s(x) + (1 - y) * log(1 - s(x))). No valid pixel gives 0.
    """
    x = _binary_logits(logits, labels)
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    y = (safe == 1).astype(jnp.float32)
    log_p, log_not_p = jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)
    pw = 1.0 if pos_weight is None else pos_weight
    per_pixel = -(pw * y * log_p + (1.0 - y) * log_not_p)
    w = valid.astype(jnp.float32)
    return jnp.sum(w * per_pixel) / jnp.maximum(jnp.sum(w), 1.0)


def binary_dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    ignore_index: int = 255,
    smooth: float = 1.0,
) -> jax.Array:
    """Soft Dice loss on sigmoid probabilities of the foreground, over the whole batch.

    logits [B, H, W] or [B, H, W, 1], labels [B, H, W] in {0, 1, ignore_index}:
    1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth) over valid pixels. An empty target
    predicted empty gives 0 (thanks to `smooth`).
    """
    x = _binary_logits(logits, labels)
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    v = valid.astype(jnp.float32)
    p = jax.nn.sigmoid(x) * v
    t = (safe == 1).astype(jnp.float32) * v
    dice = (2.0 * jnp.sum(p * t) + smooth) / jnp.maximum(jnp.sum(p) + jnp.sum(t) + smooth, 1e-12)
    return 1.0 - dice


def binary_ce_dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    ignore_index: int = 255,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    pos_weight: float | None = None,
    smooth: float = 1.0,
) -> jax.Array:
    """ce_weight * binary_segmentation_cross_entropy + dice_weight * binary_dice_loss."""
    ce = binary_segmentation_cross_entropy(logits, labels, ignore_index, pos_weight)
    return ce_weight * ce + dice_weight * binary_dice_loss(logits, labels, ignore_index, smooth)
