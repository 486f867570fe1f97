"""Box ops, anchors, matching and NMS against torchvision reference fixtures (ops.npz, retinanet_io.npz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path

from jaxcv.ops import (
    AnchorConfig,
    BoxCoder,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    detection_targets,
    feature_sizes,
    generalized_box_iou,
    generate_anchors,
    grid_anchors,
    match_anchors,
    nms,
    xyxy_to_cxcywh,
)


@pytest.fixture(scope="module")
def ops():
    return dict(np.load(fixture_path("ops.npz")))


@pytest.fixture(scope="module")
def retina():
    with np.load(fixture_path("retinanet_io.npz")) as d:
        return {k: d[k] for k in ("anchors", "num_anchors_per_level")}


# ---------------------------------------------------------------------------------------------- boxes


def test_box_iou_giou_match_torchvision(ops):
    np.testing.assert_allclose(box_iou(ops["iou_a"], ops["iou_b"]), ops["box_iou"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        generalized_box_iou(ops["iou_a"], ops["iou_b"]), ops["generalized_box_iou"], atol=1e-5, rtol=0
    )
    # Leading batch dims broadcast.
    a = np.stack([ops["iou_a"], ops["iou_a"][::-1]])
    batched = np.asarray(box_iou(a, ops["iou_b"][None]))
    np.testing.assert_allclose(batched[1], ops["box_iou"][::-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights,suffix", [((1.0, 1.0, 1.0, 1.0), "w1"), ((10.0, 10.0, 5.0, 5.0), "w10_5")])
def test_box_coder_matches_torchvision(ops, weights, suffix):
    coder = BoxCoder(weights=weights)
    enc = coder.encode(ops["coder_ref"], ops["coder_prop"])
    np.testing.assert_allclose(enc, ops[f"encode_{suffix}"], atol=1e-5, rtol=1e-5)
    dec = coder.decode(ops["decode_codes"], ops["coder_prop"])
    np.testing.assert_allclose(dec, ops[f"decode_{suffix}"], atol=1e-5, rtol=1e-5)
    # decode inverts encode.
    np.testing.assert_allclose(coder.decode(enc, ops["coder_prop"]), ops["coder_ref"], atol=1e-3, rtol=1e-5)


def test_box_coder_clamps_dw_dh():
    anchors = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    big = BoxCoder().decode(np.array([[0.0, 0.0, 50.0, 50.0]], np.float32), anchors)
    np.testing.assert_allclose(np.asarray(big)[0, 2] - np.asarray(big)[0, 0], 10 * 1000 / 16, rtol=1e-5)


def test_conversions_area_clip():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (3, 7, 2)).astype(np.float32)
    b = np.concatenate([xy, xy + rng.uniform(1, 30, (3, 7, 2)).astype(np.float32)], -1)
    c = np.asarray(xyxy_to_cxcywh(b))
    np.testing.assert_allclose(c[..., 2] * c[..., 3], box_area(b), rtol=1e-6)
    np.testing.assert_allclose(cxcywh_to_xyxy(c), b, atol=1e-5)
    clipped = np.asarray(clip_boxes(b, 40, 30))
    assert clipped[..., 0::2].max() <= 30 and clipped[..., 1::2].max() <= 40 and clipped.min() >= 0
    np.testing.assert_allclose(clip_boxes(np.array([-5.0, -1, 70, 20]), 10, 60), [0, 0, 60, 10])


# -------------------------------------------------------------------------------------------- anchors


def test_anchors_equal_torchvision(retina):
    anchors, counts = generate_anchors((320, 448), AnchorConfig())
    assert counts == retina["num_anchors_per_level"].tolist()
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, retina["anchors"])


def test_feature_sizes_conv_arithmetic():
    assert feature_sizes((320, 448), (3, 4, 5, 6, 7)) == [(40, 56), (20, 28), (10, 14), (5, 7), (3, 4)]
    # Odd sizes halve with ceil at every stride-2 conv.
    assert feature_sizes((100, 75), (1, 2, 3)) == [(50, 38), (25, 19), (13, 10)]


def test_tf_model_garden_anchors():
    cfg = AnchorConfig(convention="tf_model_garden")
    anchors, counts = generate_anchors((64, 96), cfg)
    assert counts == [h * w * 9 for h, w in feature_sizes((64, 96), cfg.levels)]
    first = anchors[: counts[0]].reshape(8, 12, 9, 4)
    centres = (first[..., :2] + first[..., 2:]) / 2
    np.testing.assert_allclose(centres[2, 5, 0], [(5 + 0.5) * 8, (2 + 0.5) * 8], atol=1e-5)
    wh = first[0, 0, :, 2:] - first[0, 0, :, :2]
    # ratio-major, then scales; size = 4 * stride * scale, sqrt(w*h) preserved, h/w = ratio.
    np.testing.assert_allclose(np.sqrt(wh[:, 0] * wh[:, 1]), np.tile(32 * np.array(cfg.scales), 3), rtol=1e-5)
    np.testing.assert_allclose(wh[:, 1] / wh[:, 0], np.repeat(cfg.aspect_ratios, 3), rtol=1e-5)


def test_grid_anchors():
    anchors, counts = grid_anchors((64, 128))
    assert counts == [16 * 9, 4 * 9, 9] and anchors.shape == (189, 4)
    last = anchors[-9:]  # the 1x1 grid: centred on the image
    np.testing.assert_allclose((last[:, :2] + last[:, 2:]) / 2, np.tile([64.0, 32.0], (9, 1)), atol=1e-4)
    np.testing.assert_allclose(last[3], [0, 0, 128, 64], atol=1e-4)  # zoom 1, ratio 1 = whole cell
    wh = last[:, 2:] - last[:, :2]
    np.testing.assert_allclose((wh[:, 1] / 64) / (wh[:, 0] / 128), np.tile([1, 2, 0.5], 3), rtol=1e-5)
    # 4x4 grid, row-major: cell (row 1, col 2) centre.
    cell = anchors[: counts[0]].reshape(4, 4, 9, 4)[1, 2, 0]
    np.testing.assert_allclose((cell[:2] + cell[2:]) / 2, [2.5 * 32, 1.5 * 16], atol=1e-4)


# ------------------------------------------------------------------------------------------- matching


def test_match_anchors_equals_torchvision_with_padding(ops):
    """All three fixture cases in one padded batch (G=20, garbage in padded rows, gts placed at
    shifted slots) plus an empty image; indices map back exactly."""
    rng = np.random.default_rng(1)
    G = 20
    gt = rng.uniform(0, 300, (4, G, 4)).astype(np.float32)  # garbage that must be ignored
    gt[..., 2:] += gt[..., :2]
    mask = np.zeros((4, G), bool)
    offsets = [0, 3, 2]
    for i in range(3):
        g = ops[f"match{i}_gt"]
        gt[i, offsets[i] : offsets[i] + len(g)] = g
        mask[i, offsets[i] : offsets[i] + len(g)] = True
    got = np.asarray(jax.jit(match_anchors)(ops["anchors"], gt, mask))
    assert got.dtype == np.int32 and got.shape == (4, 3000)
    for i in range(3):
        ref = ops[f"match{i}_matched_idxs"]
        expect = np.where(ref >= 0, ref + offsets[i], ref)
        np.testing.assert_array_equal(got[i], expect)
    np.testing.assert_array_equal(got[3], -1)


def test_match_low_quality_ties_and_bands():
    """Hand-worked torchvision Matcher semantics. gt A=[0,0,10,10], B=[0,0,20,10].
    X and Z (identical) tie as A's best anchor (IoU 1/6) but their own best gt is B (IoU 1/3):
    low-quality matching resets both to B (index 1), as torchvision does. Y: IoU(B)=0.5 -> 1.
    V: IoU(B)=0.484 -> ignore (-2). W: no overlap -> -1."""
    gt = np.array([[[0, 0, 10, 10], [0, 0, 20, 10]]], np.float32)
    anchors = np.array([[0, 0, 30, 20], [10, 0, 20, 10], [0, 0, 30, 20], [50, 50, 60, 60], [8, 0, 20, 14]], np.float32)
    mask = np.ones((1, 2), bool)
    np.testing.assert_array_equal(match_anchors(anchors, gt, mask)[0], [1, 1, 1, -1, -2])
    np.testing.assert_array_equal(
        match_anchors(anchors, gt, mask, allow_low_quality_matches=False)[0], [-1, 1, -1, -1, -2]
    )
    # Masking A removes its low-quality matches; masking both empties the image.
    np.testing.assert_array_equal(match_anchors(anchors, gt, np.array([[False, True]]))[0], [-1, 1, -1, -1, -2])
    np.testing.assert_array_equal(match_anchors(anchors, gt, np.zeros((1, 2), bool))[0], -1)
    # Degenerate gt boxes never match (torchvision's RetinaNet rejects them).
    degenerate = np.array([[[5, 5, 5, 9], [0, 0, 20, 10]]], np.float32)
    np.testing.assert_array_equal(match_anchors(anchors, degenerate, mask)[0], [-1, 1, -1, -1, -2])


def test_detection_targets_content_and_single_compile(ops):
    anchors = ops["anchors"]
    G = 20
    traces = []

    def fn(gt_boxes, gt_labels, gt_mask):
        traces.append(1)
        return detection_targets(anchors, gt_boxes, gt_labels, gt_mask, BoxCoder((10.0, 10.0, 5.0, 5.0)))

    jfn = jax.jit(fn)
    for i in (2, 0, 1):
        g = ops[f"match{i}_gt"]
        gt = np.zeros((2, G, 4), np.float32)
        labels = np.zeros((2, G), np.int32)
        mask = np.zeros((2, G), bool)
        gt[0, : len(g)], labels[0, : len(g)], mask[0, : len(g)] = g, 7 + np.arange(len(g)), True
        t = {k: np.asarray(v) for k, v in jfn(gt, labels, mask).items()}
        ref = ops[f"match{i}_matched_idxs"]
        fg = ref >= 0
        np.testing.assert_array_equal(t["fg_mask"][0], fg)
        np.testing.assert_array_equal(t["valid_mask"][0], ref != -2)
        np.testing.assert_array_equal(t["cls_targets"][0], np.where(fg, 7 + ref, ref))
        enc = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(g[ref[fg]], anchors[fg])
        np.testing.assert_allclose(t["box_targets"][0][fg], enc, atol=1e-5)
        assert np.all(t["box_targets"][0][~fg] == 0) and np.isfinite(t["box_targets"]).all()
        # The empty second image: all background.
        np.testing.assert_array_equal(t["cls_targets"][1], -1)
        assert not t["fg_mask"][1].any() and t["valid_mask"][1].all()
    assert len(traces) == 1 and jfn._cache_size() == 1


# ------------------------------------------------------------------------------------------------ nms


def _kept(keep, valid):
    keep, valid = np.asarray(keep), np.asarray(valid)
    assert not valid[np.argmin(valid) :].any() or valid.all(), "valid slots must be a prefix"
    return keep[valid]


@pytest.mark.parametrize("thr,key", [(0.5, "nms_keep_0_5"), (0.3, "nms_keep_0_3")])
def test_nms_equals_torchvision(ops, thr, key):
    f = jax.jit(nms, static_argnames=("iou_threshold", "max_output"))
    keep = _kept(*f(ops["nms_boxes"], ops["nms_scores"], iou_threshold=thr, max_output=2000))
    np.testing.assert_array_equal(keep, ops[key])
    # A smaller max_output is the prefix.
    keep50 = _kept(*f(ops["nms_boxes"], ops["nms_scores"], iou_threshold=thr, max_output=50))
    np.testing.assert_array_equal(keep50, ops[key][:50])


def test_batched_nms_equals_torchvision(ops):
    f = jax.jit(batched_nms, static_argnames=("iou_threshold", "max_output"))
    keep = _kept(*f(ops["nms_boxes"], ops["nms_scores"], ops["nms_classes"], iou_threshold=0.5, max_output=2000))
    np.testing.assert_array_equal(keep, ops["batched_nms_keep_0_5"])


def test_nms_valid_mask_ties_and_vmap(ops):
    boxes, scores = ops["nms_boxes"][:300], ops["nms_scores"][:300]
    valid = np.random.default_rng(2).uniform(size=300) < 0.6
    keep = _kept(*nms(boxes, scores, 0.5, 300, valid))
    sub = np.flatnonzero(valid)
    np.testing.assert_array_equal(keep, sub[_kept(*nms(boxes[sub], scores[sub], 0.5, 300))])
    # Equal scores: stable order (lower index first), like torchvision's stable descending sort.
    b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    s = np.array([0.5, 0.5, 0.5, 0.9], np.float32)
    np.testing.assert_array_equal(_kept(*nms(b, s, 0.5, 4)), [3, 2])
    np.testing.assert_array_equal(_kept(*nms(b[:3], s[:3], 0.5, 4)), [0, 2])
    # IoU exactly at the threshold is not suppressed (strict >).
    half = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], np.float32)
    np.testing.assert_array_equal(_kept(*nms(half, np.array([0.9, 0.8], np.float32), 0.5, 2)), [0, 1])
    # vmapped over a batch.
    kb, vb = jax.vmap(lambda bb, ss: nms(bb, ss, 0.5, 10))(np.stack([b, b[::-1]]), np.stack([s, s[::-1]]))
    np.testing.assert_array_equal(_kept(kb[0], vb[0]), [3, 2])
    np.testing.assert_array_equal(_kept(kb[1], vb[1]), [0, 1])
    # Nothing valid.
    _, v = nms(b, s, 0.5, 3, np.zeros(4, bool))
    assert not np.asarray(v).any()


def test_nms_random_against_reference():
    """Random clustered boxes against a plain greedy reference written from torchvision's kernel."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 200, (30, 2))
    xy = (centres[rng.integers(0, 30, 600)] + rng.normal(0, 6, (600, 2))).astype(np.float32)
    b = np.concatenate([xy, xy + rng.uniform(15, 40, (600, 2)).astype(np.float32)], 1)
    s = rng.uniform(size=600).astype(np.float32)
    order = np.argsort(-s, kind="stable")
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(600, bool)
    ref = []
    for i in order:
        if suppressed[i]:
            continue
        ref.append(i)
        wh = np.clip(np.minimum(b[i, 2:], b[:, 2:]) - np.maximum(b[i, :2], b[:, :2]), 0, None)
        inter = wh[:, 0] * wh[:, 1]
        suppressed |= inter / (area[i] + area - inter) > 0.45
    np.testing.assert_array_equal(_kept(*nms(b, s, 0.45, 600)), ref)
    assert len(ref) < 300
    assert jnp.issubdtype(nms(b, s, 0.45, 5)[0].dtype, jnp.integer)
