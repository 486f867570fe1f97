"""Segmentation losses: numpy references, ignore handling, perfect/disjoint Dice, finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv.losses import (
    binary_ce_dice_loss,
    binary_dice_loss,
    binary_segmentation_cross_entropy,
    segmentation_cross_entropy,
    soft_dice_loss,
)

K = 4
IGN = 255


def _batch(seed: int = 0, shape=(2, 8, 8), k: int = K, ignore_frac: float = 0.2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, shape + (k,)).astype(np.float32)
    labels = rng.integers(0, k, shape).astype(np.int32)
    labels[rng.random(shape) < ignore_frac] = IGN
    return logits, labels


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_ce(logits, labels, weights=None):
    """torch CrossEntropyLoss(weight, ignore_index, reduction='mean') written out in numpy."""
    lp = _np_log_softmax(logits).reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    keep = y != IGN
    nll = -lp[keep, y[keep]]
    w = np.ones(logits.shape[-1]) if weights is None else np.asarray(weights, np.float64)
    wy = w[y[keep]]
    return (wy * nll).sum() / wy.sum()


def _np_dice(logits, labels, k, smooth, present_only):
    p = np.exp(_np_log_softmax(logits))
    valid = labels != IGN
    losses, present = [], []
    for c in range(k):
        pc = p[..., c][valid]
        tc = (labels[valid] == c).astype(np.float64)
        d = (2 * (pc * tc).sum() + smooth) / (pc.sum() + tc.sum() + smooth)
        losses.append(1 - d)
        present.append(tc.sum() > 0)
    losses, present = np.array(losses), np.array(present)
    return losses[present].mean() if present_only else losses.mean()


def test_ce_matches_numpy_reference_with_ignore():
    logits, labels = _batch(0)
    got = segmentation_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), ignore_index=IGN)
    np.testing.assert_allclose(float(got), _np_ce(logits, labels), rtol=1e-5)


def test_ce_matches_numpy_reference_with_class_weights():
    logits, labels = _batch(1)
    w = np.array([0.2, 1.0, 3.0, 0.5], np.float32)
    got = segmentation_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), IGN, class_weights=w)
    np.testing.assert_allclose(float(got), _np_ce(logits, labels, w), rtol=1e-5)
    # The weighted mean differs from the plain one, so the weights are really used.
    assert abs(float(got) - _np_ce(logits, labels)) > 1e-3


def test_ce_ignored_pixels_have_no_effect_and_no_gradient():
    logits, labels = _batch(2)
    ign = labels == IGN
    assert ign.any()
    changed = logits.copy()
    changed[ign] += 100.0
    a = segmentation_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    b = segmentation_cross_entropy(jnp.asarray(changed), jnp.asarray(labels))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    g = jax.grad(segmentation_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
    assert np.all(np.asarray(g)[ign] == 0)
    assert np.any(np.asarray(g)[~ign] != 0)


def test_ce_uint8_labels_and_all_ignored():
    logits, labels = _batch(3)
    got = segmentation_cross_entropy(jnp.asarray(logits), jnp.asarray(labels.astype(np.uint8)))
    np.testing.assert_allclose(float(got), _np_ce(logits, labels), rtol=1e-5)
    all_ign = np.full_like(labels, IGN)
    val, g = jax.value_and_grad(segmentation_cross_entropy)(jnp.asarray(logits), jnp.asarray(all_ign))
    assert float(val) == 0.0 and np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("present_only", [True, False])
def test_dice_matches_numpy_reference(present_only):
    logits, labels = _batch(4)
    labels[labels == 3] = 0  # class 3 absent from the target
    got = soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels), K, IGN, 1.0, present_only)
    np.testing.assert_allclose(float(got), _np_dice(logits, labels, K, 1.0, present_only), rtol=1e-5)


def test_dice_perfect_prediction_is_zero_and_disjoint_is_one():
    _, labels = _batch(5, shape=(2, 16, 16), ignore_frac=0.0)
    perfect = 50.0 * jax.nn.one_hot(labels, K)
    assert float(soft_dice_loss(perfect, jnp.asarray(labels), K)) < 1e-4
    # Predict class (y + 1) % K everywhere: every predicted mask is disjoint from its target mask.
    wrong = 50.0 * jax.nn.one_hot((labels + 1) % K, K)
    assert float(soft_dice_loss(wrong, jnp.asarray(labels), K)) > 0.99
    # Two-class disjoint halves, as in the brief: target left half, prediction right half.
    lab = np.zeros((1, 16, 16), np.int32)
    lab[..., :8] = 1
    pred = 50.0 * jax.nn.one_hot(1 - lab, 2)
    assert float(soft_dice_loss(pred, jnp.asarray(lab), 2)) > 0.99


def test_dice_gradient_finite_when_class_absent():
    logits, labels = _batch(6)
    labels[(labels == 1) | (labels == 2)] = 0  # only classes 0 and 3 present
    for present_only in (True, False):
        fn = lambda lg, p=present_only: soft_dice_loss(lg, jnp.asarray(labels), K, classes_present_only=p)
        g = np.asarray(jax.grad(fn)(jnp.asarray(logits)))
        assert np.all(np.isfinite(g)) and np.any(g != 0)
    # smooth=0, very confident logits and an absent class: still finite.
    fn0 = lambda lg: soft_dice_loss(lg, jnp.asarray(labels), K, smooth=0.0)
    g0 = np.asarray(jax.grad(fn0)(jnp.asarray(logits) * 100.0))
    assert np.all(np.isfinite(g0))
    # Everything ignored: value 0, finite gradient.
    all_ign = jnp.full(labels.shape, IGN)
    v, g = jax.value_and_grad(lambda lg: soft_dice_loss(lg, all_ign, K))(jnp.asarray(logits))
    assert float(v) == 0.0 and np.all(np.isfinite(np.asarray(g)))


def test_dice_jits_with_static_num_classes():
    logits, labels = _batch(7)
    f = jax.jit(soft_dice_loss, static_argnames=("num_classes",))
    np.testing.assert_allclose(
        float(f(jnp.asarray(logits), jnp.asarray(labels), num_classes=K)),
        _np_dice(logits, labels, K, 1.0, True),
        rtol=1e-5,
    )


def _np_bce(x, y, pos_weight=1.0):
    x, valid = x.astype(np.float64), y != IGN
    x, t = x[valid], (y[valid] == 1).astype(np.float64)
    logp, log1mp = -np.logaddexp(0, -x), -np.logaddexp(0, x)
    return (-(pos_weight * t * logp + (1 - t) * log1mp)).mean()


def test_binary_bce_matches_numpy_reference():
    rng = np.random.default_rng(9)
    x = rng.normal(0, 3, (2, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, (2, 8, 8)).astype(np.int32)
    y[rng.random(y.shape) < 0.25] = IGN
    got = binary_segmentation_cross_entropy(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(got), _np_bce(x, y), rtol=1e-5)
    got_pw = binary_segmentation_cross_entropy(jnp.asarray(x)[..., None], jnp.asarray(y), pos_weight=2.5)
    np.testing.assert_allclose(float(got_pw), _np_bce(x, y, 2.5), rtol=1e-5)
    g = np.asarray(jax.grad(binary_segmentation_cross_entropy)(jnp.asarray(x), jnp.asarray(y)))
    assert np.all(g[y == IGN] == 0) and np.all(np.isfinite(g))


def test_binary_dice_perfect_disjoint_and_empty():
    y = np.zeros((2, 16, 16), np.int32)
    y[:, 4:10, 3:12] = 1
    y[:, 0, :] = IGN
    yj = jnp.asarray(y)
    perfect = jnp.where(yj == 1, 50.0, -50.0)
    assert float(binary_dice_loss(perfect, yj)) < 1e-4
    assert float(binary_dice_loss(-perfect, yj)) > 0.99
    # Prediction only on ignored pixels counts for nothing.
    on_ignored = jnp.where(yj == IGN, 50.0, perfect)
    assert float(binary_dice_loss(on_ignored, yj)) < 1e-4
    # Empty target predicted empty: 0 with smooth; gradient finite.
    empty = jnp.zeros_like(yj)
    v, g = jax.value_and_grad(lambda lg: binary_dice_loss(lg, empty))(jnp.full(y.shape, -50.0))
    assert float(v) < 1e-6 and np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(ValueError):
        binary_dice_loss(jnp.zeros((2, 16, 16, 2)), yj)


def test_binary_ce_dice_is_weighted_sum():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(0, 2, (1, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 2, (1, 8, 8)).astype(np.int32))
    got = binary_ce_dice_loss(x, y, ce_weight=0.5, dice_weight=3.0)
    want = 0.5 * binary_segmentation_cross_entropy(x, y) + 3.0 * binary_dice_loss(x, y)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
