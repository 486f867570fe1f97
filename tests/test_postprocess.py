"""RetinaNet post-processing against torchvision `postprocess_detections` (retinanet_io.npz)."""

import jax
import numpy as np
import pytest
from conftest import fixture_path

from jaxcv.ops import retinanet_postprocess


@pytest.fixture(scope="module")
def retina():
    with np.load(fixture_path("retinanet_io.npz")) as d:
        keys = (
            "cls_logits",
            "bbox_regression",
            "anchors",
            "num_anchors_per_level",
            "det_boxes",
            "det_scores",
            "det_labels",
        )
        return {k: d[k] for k in keys}


def _run(r, cls, reg, **kw):
    out = retinanet_postprocess(cls, reg, r["anchors"], r["num_anchors_per_level"].tolist(), (320, 448), **kw)
    return {k: np.asarray(v) for k, v in out.items()}


def test_postprocess_equals_torchvision(retina):
    """Batch of 2: the fixture image and the same image with a high threshold (0.5), which must give
    exactly the fixture detections whose score > 0.5 (low-score boxes cannot change greedy NMS above)."""
    cls = np.concatenate([retina["cls_logits"], retina["cls_logits"]])
    reg = np.concatenate([retina["bbox_regression"], retina["bbox_regression"]])
    out = _run(retina, cls, reg, score_thresh=0.0, topk_candidates=1000, nms_thresh=0.5, detections_per_img=100)
    assert out["boxes"].shape == (2, 100, 4) and out["labels"].dtype == np.int32
    assert out["valid"][0].all()
    np.testing.assert_array_equal(out["labels"][0], retina["det_labels"])
    np.testing.assert_allclose(out["scores"][0], retina["det_scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["boxes"][0], retina["det_boxes"], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(out["labels"][1], out["labels"][0])

    high = _run(retina, cls[:1], reg[:1], score_thresh=0.5)
    sel = retina["det_scores"] > 0.5
    n = int(sel.sum())
    assert 0 < n < 100 and high["valid"][0].sum() == n and high["valid"][0][:n].all()
    np.testing.assert_array_equal(high["labels"][0][:n], retina["det_labels"][sel])
    np.testing.assert_allclose(high["boxes"][0][:n], retina["det_boxes"][sel], rtol=1e-4, atol=1e-3)
    assert np.all(high["scores"][0][n:] == 0) and np.all(high["boxes"][0][n:] == 0)


def test_postprocess_inside_jit_small():
    """Synthetic 2-level case inside an outer jit: clipping, class-wise NMS and the top-k per level."""
    anchors = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [-5, -5, 5, 5], [20, 20, 40, 40]], np.float32)
    logits = np.full((1, 4, 3), -10.0, np.float32)
    logits[0, 0, 1] = 3.0  # kept
    logits[0, 1, 1] = 2.0  # same class, IoU 0.68 with anchor 0 -> suppressed
    logits[0, 1, 2] = 1.0  # other class -> kept
    logits[0, 2, 0] = 0.5  # clipped to [0, 0, 5, 5]
    logits[0, 3, 0] = 4.0  # level 2, best
    reg = np.zeros((1, 4, 4), np.float32)

    @jax.jit
    def f(cls, box):
        return retinanet_postprocess(
            cls, box, anchors, (3, 1), (32, 32), score_thresh=0.3, topk_candidates=2, detections_per_img=5
        )

    out = {k: np.asarray(v)[0] for k, v in f(logits, reg).items()}
    # topk_candidates=2 on level 1 keeps only (anchor0, cls1) and (anchor1, cls1); the latter is suppressed.
    np.testing.assert_array_equal(out["valid"], [True, True, False, False, False])
    np.testing.assert_array_equal(out["labels"][:2], [0, 1])
    np.testing.assert_allclose(out["boxes"][:2], [[20, 20, 32, 32], [0, 0, 10, 10]])
    np.testing.assert_allclose(out["scores"][:2], 1 / (1 + np.exp([-4.0, -3.0])), rtol=1e-6)
    out3 = {
        k: np.asarray(v)[0]
        for k, v in jax.jit(
            lambda c, b: retinanet_postprocess(
                c, b, anchors, (3, 1), (32, 32), score_thresh=0.3, topk_candidates=9, detections_per_img=5
            )
        )(logits, reg).items()
    }
    np.testing.assert_array_equal(out3["labels"][:4], [0, 1, 2, 0])
    np.testing.assert_allclose(out3["boxes"][3], [0, 0, 5, 5])
    assert out3["valid"].sum() == 4
