"""Segmentation and classification metrics against plain numpy / brute-force computations."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcv.evaluation import (
    ClassificationEvaluator,
    ConfusionMatrix,
    average_precision,
    confusion_matrix,
    multilabel_f1,
    multilabel_map,
    precision_recall_from_confusion,
    save_confusion_matrix,
    topk_accuracy,
)

# ---------------------------------------------------------------- segmentation


def _label_maps(seed: int, k: int = 6, shape=(3, 40, 48)):
    """Target uses classes 0..2 (+ ignore 255); prediction uses 0..3: class 3 only predicted, 4 and 5
    absent from both."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 3, shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, 4, shape))
    target = np.where(rng.random(shape) < 0.1, 255, target)
    return pred.astype(np.int32), target.astype(np.uint8), k


def _numpy_reference(pred: np.ndarray, target: np.ndarray, k: int) -> dict:
    valid = target != 255
    iou, dice, acc = [], [], []
    for c in range(k):
        p, t = (pred == c) & valid, (target == c) & valid
        inter, union = np.sum(p & t), np.sum(p | t)
        iou.append(inter / union if union else np.nan)
        dice.append(2 * inter / (p.sum() + t.sum()) if union else np.nan)
        acc.append(inter / t.sum() if t.sum() else np.nan)
    return {
        "per_class_iou": np.array(iou),
        "mIoU": np.nanmean(iou),
        "per_class_dice": np.array(dice),
        "mean_dice": np.nanmean(dice),
        "per_class_accuracy": np.array(acc),
        "mean_accuracy": np.nanmean(acc),
        "pixel_accuracy": np.sum((pred == target) & valid) / valid.sum(),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_metrics_match_numpy(seed: int) -> None:
    pred, target, k = _label_maps(seed)
    cm = ConfusionMatrix(k)
    for b in range(pred.shape[0]):  # accumulated batch by batch, compared on the whole set
        cm.update(pred[b], target[b])
    out = cm.compute()
    ref = _numpy_reference(pred, target, k)
    for key, val in ref.items():
        np.testing.assert_allclose(out[key], val, rtol=1e-12, equal_nan=True, err_msg=key)
    assert np.isnan(out["per_class_iou"][4:]).all() and np.isnan(out["per_class_dice"][4:]).all()
    assert out["per_class_iou"][3] == 0.0  # only predicted: present, IoU 0, counted in the mean
    assert out["confusion_matrix"].sum() == np.sum(target != 255)
    # Averaging per-batch mIoU would be a different number; ours is the whole-set one by construction.
    per_batch = np.mean([_numpy_reference(pred[b], target[b], k)["mIoU"] for b in range(pred.shape[0])])
    assert abs(per_batch - out["mIoU"]) > 1e-9


def test_jitted_confusion_matrix_matches_host() -> None:
    pred, target, k = _label_maps(3)
    valid = np.ones(target.shape, bool)
    valid[:, :, -8:] = False  # e.g. padding
    f = jax.jit(confusion_matrix, static_argnums=2)
    dev = np.asarray(f(pred, target, k, valid))
    assert dev.dtype == np.int32
    host = ConfusionMatrix(k)
    host.update(pred, target, valid)
    np.testing.assert_array_equal(dev, host.matrix)
    acc = ConfusionMatrix(k)
    for b in range(pred.shape[0]):
        acc.update_matrix(f(pred[b], target[b], k, valid[b]))
    np.testing.assert_array_equal(acc.matrix, host.matrix)


def test_void_class_and_bad_labels() -> None:
    target = np.array([[0, 1, 2, 2]])  # class 2 = void
    pred = np.array([[0, 2, 1, 0]])  # void predicted on a class-1 pixel: a miss
    cm = ConfusionMatrix(3, void_class=2)
    cm.update(pred, target)
    out = cm.compute()
    assert out["pixel_accuracy"] == 0.5  # 2 evaluated pixels, 1 right
    np.testing.assert_allclose(out["per_class_iou"], [1.0, 0.0, np.nan])
    assert out["mIoU"] == 0.5
    with pytest.raises(ValueError, match="target values"):
        ConfusionMatrix(3).update(np.zeros(2, int), np.array([1, 7]))
    with pytest.raises(ValueError, match="pred values"):
        ConfusionMatrix(3).update(np.array([0, 3]), np.zeros(2, int))


# ---------------------------------------------------------------- classification


def test_topk_accuracy() -> None:
    logits = np.array([[0.1, 0.9, 0.0, 0.3, 0.2, 0.25], [1.0, 0.0, 0.5, 0.4, 0.3, 0.2], [0, 0, 0, 0, 0, 1.0]])
    labels = np.array([1, 1, 2])
    # sample 0: top-1 hit; sample 1: label 1 ranked last; sample 2: label 2 ties with 0, 1, 3, 4 after
    # class 5 -> 0-based rank 3 (ties in index order): in the top 5, not the top 3.
    out = topk_accuracy(logits, labels, ks=(1, 3, 5, 10))
    assert out == {"top1": pytest.approx(1 / 3), "top3": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 10)), rng.integers(0, 10, 200)
    brute = np.mean([labels[i] in np.argsort(-logits[i])[:5] for i in range(200)])
    assert topk_accuracy(logits, labels)["top5"] == pytest.approx(brute)
    ev = ClassificationEvaluator(10)
    for s in range(0, 200, 64):
        ev.update(logits[s : s + 64], labels[s : s + 64])
    res = ev.compute()
    assert res["count"] == 200
    assert res["top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert res["top5"] == pytest.approx(brute)
    assert res["accuracy"] == pytest.approx(res["top1"])


def test_precision_recall_and_saved_matrix(tmp_path) -> None:
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2 never present nor predicted
    pr = precision_recall_from_confusion(cm)
    np.testing.assert_allclose(pr["precision"], [5 / 7, 3 / 4, np.nan])
    np.testing.assert_allclose(pr["recall"], [5 / 6, 3 / 5, np.nan])
    assert pr["macro_recall"] == pytest.approx((5 / 6 + 3 / 5) / 2)
    assert pr["accuracy"] == pytest.approx(8 / 11)
    png, js = tmp_path / "cm.png", tmp_path / "cm.json"
    save_confusion_matrix(cm, ["cat", "dog", "fox"], png, js)
    with Image.open(png) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    data = json.loads(js.read_text())
    assert data["matrix"] == cm.tolist() and data["class_names"] == ["cat", "dog", "fox"]
    assert data["precision"][2] is None and data["recall"][0] == pytest.approx(5 / 6)


def _brute_ap(scores: np.ndarray, y: np.ndarray) -> float:
    """AP = sum over distinct thresholds t (descending) of (R(t) - R(prev)) * P(t), P/R at score >= t."""
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        tp = np.sum(y & sel)
        r, p = tp / y.sum(), tp / sel.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def test_average_precision() -> None:
    # sklearn's documented example: 0.8333...
    assert average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(5 / 6)
    rng = np.random.default_rng(1)
    for _ in range(5):
        s = np.round(rng.random(60), 1)  # many ties
        y = rng.random(60) < 0.3
        assert average_precision(s, y) == pytest.approx(_brute_ap(s, y), abs=1e-12)
    assert np.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_multilabel_f1_and_map() -> None:
    probs = np.array([[0.9, 0.2, 0.5], [0.6, 0.7, 0.1], [0.1, 0.8, 0.4], [0.3, 0.1, 0.2]])
    targets = np.array([[1, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    out = multilabel_f1(probs, targets)
    # class 0: TP 1 (row 0), FP 1 (row 1), FN 1 (row 3) -> 2/4; class 1: TP 2 -> 1;
    # class 2: 0.5 is not > 0.5 -> TP 0 -> 0
    np.testing.assert_allclose(out["per_class_f1"], [0.5, 1.0, 0.0])
    assert out["macro_f1"] == pytest.approx(0.5)
    assert out["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(50, 4))
    targets = rng.random((50, 4)) < 0.4
    targets[:, 3] = False  # no positives: left out of mAP
    m = multilabel_map(scores, targets)
    ref = [_brute_ap(scores[:, c], targets[:, c]) for c in range(3)]
    np.testing.assert_allclose(m["per_class_ap"][:3], ref, atol=1e-12)
    assert np.isnan(m["per_class_ap"][3]) and m["mAP"] == pytest.approx(np.mean(ref))
    ev = ClassificationEvaluator(4, multilabel=True)
    ev.update(scores[:20], targets[:20])
    ev.update(scores[20:], targets[20:])
    res = ev.compute()
    assert res["mAP"] == pytest.approx(m["mAP"])
    f1 = multilabel_f1(1 / (1 + np.exp(-scores)), targets)
    np.testing.assert_allclose(res["per_class_f1"], f1["per_class_f1"])
