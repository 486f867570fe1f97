"""Task-aligned assigner (Feng et al. 2021, TOOD) as ultralytics' YOLOv8 uses it; batched, jit-able, static shapes.

Ground truth is padded to a fixed G per image (`gt_mask` marks the real boxes), so one compilation serves any
number of boxes. For each image, with pairs (gt g, anchor a):

1. candidates: anchor centre strictly inside gt g (every side distance > 1e-9) and g real; a gt side shorter
   than `min_side` pixels (ultralytics' `stride_val`, the second level's stride: 16) is first set to
   `min_side` about the box centre (the reference's round trip xyxy -> cx, cy, w, h -> xyxy, in its float
   order);
2. overlap = CIoU(gt, pred).clamp(0) and metric = score[a, class g]^alpha * overlap^beta on candidates, 0
   elsewhere;
3. per gt, the top-k anchors by metric over all anchors (`lax.top_k`: equal metrics go to the lower anchor
   index), intersected with the candidates: the positives;
4. an anchor positive for several gts goes to the argmax over all gts of its overlap column (first on ties);
   fg = positive for some gt; gt index = the first gt it is positive for (0 for background);
5. target scores = one-hot(gt class) * fg * max over gts of metric * (max overlap of that gt) / (max metric of
   that gt + eps), metric and overlap restricted to the positives of step 4.

Background anchors get gt 0's label and box (ultralytics' gather of index 0). `ciou` (Zheng et al. 2020) is the
box similarity both the assigner and the box loss use.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def ciou(box1: Array, box2: Array, eps: float = 1e-7) -> Array:
    """Complete IoU of xyxy boxes [..., 4] (broadcast) -> [...]: iou - (rho^2 / c^2 + v * alpha), with
    v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2, alpha = v / (v - iou + 1 + eps) (held constant under
    differentiation, as the reference computes it without gradient), heights + eps, c the enclosing box
    diagonal and rho the centre distance (ultralytics `bbox_iou(..., xywh=False, CIoU=True)`)."""
    b1x1, b1y1, b1x2, b1y2 = (box1[..., i] for i in range(4))
    b2x1, b2y1, b2x2, b2y2 = (box2[..., i] for i in range(4))
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps
    inter = (jnp.maximum(jnp.minimum(b1x2, b2x2) - jnp.maximum(b1x1, b2x1), 0)
             * jnp.maximum(jnp.minimum(b1y2, b2y2) - jnp.maximum(b1y1, b2y1), 0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = jnp.maximum(b1x2, b2x2) - jnp.minimum(b1x1, b2x1)
    ch = jnp.maximum(b1y2, b2y2) - jnp.minimum(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
    alpha = lax.stop_gradient(v / (v - iou + (1 + eps)))
    return iou - (rho2 / c2 + v * alpha)


class Assignment(NamedTuple):
    """Assigner outputs (ultralytics' order and meaning), per image b and anchor a."""

    labels: Array  # [B, A] int32 class of the assigned gt (gt 0's for background)
    boxes: Array  # [B, A, 4] xyxy pixels of the assigned gt (gt 0's for background)
    scores: Array  # [B, A, K] one-hot class * normalized alignment, 0 for background
    fg_mask: Array  # [B, A] bool
    gt_idx: Array  # [B, A] int32 index of the assigned gt (0 for background)


def candidates_in_gts(points: Array, gt_boxes: Array, gt_mask: Array, min_side: float = 16.0,
                      eps: float = 1e-9) -> Array:
    """points [A, 2] px, gt_boxes [B, G, 4] xyxy px, gt_mask [B, G] -> [B, G, A] bool: anchor centre strictly
    inside the gt, whose sides shorter than `min_side` px are first set to `min_side`. Not masked by `gt_mask`
    except for the widening."""
    cx = (gt_boxes[..., 0] + gt_boxes[..., 2]) / 2
    cy = (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2
    w = gt_boxes[..., 2] - gt_boxes[..., 0]
    h = gt_boxes[..., 3] - gt_boxes[..., 1]
    side = jnp.asarray(min_side, gt_boxes.dtype)
    w = jnp.where((w < side) & gt_mask, side, w)
    h = jnp.where((h < side) & gt_mask, side, h)
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    px, py = points[:, 0], points[:, 1]
    deltas = jnp.stack([px - x1[..., None], py - y1[..., None], x2[..., None] - px, y2[..., None] - py], -1)
    return jnp.min(deltas, axis=-1) > eps


def _pow(x: Array, p: float) -> Array:
    """x ** p with the reference's special forms: sqrt for 0.5, repeated products for small integers."""
    if p == 0.5:
        return jnp.sqrt(x)
    if float(p).is_integer() and 0 <= p <= 16:
        return lax.integer_pow(x, int(p))
    return x**p


def task_aligned_assign(pd_scores: Array, pd_boxes: Array, points: Array, gt_labels: Array, gt_boxes: Array,
                        gt_mask: Array, *, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                        eps: float = 1e-9, min_side: float = 16.0) -> Assignment:
    """pd_scores [B, A, K] probabilities (sigmoid), pd_boxes [B, A, 4] xyxy px, points [A, 2] px,
    gt_labels [B, G] int, gt_boxes [B, G, 4] xyxy px, gt_mask [B, G] bool -> `Assignment` (module docstring).
    Inputs are treated as constants (no gradient flows through the assignment)."""
    pd_scores, pd_boxes, gt_boxes = (lax.stop_gradient(jnp.asarray(a, jnp.float32))
                                     for a in (pd_scores, pd_boxes, gt_boxes))
    points = lax.stop_gradient(jnp.asarray(points, jnp.float32))
    gt_mask = jnp.asarray(gt_mask, bool)
    gt_labels = jnp.asarray(gt_labels, jnp.int32)
    b, a, k = pd_scores.shape
    g = gt_boxes.shape[1]
    if g == 0:
        return Assignment(jnp.full((b, a), k, jnp.int32), jnp.zeros((b, a, 4), jnp.float32),
                          jnp.zeros((b, a, k), jnp.float32), jnp.zeros((b, a), bool), jnp.zeros((b, a), jnp.int32))

    cand = candidates_in_gts(points, gt_boxes, gt_mask, min_side) & gt_mask[..., None]  # [B, G, A]
    # Score of each gt's class at every anchor: [B, G, A].
    labels = jnp.clip(gt_labels, 0, k - 1)
    cls_scores = jnp.take_along_axis(jnp.swapaxes(pd_scores, 1, 2), labels[..., None], axis=1)
    overlaps = jnp.where(cand, jnp.maximum(ciou(gt_boxes[:, :, None, :], pd_boxes[:, None, :, :]), 0), 0)
    metric = jnp.where(cand, _pow(cls_scores, alpha) * _pow(overlaps, beta), 0)

    kk = min(topk, a)
    _, top_idx = lax.top_k(metric, kk)  # [B, G, kk]
    bi = jnp.arange(b)[:, None, None]
    gi = jnp.arange(g)[None, :, None]
    in_topk = jnp.zeros((b, g, a), bool).at[bi, gi, top_idx].set(True)
    mask_pos = in_topk & cand  # cand already includes gt_mask

    # An anchor claimed by several gts goes to the gt it overlaps most (over all gts).
    multi = jnp.sum(mask_pos, axis=1) > 1  # [B, A]
    best = jnp.argmax(overlaps, axis=1)  # [B, A]
    is_best = jnp.arange(g)[None, :, None] == best[:, None, :]
    mask_pos = jnp.where(multi[:, None, :], is_best, mask_pos)
    fg = jnp.any(mask_pos, axis=1)
    gt_idx = jnp.argmax(mask_pos, axis=1).astype(jnp.int32)  # first positive gt; 0 for background

    t_labels = jnp.maximum(jnp.take_along_axis(gt_labels, gt_idx, axis=1), 0)
    t_boxes = jnp.take_along_axis(gt_boxes, gt_idx[..., None], axis=1)
    onehot = (jnp.arange(k) == t_labels[..., None]) & fg[..., None]

    metric = jnp.where(mask_pos, metric, 0)
    pos_metric = jnp.max(metric, axis=-1, keepdims=True)  # [B, G, 1]
    pos_overlap = jnp.max(jnp.where(mask_pos, overlaps, 0), axis=-1, keepdims=True)
    norm = jnp.max(metric * pos_overlap / (pos_metric + eps), axis=1)  # [B, A]
    t_scores = onehot.astype(jnp.float32) * norm[..., None]
    return Assignment(t_labels, t_boxes, t_scores, fg, gt_idx)
