"""Losses against torchvision reference values (ops.npz focal loss, retinanet_io.npz RetinaNet loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path

from jaxcv.losses import (
    giou_loss,
    l1_loss,
    retinanet_loss,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    smooth_l1_loss,
    softmax_cross_entropy,
)
from jaxcv.ops import BoxCoder, detection_targets, generalized_box_iou, generate_anchors


@pytest.fixture(scope="module")
def retina():
    with np.load(fixture_path("retinanet_io.npz")) as d:
        keys = (
            "cls_logits",
            "bbox_regression",
            "anchors",
            "gt_boxes",
            "gt_labels",
            "loss_classification",
            "loss_bbox_regression",
        )
        return {k: d[k] for k in keys}


def _padded(retina, n_images=1, G=10, empty=()):
    """Fixture target padded to G with garbage boxes under mask False; images in `empty` have no gt."""
    rng = np.random.default_rng(0)
    gb = rng.uniform(0, 300, (n_images, G, 4)).astype(np.float32)
    gb[..., 2:] += gb[..., :2] + 5
    gl = rng.integers(0, 91, (n_images, G)).astype(np.int32)
    m = np.zeros((n_images, G), bool)
    for i in range(n_images):
        if i not in empty:
            gb[i, 2:7], gl[i, 2:7], m[i, 2:7] = retina["gt_boxes"], retina["gt_labels"], True
    return gb, gl, m


def test_focal_loss_equals_torchvision():
    with np.load(fixture_path("ops.npz")) as d:
        x, t = d["focal_logits"], d["focal_targets"]
        np.testing.assert_allclose(sigmoid_focal_loss(x, t, 0.25, 2.0), d["focal_a025_g2"], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(sigmoid_focal_loss(x, t, 0.5, 1.0), d["focal_a050_g1"], atol=1e-5, rtol=1e-5)
    # alpha < 0 disables the alpha weighting: BCE * (1 - p_t)^gamma.
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    np.testing.assert_allclose(sigmoid_focal_loss(x, t, -1.0, 2.0), bce * (1 - p_t) ** 2, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(sigmoid_binary_cross_entropy(x, t), bce, atol=1e-5, rtol=1e-4)


def test_retinanet_loss_equals_torchvision(retina):
    gb, gl, m = _padded(retina)
    out = jax.jit(retinanet_loss)(retina["cls_logits"], retina["bbox_regression"], retina["anchors"], gb, gl, m)
    np.testing.assert_allclose(out["classification"], retina["loss_classification"], rtol=1e-5)
    np.testing.assert_allclose(out["box_regression"], retina["loss_bbox_regression"], rtol=1e-5)


def test_retinanet_loss_normalizers_and_empty_image(retina):
    """Batch [fixture image, same head outputs without gt]: per_image averages the two per-image values;
    global divides batch sums by the batch foreground count. The empty image is all background."""
    cls = np.concatenate([retina["cls_logits"]] * 2)
    reg = np.concatenate([retina["bbox_regression"]] * 2)
    gb, gl, m = _padded(retina, 2, empty=(1,))
    f = jax.jit(retinanet_loss, static_argnames=("normalizer",))
    per_image = f(cls, reg, retina["anchors"], gb, gl, m, normalizer="per_image")
    glob = f(cls, reg, retina["anchors"], gb, gl, m, normalizer="global")
    empty_cls = float(np.sum(sigmoid_focal_loss(retina["cls_logits"][0], np.zeros_like(retina["cls_logits"][0]))))
    num_fg = int(detection_targets(retina["anchors"], gb[:1], gl[:1], m[:1])["fg_mask"].sum())
    l_cls, l_box = float(retina["loss_classification"]), float(retina["loss_bbox_regression"])
    np.testing.assert_allclose(per_image["classification"], (l_cls + empty_cls) / 2, rtol=1e-5)
    np.testing.assert_allclose(per_image["box_regression"], l_box / 2, rtol=1e-5)
    np.testing.assert_allclose(glob["classification"], (l_cls * num_fg + empty_cls) / num_fg, rtol=1e-5)
    np.testing.assert_allclose(glob["box_regression"], l_box, rtol=1e-5)
    # Only empty images: zero box loss, finite classification.
    none = f(cls, reg, retina["anchors"], gb, gl, np.zeros_like(m))
    assert float(none["box_regression"]) == 0.0
    np.testing.assert_allclose(none["classification"], empty_cls, rtol=1e-5)


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_retinanet_box_loss_variants(retina, box_loss):
    """smooth L1 (beta 1/9) on encoded boxes / GIoU on decoded boxes over foreground anchors, written
    out in numpy from the matched targets (matching itself is checked against torchvision elsewhere)."""
    gb, gl, m = _padded(retina)
    anchors, reg = retina["anchors"], retina["bbox_regression"][0]
    t = {k: np.asarray(v)[0] for k, v in detection_targets(anchors, gb, gl, m).items()}
    fg = t["fg_mask"]
    coder = BoxCoder()
    if box_loss == "smooth_l1":
        d = np.abs(reg[fg] - t["box_targets"][fg]).astype(np.float64)
        expect = np.where(d < 1 / 9, 0.5 * d**2 * 9, d - 0.5 / 9).sum() / fg.sum()
    else:
        pred = np.asarray(coder.decode(reg[fg], anchors[fg]))
        target = np.asarray(coder.decode(t["box_targets"][fg], anchors[fg]))
        expect = np.sum(1 - np.diagonal(np.asarray(generalized_box_iou(pred, target)))) / fg.sum()
    out = retinanet_loss(retina["cls_logits"], retina["bbox_regression"], anchors, gb, gl, m, box_loss=box_loss)
    np.testing.assert_allclose(out["box_regression"], expect, rtol=1e-4)
    np.testing.assert_allclose(out["classification"], retina["loss_classification"], rtol=1e-5)


@pytest.mark.parametrize("box_loss", ["l1", "smooth_l1", "giou"])
def test_retinanet_loss_gradients_finite(box_loss):
    anchors, _ = generate_anchors((64, 64))
    rng = np.random.default_rng(0)
    cls = jnp.asarray(rng.normal(0, 3, (2, len(anchors), 5)), jnp.float32)
    reg = jnp.asarray(rng.normal(0, 2, (2, len(anchors), 4)), jnp.float32)
    gb = np.array([[[4, 4, 30, 40], [30, 10, 60, 30], [0, 0, 0, 0]], [[0, 0, 0, 0]] * 3], np.float32)
    gl = np.array([[1, 4, 0], [0, 0, 0]], np.int32)
    m = np.array([[True, True, False], [False, False, False]])

    def total(c, r):
        out = retinanet_loss(c, r, anchors, gb, gl, m, box_loss=box_loss)
        return out["classification"] + out["box_regression"]

    value, (gc, gr) = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(cls, reg)
    assert np.isfinite(value) and np.isfinite(gc).all() and np.isfinite(gr).all()
    assert np.abs(gr[0]).sum() > 0 and np.all(np.asarray(gr[1]) == 0)  # no box gradient without gt


def test_elementwise_losses():
    p = np.array([0.0, 0.05, -0.5, 3.0], np.float32)
    np.testing.assert_allclose(l1_loss(p, 0.0), np.abs(p))
    np.testing.assert_allclose(smooth_l1_loss(p, 0.0, beta=1.0), [0, 0.00125, 0.125, 2.5], rtol=1e-5)
    np.testing.assert_allclose(smooth_l1_loss(p, 0.0, beta=0.0), np.abs(p))
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 2, 2]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [8, 8, 10, 10]], np.float32)
    expect = 1 - np.diagonal(np.asarray(generalized_box_iou(a, b)))
    np.testing.assert_allclose(giou_loss(a, b), expect, atol=1e-6)
    np.testing.assert_allclose(giou_loss(a, b)[:2], [0, 1 - 1 / 3], atol=1e-6)


def test_softmax_cross_entropy_label_smoothing():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 5)).astype(np.float32)
    labels = np.array([0, 1, 4, 2, 3, 1])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(softmax_cross_entropy(logits, labels), -logp[np.arange(6), labels], rtol=1e-5)
    # torch CrossEntropyLoss(label_smoothing=e): target (1 - e) * one_hot + e / K.
    target = 0.9 * np.eye(5)[labels] + 0.1 / 5
    np.testing.assert_allclose(softmax_cross_entropy(logits, labels, 0.1), -(target * logp).sum(-1), rtol=1e-5)
