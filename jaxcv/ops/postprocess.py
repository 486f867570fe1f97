"""RetinaNet detection post-processing with fixed shapes (jit-able, vmapped over the batch)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxcv.ops.boxes import BoxCoder, clip_boxes
from jaxcv.ops.nms import batched_nms

Array = jnp.ndarray


def _postprocess_one(
    cls_logits: Array,
    box_regression: Array,
    anchors: Array,
    num_anchors_per_level: tuple[int, ...],
    image_hw: tuple[int, int],
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    detections_per_img: int,
    coder: BoxCoder,
) -> dict[str, Array]:
    """cls_logits [A, K], box_regression [A, 4], anchors [A, 4] -> detections of one image."""
    num_classes = cls_logits.shape[-1]
    boxes_l, scores_l, labels_l, valid_l = [], [], [], []
    start = 0
    for n in num_anchors_per_level:
        logits = cls_logits[start : start + n]
        regression = box_regression[start : start + n]
        level_anchors = anchors[start : start + n]
        start += n
        scores = jax.nn.sigmoid(logits.astype(jnp.float32)).reshape(-1)  # [n*K], anchor-major
        keep = scores > score_thresh
        k = min(topk_candidates, n * num_classes)
        top_scores, top_idx = lax.top_k(jnp.where(keep, scores, -jnp.inf), k)
        valid = top_scores > score_thresh  # as many as torchvision's min(topk, #kept)
        anchor_idx = top_idx // num_classes
        labels = top_idx % num_classes
        boxes = coder.decode(regression[anchor_idx].astype(jnp.float32), level_anchors[anchor_idx])
        boxes = clip_boxes(boxes, image_hw[0], image_hw[1])
        boxes_l.append(boxes)
        scores_l.append(jnp.where(valid, top_scores, 0.0))
        labels_l.append(labels.astype(jnp.int32))
        valid_l.append(valid)
    boxes = jnp.concatenate(boxes_l)
    scores = jnp.concatenate(scores_l)
    labels = jnp.concatenate(labels_l)
    valid = jnp.concatenate(valid_l)
    keep, keep_valid = batched_nms(boxes, scores, labels, nms_thresh, detections_per_img, valid)
    return {
        "boxes": jnp.where(keep_valid[:, None], boxes[keep], 0.0),
        "scores": jnp.where(keep_valid, scores[keep], 0.0),
        "labels": jnp.where(keep_valid, labels[keep], 0).astype(jnp.int32),
        "valid": keep_valid,
    }


@partial(
    jax.jit,
    static_argnames=(
        "num_anchors_per_level",
        "image_hw",
        "score_thresh",
        "topk_candidates",
        "nms_thresh",
        "detections_per_img",
        "coder_weights",
    ),
)
def _postprocess_jit(
    cls_logits,
    box_regression,
    anchors,
    num_anchors_per_level,
    image_hw,
    score_thresh,
    topk_candidates,
    nms_thresh,
    detections_per_img,
    coder_weights,
):
    fn = partial(
        _postprocess_one,
        anchors=jnp.asarray(anchors, jnp.float32),
        num_anchors_per_level=num_anchors_per_level,
        image_hw=image_hw,
        score_thresh=score_thresh,
        topk_candidates=topk_candidates,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        coder=BoxCoder(weights=coder_weights),
    )
    return jax.vmap(fn)(cls_logits, box_regression)


def retinanet_postprocess(
    cls_logits: Array,
    box_regression: Array,
    anchors: Array,
    num_anchors_per_level: Sequence[int],
    image_hw: Sequence[int],
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    coder_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> dict[str, Array]:
    """torchvision `RetinaNet.postprocess_detections` with fixed shapes.

    cls_logits [B, A, K], box_regression [B, A, 4], anchors [A, 4] xyxy (shared by the batch; same
    order as `generate_anchors`), num_anchors_per_level (static), image_hw (the (padded) input size
    boxes are clipped to) -> dict(boxes [B, D, 4] xyxy pixels, scores [B, D], labels [B, D] int32,
    valid [B, D] bool), D = detections_per_img, sorted by decreasing score; invalid slots are zero.

    Per level: sigmoid scores flattened over (anchor, class), keep score > score_thresh, the top
    min(topk_candidates, #kept), decode, clip to the image; then all levels go through class-wise
    NMS and the best `detections_per_img` remain. Callable inside an outer jit as well.
    """
    return _postprocess_jit(
        cls_logits,
        box_regression,
        anchors,
        tuple(int(n) for n in num_anchors_per_level),
        (int(image_hw[0]), int(image_hw[1])),
        float(score_thresh),
        int(topk_candidates),
        float(nms_thresh),
        int(detections_per_img),
        tuple(float(w) for w in coder_weights),
    )
