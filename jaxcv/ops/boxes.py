"""Box geometry in jnp: conversions, areas, pairwise IoU/GIoU, clipping and the R-CNN box coder.

All boxes are `[..., 4]` xyxy in pixels unless named otherwise; functions broadcast over leading
batch dims. Formulas follow torchvision.ops.boxes and torchvision.models.detection._utils operation
by operation, so float32 results agree to round-off (and IoU ties resolve the same way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax.numpy as jnp

Array = jnp.ndarray


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h) (torchvision `_box_xyxy_to_cxcywh`)."""
    x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2) (torchvision `_box_cxcywh_to_xyxy`)."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_area(boxes: Array) -> Array:
    """[..., 4] xyxy -> [...] area (w * h, no clamping, as torchvision `box_area`)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(a: Array, b: Array) -> tuple[Array, Array]:
    """a [..., N, 4], b [..., M, 4] -> (intersection, union) [..., N, M]."""
    area_a = box_area(a)
    area_b = box_area(b)
    lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(rb - lt, min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter, union


def box_iou(a: Array, b: Array) -> Array:
    """Pairwise IoU: a [..., N, 4], b [..., M, 4] -> [..., N, M] (torchvision `box_iou`)."""
    inter, union = _inter_union(a, b)
    return inter / union


def generalized_box_iou(a: Array, b: Array) -> Array:
    """Pairwise GIoU in [-1, 1]: a [..., N, 4], b [..., M, 4] -> [..., N, M]
    (torchvision `generalized_box_iou`: IoU - (hull area - union) / hull area)."""
    inter, union = _inter_union(a, b)
    iou = inter / union
    lt = jnp.minimum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.maximum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(rb - lt, min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def clip_boxes(boxes: Array, height: float | Array, width: float | Array) -> Array:
    """Clamps [..., 4] xyxy boxes to [0, width] x [0, height] (torchvision `clip_boxes_to_image`)."""
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


@dataclass(frozen=True)
class BoxCoder:
    """R-CNN box parametrization (dx, dy, dw, dh) relative to anchors, as torchvision `BoxCoder`.

    encode: dx = wx * (gcx - acx) / aw, dy likewise, dw = ww * log(gw / aw), dh likewise.
    decode: inverse with dw, dh clamped above at `bbox_xform_clip` (= log(1000 / 16)) so exp()
    cannot overflow; corners are centre -/+ 0.5 * size exactly as torchvision `decode_single`.
    """

    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
    bbox_xform_clip: float = math.log(1000.0 / 16)

    def encode(self, reference_boxes: Array, anchors: Array) -> Array:
        """reference_boxes (targets) [..., 4] xyxy, anchors [..., 4] xyxy -> codes [..., 4]."""
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        gw = reference_boxes[..., 2] - reference_boxes[..., 0]
        gh = reference_boxes[..., 3] - reference_boxes[..., 1]
        gcx = reference_boxes[..., 0] + 0.5 * gw
        gcy = reference_boxes[..., 1] + 0.5 * gh
        dx = wx * (gcx - acx) / aw
        dy = wy * (gcy - acy) / ah
        dw = ww * jnp.log(gw / aw)
        dh = wh * jnp.log(gh / ah)
        return jnp.stack([dx, dy, dw, dh], axis=-1)

    def decode(self, codes: Array, anchors: Array) -> Array:
        """codes [..., 4], anchors [..., 4] xyxy -> boxes [..., 4] xyxy."""
        wx, wy, ww, wh = self.weights
        anchors = anchors.astype(codes.dtype)
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        dx = codes[..., 0] / wx
        dy = codes[..., 1] / wy
        dw = jnp.minimum(codes[..., 2] / ww, self.bbox_xform_clip)
        dh = jnp.minimum(codes[..., 3] / wh, self.bbox_xform_clip)
        cx = dx * aw + acx
        cy = dy * ah + acy
        half_w = 0.5 * (jnp.exp(dw) * aw)
        half_h = 0.5 * (jnp.exp(dh) * ah)
        return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
