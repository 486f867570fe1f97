"""Greedy non-maximum suppression with fixed output shapes (jit-able, vmappable).

Same result as torchvision `nms`: boxes are visited in decreasing score order (stable sort, so equal
scores keep input order); a box is kept unless a kept, higher-ranked box overlaps it with
IoU > iou_threshold, IoU computed as inter / (area_i + area_j - inter) like torchvision's kernel.

Algorithm: sort once, then a `lax.while_loop` that runs once per *kept* box: it records the box,
suppresses the later boxes that overlap it (one O(N) IoU row), and jumps to the next unsuppressed box
with an argmax. Memory is O(N) (no N x N matrix) and work O(kept * N); the loop stops at max_output.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


def _nms_impl(
    boxes: Array,
    scores: Array,
    classes: Array | None,
    iou_threshold: float,
    max_output: int,
    valid: Array | None,
) -> tuple[Array, Array]:
    n = boxes.shape[0]
    boxes = boxes.astype(jnp.float32)
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    if n == 0:
        return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
    # Stable sort: invalid boxes last, then decreasing score, then input order.
    iota = jnp.arange(n, dtype=jnp.int32)
    _, _, order = lax.sort(
        ((~valid).astype(jnp.int32), -scores.astype(jnp.float32), iota), num_keys=2, is_stable=True
    )
    sb = boxes[order]
    s_valid = valid[order]
    s_cls = None if classes is None else jnp.asarray(classes)[order]
    x1, y1, x2, y2 = sb[:, 0], sb[:, 1], sb[:, 2], sb[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    # alive: not yet kept or suppressed, and valid.
    alive0 = s_valid

    def next_alive(alive: Array) -> tuple[Array, Array]:
        i = jnp.argmax(alive).astype(jnp.int32)
        return i, alive[i]

    def cond(state):
        _, _, count, _, has_next = state
        return has_next & (count < max_output)

    def body(state):
        alive, keep, count, i, _ = state
        keep = keep.at[count].set(i)
        xx1 = jnp.maximum(x1[i], x1)
        yy1 = jnp.maximum(y1[i], y1)
        xx2 = jnp.minimum(x2[i], x2)
        yy2 = jnp.minimum(y2[i], y2)
        inter = jnp.maximum(xx2 - xx1, 0.0) * jnp.maximum(yy2 - yy1, 0.0)
        ovr = inter / (areas[i] + areas - inter)
        suppress = ovr > iou_threshold
        if s_cls is not None:
            suppress = suppress & (s_cls == s_cls[i])
        alive = alive & ~suppress & (iota > i)
        j, has_next = next_alive(alive)
        return alive, keep, count + 1, j, has_next

    i0, has0 = next_alive(alive0)
    init = (alive0, jnp.zeros((max_output,), jnp.int32), jnp.int32(0), i0, has0)
    _, keep_sorted, count, _, _ = lax.while_loop(cond, body, init)
    keep_valid = jnp.arange(max_output) < count
    keep_idx = jnp.where(keep_valid, order[keep_sorted], 0).astype(jnp.int32)
    return keep_idx, keep_valid


def nms(
    boxes: Array, scores: Array, iou_threshold: float, max_output: int, valid: Array | None = None
) -> tuple[Array, Array]:
    """boxes [N, 4] xyxy, scores [N], valid [N] bool | None ->
    (keep_idx [max_output] int32 indices into N in decreasing score order, padded with 0;
     keep_valid [max_output] bool). Invalid boxes are never kept and suppress nothing."""
    return _nms_impl(jnp.asarray(boxes), jnp.asarray(scores), None, iou_threshold, max_output, valid)


def batched_nms(
    boxes: Array,
    scores: Array,
    classes: Array,
    iou_threshold: float,
    max_output: int,
    valid: Array | None = None,
) -> tuple[Array, Array]:
    """Per-class NMS in one pass (torchvision `batched_nms`): boxes of different classes never
    suppress each other. torchvision shifts each class's boxes by class * (max coord + 1) so they
    cannot overlap; we get the same effect exactly by masking the IoU with class equality (no float
    error from large offsets), which is also what torchvision's per-class path computes.
    Output as `nms`: kept indices in decreasing score order."""
    return _nms_impl(
        jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes), iou_threshold, max_output, valid
    )

