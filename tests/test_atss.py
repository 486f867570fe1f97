"""ATSS assignment (`jaxcv.ops.matching.atss_match`) against a per-gt loop written from the paper's
Algorithm 1 (Zhang et al. 2020), and the RetinaNet head trained with it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxcv.ops import generate_anchors
from jaxcv.ops.anchors import AnchorConfig
from jaxcv.ops.matching import atss_match, detection_targets


def atss_reference(anchors, per_level, gt_boxes, gt_mask, topk):
    """One image at a time, one gt at a time: numpy, float64."""
    b, g = gt_mask.shape
    out = np.full((b, len(anchors)), -1, np.int64)
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    area_a = np.prod(anchors[:, 2:] - anchors[:, :2], -1)
    for i in range(b):
        best_iou = np.full(len(anchors), -np.inf)
        for j in range(g):
            box = gt_boxes[i, j]
            if not gt_mask[i, j] or box[2] <= box[0] or box[3] <= box[1]:
                continue
            lt, rb = np.maximum(anchors[:, :2], box[:2]), np.minimum(anchors[:, 2:], box[2:])
            inter = np.prod(np.clip(rb - lt, 0, None), -1)
            iou = inter / (area_a + np.prod(box[2:] - box[:2]) - inter)
            dist = np.linalg.norm(ctr - (box[:2] + box[2:]) / 2, axis=-1)
            cand, start = [], 0
            for n in per_level:
                cand += list(start + np.argsort(dist[start:start + n], kind="stable")[:min(topk, n)])
                start += n
            cand = np.array(cand)
            thr = iou[cand].mean() + iou[cand].std(ddof=1)
            for a in cand:
                inside = min(ctr[a, 0] - box[0], ctr[a, 1] - box[1], box[2] - ctr[a, 0], box[3] - ctr[a, 1]) > 0.01
                if iou[a] >= thr and inside and iou[a] > best_iou[a]:
                    best_iou[a], out[i, a] = iou[a], j
    return out


def random_gt(rng, b, g, size):
    xy = rng.uniform(0, size - 8, (b, g, 2))
    wh = rng.uniform(6, size / 2, (b, g, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size)], -1).astype(np.float32)
    mask = rng.random((b, g)) < 0.8
    boxes[0, 0] = [10, 10, 10, 30]  # degenerate: matches nothing
    return boxes, mask


@pytest.mark.parametrize("scales,ratios,topk", [((1.0,), (1.0,), 9), ((1.0, 1.26), (0.5, 1.0, 2.0), 9),
                                                 ((1.0,), (1.0,), 40)])
def test_atss_matches_reference_loop(scales, ratios, topk):
    cfg = AnchorConfig(levels=(3, 4, 5), sizes=(16.0, 32.0, 64.0), scales=scales, aspect_ratios=ratios)
    anchors, per_level = generate_anchors((64, 64), cfg)  # level 5 has 4 locations: topk 40 > its size
    boxes, mask = random_gt(np.random.default_rng(0), 3, 7, 64)
    got = np.asarray(jax.jit(atss_match, static_argnums=(1, 4))(anchors, tuple(per_level), boxes, mask, topk))
    want = atss_reference(np.asarray(anchors, np.float64), per_level, boxes.astype(np.float64), mask, topk)
    np.testing.assert_array_equal(got, want)
    assert (got >= 0).sum() > 10  # the case is not trivially all background
    assert not (got[0] == 0).any()  # the degenerate gt


def test_atss_targets_have_no_ignore_band():
    cfg = AnchorConfig(levels=(3, 4), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,))
    anchors, per_level = generate_anchors((64, 64), cfg)
    boxes = np.array([[[8, 8, 40, 40], [0, 0, 0, 0]]], np.float32)
    t = detection_targets(anchors, boxes, np.array([[2, 0]]), np.array([[True, False]]), assigner="atss",
                          num_anchors_per_level=per_level)
    assert bool(t["valid_mask"].all())
    fg = np.asarray(t["fg_mask"][0])
    assert 1 <= fg.sum() <= 18 and (np.asarray(t["cls_targets"][0])[fg] == 2).all()
    with pytest.raises(ValueError, match="unknown assigner"):
        detection_targets(anchors, boxes, np.array([[2, 0]]), np.array([[True, False]]), assigner="nearest")
