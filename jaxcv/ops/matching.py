"""Anchor <-> ground-truth matching and dense detection targets, vectorized over the batch.

Ground truth is padded to a fixed `G` per image with a validity mask, so one compilation serves
every number of boxes up to G. Two assigners: torchvision's `Matcher(fg_iou, bg_iou,
allow_low_quality_matches)` as used by RetinaNet (`match_anchors`), and ATSS's adaptive IoU threshold
(Zhang et al. 2020, `atss_match`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxcv.ops.boxes import BoxCoder, box_iou
from jaxcv.ops.tal import candidates_in_gts

Array = jnp.ndarray
ASSIGNERS = ("max_iou", "atss")

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match_anchors(
    anchors: Array,
    gt_boxes: Array,
    gt_mask: Array,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality_matches: bool = True,
) -> Array:
    """anchors [A, 4], gt_boxes [B, G, 4] xyxy, gt_mask [B, G] bool -> matched_idxs [B, A] int32.

    -1: best IoU < bg_iou (background); -2: bg_iou <= best IoU < fg_iou (ignored); else the index
    (into the padded G) of the gt with the highest IoU (first one on ties, like torch.max).
    With allow_low_quality_matches, every anchor that attains some gt's highest IoU (all ties) is
    reset to its own best gt, as torchvision `Matcher.set_low_quality_matches_`.

    Padded gts (mask False) and degenerate gts (x2 <= x1 or y2 <= y1, which torchvision's RetinaNet
    rejects with an error) never match; an image without gt gets all -1. One deliberate guard: a gt
    whose highest IoU is 0 (it overlaps no anchor) creates no low-quality matches (torchvision would
    mark every anchor with IoU 0 to it as foreground).
    """
    gt_boxes = jnp.asarray(gt_boxes)
    anchors = jnp.asarray(anchors, gt_boxes.dtype)
    valid = _valid_gt(gt_boxes, gt_mask)
    iou = box_iou(gt_boxes, anchors)  # [B, G, A]
    # Real IoUs are >= 0, so -1 keeps padded rows from ever being the max for an anchor.
    iou = jnp.where(valid[..., None], iou, -1.0)
    matched_vals = jnp.max(iou, axis=1)  # [B, A]
    all_matches = jnp.argmax(iou, axis=1).astype(jnp.int32)  # first max, as torch.max(dim)
    matches = jnp.where(
        matched_vals < bg_iou,
        BELOW_LOW_THRESHOLD,
        jnp.where(matched_vals < fg_iou, BETWEEN_THRESHOLDS, all_matches),
    ).astype(jnp.int32)
    if allow_low_quality_matches:
        highest = jnp.max(iou, axis=2, keepdims=True)  # [B, G, 1]
        is_best = (iou == highest) & valid[..., None] & (highest > 0)
        matches = jnp.where(jnp.any(is_best, axis=1), all_matches, matches)
    return matches


def _valid_gt(gt_boxes: Array, gt_mask: Array) -> Array:
    """[B, G] bool: real (unpadded) gts with positive width and height."""
    return gt_mask & (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])


def atss_match(
    anchors: Array,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Array,
    gt_mask: Array,
    topk: int = 9,
) -> Array:
    """ATSS assignment (Zhang et al. 2020, Algorithm 1; mmdet `ATSSAssigner`) -> matched_idxs [B, A] int32.

    anchors [A, 4] xyxy in level order with `num_anchors_per_level` (static) anchors per level,
    gt_boxes [B, G, 4] xyxy, gt_mask [B, G] bool. Per gt and level, the `min(topk, level size)` anchors
    whose centres are nearest the gt's centre (L2) are candidates; a candidate is positive when its IoU
    with the gt is >= mean + std of all the gt's candidate IoUs (std unbiased, as torch's) and its centre
    lies inside the gt (every side distance > 0.01). An anchor positive for several gts takes the one of
    highest IoU (first on ties). Everything else is background (-1): ATSS has no ignore band. Padded and
    degenerate gts match nothing. Vectorized: one `top_k` per level, no loop over gts or anchors.
    """
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    anchors = jnp.asarray(anchors, jnp.float32)
    valid = _valid_gt(gt_boxes, gt_mask)
    iou = box_iou(gt_boxes, anchors)  # [B, G, A]
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # [A, 2]
    g_ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # [B, G, 2]
    dist = jnp.sqrt(((g_ctr[..., None, :] - a_ctr) ** 2).sum(-1))  # [B, G, A]
    b, g = gt_boxes.shape[:2]
    bi, gi = jnp.arange(b)[:, None, None], jnp.arange(g)[None, :, None]
    is_cand, cand_iou, start = [], [], 0
    for n in num_anchors_per_level:
        k = min(topk, n)
        _, idx = jax.lax.top_k(-dist[..., start:start + n], k)  # [B, G, k] nearest first
        is_cand.append(jnp.zeros((b, g, n), bool).at[bi, gi, idx].set(True))
        cand_iou.append(jnp.take_along_axis(iou[..., start:start + n], idx, axis=-1))
        start += n
    if start != anchors.shape[0]:
        raise ValueError(f"num_anchors_per_level sums to {start}, but there are {anchors.shape[0]} anchors")
    is_cand = jnp.concatenate(is_cand, -1)  # [B, G, A]
    cand_iou = jnp.concatenate(cand_iou, -1)  # [B, G, C]
    threshold = cand_iou.mean(-1, keepdims=True) + jnp.std(cand_iou, axis=-1, ddof=1, keepdims=True)
    inside = candidates_in_gts(a_ctr, gt_boxes, gt_mask, min_side=0.0, eps=0.01)  # [B, G, A]
    positive = is_cand & (iou >= threshold) & inside & valid[..., None]  # [B, G, A]
    best = jnp.argmax(jnp.where(positive, iou, -1.0), axis=1).astype(jnp.int32)  # [B, A]
    return jnp.where(positive.any(1), best, BELOW_LOW_THRESHOLD).astype(jnp.int32)


def detection_targets(
    anchors: Array,
    gt_boxes: Array,
    gt_labels: Array,
    gt_mask: Array,
    coder: BoxCoder | None = None,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality: bool = True,
    assigner: str = "max_iou",
    num_anchors_per_level: Sequence[int] = (),
    atss_topk: int = 9,
) -> dict[str, Array]:
    """Dense per-anchor targets for one-stage detectors (RetinaNet `compute_loss` semantics).

    anchors [A, 4], gt_boxes [B, G, 4] xyxy pixels, gt_labels [B, G] int, gt_mask [B, G] bool ->
      matched_idxs [B, A] int32 (`assigner` "max_iou": `match_anchors` with fg_iou, bg_iou,
        allow_low_quality; "atss": `atss_match` with num_anchors_per_level, atss_topk),
      cls_targets [B, A] int32: gt label for foreground, -1 background, -2 ignored,
      box_targets [B, A, 4]: `coder.encode(matched gt, anchor)` for foreground, 0 elsewhere
        (coder defaults to BoxCoder()),
      matched_boxes [B, A, 4]: the matched gt box for foreground, the anchor itself elsewhere,
      fg_mask [B, A] bool, valid_mask [B, A] bool (not in the ignore band).
    """
    coder = BoxCoder() if coder is None else coder
    anchors = jnp.asarray(anchors, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    if assigner == "atss":
        matched = atss_match(anchors, num_anchors_per_level, gt_boxes, gt_mask, atss_topk)
    elif assigner == "max_iou":
        matched = match_anchors(anchors, gt_boxes, gt_mask, fg_iou, bg_iou, allow_low_quality)
    else:
        raise ValueError(f"unknown assigner {assigner!r}; use one of {', '.join(ASSIGNERS)}")
    fg = matched >= 0
    idx = jnp.maximum(matched, 0)
    boxes = jnp.take_along_axis(gt_boxes, idx[..., None], axis=1)  # [B, A, 4]
    labels = jnp.take_along_axis(jnp.asarray(gt_labels, jnp.int32), idx, axis=1)  # [B, A]
    # Non-foreground anchors encode against themselves (codes 0) so no log(0) appears anywhere.
    boxes = jnp.where(fg[..., None], boxes, anchors[None])
    box_targets = jnp.where(fg[..., None], coder.encode(boxes, anchors[None]), 0.0)
    return {
        "matched_idxs": matched,
        "cls_targets": jnp.where(fg, labels, matched).astype(jnp.int32),
        "box_targets": box_targets,
        "matched_boxes": boxes,
        "fg_mask": fg,
        "valid_mask": matched != BETWEEN_THRESHOLDS,
    }
