"""YOLOv8 box decoding, training loss and NMS, as ultralytics computes them (`v8DetectionLoss`, `BboxLoss`,
`DFLoss`, `non_max_suppression`); jit-able with static shapes and padded ground truth.

Layouts are anchor-major (jaxcv's `YOLOv8` outputs): box logits [B, A, 4 * reg_max] (channel side * reg_max + bin,
sides l, t, r, b), class logits [B, A, K], decoded [B, A, 4 + K]; anchors level-major then row-major, points =
cell centres in grid units (`make_anchors`).

Loss (Li et al. 2020 GFL for the distribution focal loss, Zheng et al. 2020 for CIoU, Feng et al. 2021 TOOD for
the assignment, `jaxcv.ops.tal`), with tss = max(sum of target scores, 1) and w = the anchor's target-score sum:
  cls = sum BCE-with-logits(scores, target scores) / tss
  box = sum over fg anchors (1 - CIoU(pred, target)) * w / tss            (boxes in grid units)
  dfl = sum over fg anchors w * mean over sides DFL(target distance) / tss, distances clamped to reg_max - 1.01
and the gains box 7.5, cls 0.5, dfl 1.5. The reference returns `loss_items` = the gained terms and `loss` =
loss_items * batch size (what its trainer back-propagates, summed); `yolov8_loss` returns both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcv.ops.nms import nms
from jaxcv.ops.tal import ciou, task_aligned_assign

Array = jax.Array


def make_anchors(grid_hw: Sequence[tuple[int, int]], strides: Sequence[int] = (8, 16, 32),
                 offset: float = 0.5) -> tuple[Array, Array]:
    """Anchor points [A, 2] (x, y) in grid units (cell centres: + offset) and strides [A], level-major then
    row-major over (y, x), as ultralytics `make_anchors(feats, stride, 0.5)`."""
    points, stride = [], []
    for (h, w), s in zip(grid_hw, strides, strict=True):
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float32) + offset, np.arange(w, dtype=np.float32) + offset,
                             indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], -1))
        stride.append(np.full((h * w,), s, np.float32))
    return jnp.asarray(np.concatenate(points)), jnp.asarray(np.concatenate(stride))


def grid_sizes(image_hw: tuple[int, int], strides: Sequence[int] = (8, 16, 32)) -> list[tuple[int, int]]:
    """Feature-map sizes of a YOLOv8 input [H, W] (multiples of 32): (H / s, W / s) per stride."""
    return [(-(-image_hw[0] // s), -(-image_hw[1] // s)) for s in strides]


def dfl_expectation(box_logits: Array, reg_max: int = 16) -> Array:
    """DFL decode: [..., 4 * reg_max] logits -> [..., 4] expected distances (l, t, r, b) in grid units
    (softmax over the bins, expectation with 0..reg_max-1; ultralytics' `DFL` 1x1 conv)."""
    p = jax.nn.softmax(box_logits.reshape(*box_logits.shape[:-1], 4, reg_max), axis=-1)
    return jnp.sum(p * jnp.arange(reg_max, dtype=p.dtype), axis=-1)


def dist2bbox(ltrb: Array, points: Array, xywh: bool = True) -> Array:
    """Distances [..., 4] (l, t, r, b) from points [..., 2] -> boxes (cx, cy, w, h) or (x1, y1, x2, y2)."""
    x1y1 = points - ltrb[..., :2]
    x2y2 = points + ltrb[..., 2:]
    if xywh:
        return jnp.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], axis=-1)
    return jnp.concatenate([x1y1, x2y2], axis=-1)


def bbox2dist(points: Array, boxes: Array, max_dist: float) -> Array:
    """xyxy boxes [..., 4] -> (l, t, r, b) distances from points [..., 2], clamped to [0, max_dist]."""
    ltrb = jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)
    return jnp.clip(ltrb, 0, max_dist)


def decode_outputs(boxes: Array, scores: Array, points: Array, strides: Array, reg_max: int = 16) -> Array:
    """boxes [B, A, 4 * reg_max], scores [B, A, K] logits -> [B, A, 4 + K]: (cx, cy, w, h) in pixels, then
    sigmoid class probabilities (ultralytics' eval output `y`, transposed)."""
    xywh = dist2bbox(dfl_expectation(boxes, reg_max), points) * strides[:, None]
    return jnp.concatenate([xywh, jax.nn.sigmoid(scores)], axis=-1)


def dfl_loss(logits: Array, target: Array, reg_max: int = 16) -> Array:
    """Distribution focal loss: logits [..., 4, reg_max], target distances [..., 4] -> [...], the mean over the
    4 sides of -(log p[floor t] (floor t + 1 - t) + log p[floor t + 1] (1 - that)), t clamped to
    [0, reg_max - 1.01] (ultralytics `DFLoss`)."""
    t = jnp.clip(target, 0, reg_max - 1 - 0.01)
    tl = jnp.floor(t)
    wl = tl + 1 - t
    wr = 1 - wl
    logp = jax.nn.log_softmax(logits, axis=-1)
    il = tl.astype(jnp.int32)[..., None]
    lp_l = jnp.take_along_axis(logp, il, axis=-1)[..., 0]
    lp_r = jnp.take_along_axis(logp, il + 1, axis=-1)[..., 0]
    return jnp.mean(-lp_l * wl - lp_r * wr, axis=-1)


def bce_with_logits(x: Array, t: Array) -> Array:
    """Elementwise binary cross-entropy on logits (torch `BCEWithLogitsLoss(reduction="none")`)."""
    return jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def yolov8_loss(boxes: Array, scores: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array, *,
                image_hw: tuple[int, int], strides: Sequence[int] = (8, 16, 32), reg_max: int = 16,
                box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5, topk: int = 10,
                alpha: float = 0.5, beta: float = 6.0, min_side: float | None = None) -> dict[str, Any]:
    """The YOLOv8 training loss on head outputs (module docstring).

    boxes [B, A, 4 * reg_max] and scores [B, A, K] logits (`YOLOv8` outputs `boxes`, `scores`); gt_boxes
    [B, G, 4] xyxy pixels, gt_labels [B, G] int, gt_mask [B, G] bool (padding: G is static, any number of real
    boxes per image); image_hw the input size (static). `min_side` (default strides[1]) is the assigner's
    small-box side. Returns float32 `box_loss`, `cls_loss`, `dfl_loss` (gained; ultralytics' `loss_items`
    [3] as `loss_items`), `loss` = their sum * B (the scalar to minimize: the sum of ultralytics' `loss`),
    `num_fg`, and `assignment` (`jaxcv.ops.tal.Assignment`, target boxes in pixels).
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    b = boxes.shape[0]
    points, stride = make_anchors(grid_sizes(image_hw, strides), strides)
    if points.shape[0] != boxes.shape[1]:
        raise ValueError(f"{boxes.shape[1]} anchors in the outputs, {points.shape[0]} for an input {image_hw}")
    ltrb = dfl_expectation(boxes, reg_max)
    pred = dist2bbox(ltrb, points, xywh=False)  # [B, A, 4] grid units
    asg = task_aligned_assign(jax.nn.sigmoid(scores), pred * stride[:, None], points * stride[:, None],
                              gt_labels, gt_boxes, gt_mask, topk=topk, alpha=alpha, beta=beta,
                              min_side=float(strides[1] if min_side is None else min_side))
    tss = jnp.maximum(jnp.sum(asg.scores), 1.0)
    cls = jnp.sum(bce_with_logits(scores, asg.scores)) / tss

    fg = asg.fg_mask
    weight = jnp.where(fg, jnp.sum(asg.scores, axis=-1), 0)  # [B, A]
    target = asg.boxes / stride[:, None]
    # Background anchors get a harmless stand-in target (they are weighted 0; keeps gradients finite).
    target = jnp.where(fg[..., None], target, lax.stop_gradient(pred))
    box = jnp.sum((1.0 - ciou(pred, target)) * weight) / tss
    dist = bbox2dist(points, target, reg_max - 1 - 0.01)
    dfl = jnp.sum(dfl_loss(boxes.reshape(*boxes.shape[:2], 4, reg_max), dist, reg_max) * weight) / tss

    items = jnp.stack([box * box_gain, cls * cls_gain, dfl * dfl_gain])
    return {"box_loss": items[0], "cls_loss": items[1], "dfl_loss": items[2], "loss_items": items,
            "loss": jnp.sum(items) * b, "num_fg": jnp.sum(fg), "assignment": asg}


def _xywh2xyxy(b: Array) -> Array:
    half = b[..., 2:] / 2
    return jnp.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


def _nms_one(pred: Array, conf_thres: float, iou_thres: float, max_det: int, multi_label: bool, agnostic: bool,
             max_wh: float, max_nms: int) -> tuple[Array, Array, Array]:
    a = pred.shape[0]
    box = _xywh2xyxy(pred[:, :4])
    cls_scores = pred[:, 4:]
    k = cls_scores.shape[1]
    if multi_label:  # one row per (anchor, class) with score > conf, anchor-major like torch.where
        anchor = jnp.repeat(jnp.arange(a, dtype=jnp.int32), k)
        cls = jnp.tile(jnp.arange(k, dtype=jnp.int32), a)
        score = cls_scores.reshape(-1)
        box = box[anchor]
    else:  # one row per anchor with its best class
        anchor = jnp.arange(a, dtype=jnp.int32)
        cls = jnp.argmax(cls_scores, axis=1).astype(jnp.int32)
        score = jnp.max(cls_scores, axis=1)
    valid = score > conf_thres
    n = score.shape[0]
    if n > max_nms:  # the reference keeps only the max_nms best-scoring candidates
        _, _, order = lax.sort(((~valid).astype(jnp.int32), -score, jnp.arange(n)), num_keys=2, is_stable=True)
        rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        valid = valid & (rank < max_nms)
    offset = (cls.astype(box.dtype) * (0.0 if agnostic else max_wh))[:, None]
    keep, kept = nms(box + offset, score, iou_thres, max_det, valid)
    det = jnp.concatenate([box[keep], score[keep, None], cls[keep, None].astype(box.dtype)], axis=1)
    det = jnp.where(kept[:, None], det, 0)
    return det, jnp.where(kept, anchor[keep], -1), kept


def yolov8_nms(decoded: Array, conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300,
               multi_label: bool = False, agnostic: bool = False, max_wh: float = 7680.0,
               max_nms: int = 30000) -> tuple[Array, Array, Array]:
    """ultralytics `non_max_suppression(y, conf_thres, iou_thres, multi_label=..., max_det=..., return_idxs=True)`
    on decoded outputs [B, A, 4 + K] ((cx, cy, w, h) px, class probabilities) with fixed shapes.

    Candidates: `multi_label=False` one per anchor (best class, kept if its score > conf_thres); `True` one per
    (anchor, class) with score > conf_thres. Boxes to xyxy, shifted by class * max_wh (unless `agnostic`) so
    classes never overlap, then greedy NMS (`jaxcv.ops.nms.nms`: scores descending, ties in candidate order,
    suppress IoU > iou_thres), the first max_det kept. Returns dets [B, max_det, 6] (x1, y1, x2, y2, score,
    class; zeros past the end), anchor index [B, max_det] int32 (-1 past the end), valid [B, max_det] bool.
    Thresholds and sizes are static (jit with `static_argnames`)."""
    decoded = jnp.asarray(decoded, jnp.float32)

    def one(p: Array) -> tuple[Array, Array, Array]:
        return _nms_one(p, conf_thres, iou_thres, max_det, multi_label, agnostic, max_wh, max_nms)

    return jax.vmap(one)(decoded)


yolov8_nms_jit = jax.jit(yolov8_nms, static_argnames=("conf_thres", "iou_thres", "max_det", "multi_label",
                                                      "agnostic", "max_wh", "max_nms"))
