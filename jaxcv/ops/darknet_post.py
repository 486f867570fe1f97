"""OpenCV DNN's post-processing of darknet `[yolo]` rows: the in-layer class-score threshold and per-class NMS
(`region_layer.cpp` RegionLayerImpl::forward and do_nms_sort), fixed-shape and jit-able, plus the usual host-side
decoding of a notebook (`cv2.dnn.NMSBoxes` over the best class of each row).

Rows are OpenCV's layout `[..., N, 5 + C]`: cx, cy, w, h (fractions of the input blob), objectness, then class
scores objectness * sigmoid(t_c) (`jaxcv.models.darknet.Darknet`'s `"yolo"` outputs, no threshold).

In the layer (`opencv_yolo_rows`): class scores <= `thresh` become 0 (objectness and boxes never change); if
`nms_threshold` > 0, for each class separately over the rows of that one layer (and image), `NMSBoxes` on the
boxes (cx - w/2, cy - h/2, w, h) with that class's scores: scores > thresh, stable sort by score descending, a
box is dropped when its IoU with a kept box is > nms_threshold; dropped rows get score 0 for that class.
OpenCV 4.14 runs no NMS when a `[yolo]` section has no `nms_threshold` key; public yolov3/yolov3-tiny cfgs set
neither key, so what OpenCV returns for them is `opencv_yolo_rows(rows, 0.2, 0.0)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.ops.nms import nms

Array = jax.Array


def threshold_scores(rows: Array, thresh: float | Array) -> Array:
    """rows [..., N, 5 + C] -> the same with class scores <= thresh set to 0 (strictly greater survives)."""
    scores = rows[..., 5:]
    return rows.at[..., 5:].set(jnp.where(scores > thresh, scores, jnp.zeros_like(scores)))


def _class_nms(boxes: Array, scores: Array, thresh: Array, nms_threshold: Array) -> Array:
    """boxes [N, 4] xyxy, scores [N] -> scores with the rows NMS drops set to 0."""
    n = scores.shape[0]
    keep, valid = nms(boxes, scores, nms_threshold, n, valid=scores > thresh)
    kept = jnp.zeros((n,), bool).at[keep].max(valid)
    return jnp.where(kept, scores, jnp.zeros_like(scores))


def nms_per_class(rows: Array, thresh: float | Array, nms_threshold: float | Array) -> Array:
    """OpenCV's in-layer NMS: rows [..., N, 5 + C] -> the same with, for each class and each leading index
    (image), the class scores of rows that NMS drops (or that are <= thresh) set to 0."""
    lead, (n, k) = rows.shape[:-2], rows.shape[-2:]
    flat = rows.reshape(-1, n, k)
    cx, cy, w, h = (flat[..., i] for i in range(4))
    boxes = jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)  # [M, N, 4]
    thresh = jnp.asarray(thresh, rows.dtype)
    iou = jnp.asarray(nms_threshold, jnp.float32)
    per_class = jax.vmap(_class_nms, in_axes=(None, 1, None, None), out_axes=1)  # over classes
    scores = jax.vmap(per_class, in_axes=(0, 0, None, None))(boxes, flat[..., 5:], thresh, iou)
    return flat.at[..., 5:].set(scores).reshape(*lead, n, k)


def opencv_yolo_rows(rows: Array, thresh: float = 0.2, nms_threshold: float = 0.0) -> Array:
    """What OpenCV's yolo (Region) layer outputs given the pure decode `rows` [..., N, 5 + C]: the class-score
    threshold, then per-class NMS iff `nms_threshold` > 0 (a Python number: it decides the graph)."""
    out = threshold_scores(rows, thresh)
    return nms_per_class(out, thresh, nms_threshold) if nms_threshold > 0 else out


def opencv_outputs(outputs: Sequence[Array], specs: Sequence[Any]) -> list[Array]:
    """Each `[yolo]` section's rows as OpenCV returns them, using that section's `thresh` / `nms_threshold`
    (`specs`: `Darknet.yolo_specs()`, in the same order as `outputs`, the module's `"yolo"` list)."""
    if len(outputs) != len(specs):
        raise ValueError(f"{len(outputs)} yolo outputs but {len(specs)} [yolo] sections")
    return [opencv_yolo_rows(r, s.thresh, s.nms_threshold) for r, s in zip(outputs, specs, strict=True)]


def nms_boxes(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float,
              top_k: int = 0) -> np.ndarray:
    """`cv2.dnn.NMSBoxes` on the host: boxes [N, 4] (x, y, w, h), scores [N] -> kept indices, best first.
    Candidates score > score_threshold, stable sort by score descending (first top_k if > 0), a box is kept
    unless its IoU with an already kept box is > nms_threshold (IoU = inter / (area_a + area_b - inter))."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    if top_k > 0:
        order = order[:top_k]
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            iw = np.minimum(x2[i], x2[k]) - np.maximum(x1[i], x1[k])
            ih = np.minimum(y2[i], y2[k]) - np.maximum(y1[i], y1[k])
            inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
            union = area[i] + area[k] - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)
            if np.any(iou > nms_threshold):
                continue
        kept.append(i)
    return np.asarray(kept, np.int64)


def host_detections(outputs: Sequence[np.ndarray], image_wh: tuple[int, int], conf_threshold: float = 0.5,
                    nms_threshold: float = 0.4) -> dict[str, np.ndarray]:
    """The usual notebook decoding of `net.forward(out_names)`: over the rows of every yolo output (one image:
    [N, 5 + C] or [1, N, 5 + C]), class_id = argmax of the class scores, confidence = that score, kept if >
    conf_threshold; pixel boxes x = int(cx * W - w / 2), y likewise, with int(w * W), int(h * H); then
    class-agnostic `NMSBoxes(boxes, confidences, conf_threshold, nms_threshold)`. Returns {"boxes" [K, 4]
    int (x, y, w, h), "class_ids" [K], "confidences" [K]} in NMSBoxes' order."""
    width, height = image_wh
    rows = np.concatenate([np.asarray(o, np.float32).reshape(-1, np.shape(o)[-1]) for o in outputs])
    class_ids = np.argmax(rows[:, 5:], axis=1)
    conf = rows[np.arange(len(rows)), 5 + class_ids]
    sel = conf > conf_threshold
    rows, class_ids, conf = rows[sel], class_ids[sel], conf[sel]
    cx, cy = (rows[:, 0] * width).astype(np.int64), (rows[:, 1] * height).astype(np.int64)
    w, h = (rows[:, 2] * width).astype(np.int64), (rows[:, 3] * height).astype(np.int64)
    boxes = np.stack([(cx - w / 2).astype(np.int64), (cy - h / 2).astype(np.int64), w, h], 1).reshape(-1, 4)
    keep = nms_boxes(boxes, conf, conf_threshold, nms_threshold)
    return {"boxes": boxes[keep], "class_ids": class_ids[keep], "confidences": conf[keep]}
