"""coco_evaluate against pycocotools COCOeval (the oracle) on randomized and hand-made cases."""

import contextlib
import copy
import io
import time

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxcv.evaluation.coco import (
    STAT_NAMES,
    coco_evaluate,
    coco_evaluate_full,
    detections_to_coco_results,
)


def _pycoco(gt: dict, results: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _random_case(seed: int, integer_boxes: bool) -> tuple[dict, list[dict]]:
    """Crowd boxes, images without gt, a category without gt, one without detections, one unknown
    category in results, >100 detections on one image, tied scores, small/medium/large boxes."""
    rng = np.random.default_rng(seed)
    n_img = 20
    img_ids = rng.choice(np.arange(1, 1000), n_img, replace=False).tolist()
    cat_ids = [1, 3, 7, 10, 12]  # 10: no gt; 12: no detections
    images = [{"id": i, "width": 500, "height": 400} for i in img_ids]
    categories = [{"id": c, "name": f"c{c}"} for c in cat_ids]

    def rand_box() -> list[float]:
        kind = rng.integers(3)
        lo, hi = [(2, 30), (30, 100), (90, 300)][kind]
        w, h = rng.uniform(lo, hi, 2)
        x, y = rng.uniform(0, 500 - w), rng.uniform(0, 400 - h)
        b = [x, y, w, h]
        return [float(np.round(v)) for v in b] if integer_boxes else [float(v) for v in b]

    anns = []
    for im in img_ids[:-3]:  # the last 3 images have no gt
        for _ in range(rng.integers(0, 12)):
            cat = int(rng.choice([1, 3, 7, 12]))
            box = rand_box()
            area = box[2] * box[3] * float(rng.uniform(0.5, 1.0))  # like a mask area, not the box
            anns.append(
                {
                    "image_id": im,
                    "category_id": cat,
                    "bbox": box,
                    "area": area,
                    "iscrowd": int(rng.random() < 0.12),
                }
            )
    ann_ids = rng.permutation(len(anns) + 5)[: len(anns)]  # may include id 0 (pycocotools quirk)
    for a, i in zip(anns, ann_ids, strict=True):
        a["id"] = int(i)
    gt = {"images": images, "annotations": anns, "categories": categories}

    results = []

    def score(good: bool = False) -> float:
        s = 0.4 + 0.6 * rng.random() if good else 0.7 * rng.random()
        return float(np.round(s, 2)) if rng.random() < 0.5 else float(s)  # ties across the set

    for a in anns:
        if a["category_id"] == 12:
            continue
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, rng.choice([0.02, 0.06, 0.2]), 4) * np.array([w, h, w, h])
            b = [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)]
            if integer_boxes:
                b = [float(np.round(v)) for v in b]
            results.append(
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox": b,
                    "score": score(good=True),
                }
            )
    for _ in range(120):  # false positives everywhere, incl. images without gt and category 10
        results.append(
            {
                "image_id": int(rng.choice(img_ids)),
                "category_id": int(rng.choice([1, 3, 7, 10])),
                "bbox": rand_box(),
                "score": score(),
            }
        )
    crowded = img_ids[0]
    for _ in range(130):  # > 100 detections of one (image, category)
        results.append({"image_id": crowded, "category_id": 1, "bbox": rand_box(), "score": score()})
    results.append({"image_id": img_ids[1], "category_id": 99, "bbox": rand_box(), "score": 0.99})
    order = rng.permutation(len(results))
    return gt, [results[i] for i in order]


@pytest.mark.parametrize("seed,integer_boxes", [(0, False), (1, True), (2, False), (3, True), (4, False)])
def test_matches_pycocotools_random(seed: int, integer_boxes: bool) -> None:
    gt, results = _random_case(seed, integer_boxes)
    ev = _pycoco(gt, results)
    t0 = time.perf_counter()
    full = coco_evaluate_full(gt, results)
    elapsed = time.perf_counter() - t0
    ours = np.array([full.stats[k] for k in STAT_NAMES])
    np.testing.assert_allclose(ours, ev.stats, atol=1e-6, rtol=0)
    # Full accumulated tables too, not only their means.
    np.testing.assert_allclose(full.precision, ev.eval["precision"], atol=1e-12, rtol=0)
    np.testing.assert_allclose(full.recall, ev.eval["recall"], atol=1e-12, rtol=0)
    # Per-class AP from pycocotools' precision table (detectron2's recipe).
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        ref = np.mean(p[p > -1]) if (p > -1).any() else np.nan
        np.testing.assert_allclose(full.per_class[f"c{cat}"], ref, atol=1e-12)
    assert np.isnan(full.per_class["c10"])  # category without gt
    assert elapsed < 10.0


def test_hand_cases() -> None:
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 5, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            # Two gts at exactly the same IoU to one detection: the tie goes to the later gt.
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 5, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 1},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 2, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": 2, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": 2, "category_id": 5, "bbox": [5, 0, 10, 10], "score": 0.7},  # IoU 1/3: a FP
        {"image_id": 2, "category_id": 5, "bbox": [55, 55, 10, 10], "score": 0.95},  # inside the crowd
        {"image_id": 2, "category_id": 5, "bbox": [60, 60, 10, 10], "score": 0.94},  # crowd again
    ]
    stats = coco_evaluate(gt, results)
    ref = _pycoco(gt, results).stats
    np.testing.assert_allclose([stats[k] for k in STAT_NAMES], ref, atol=1e-6, rtol=0)
    # 3 TPs then a FP, crowd matches ignored: all recall points reached at precision 1.
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert stats["AR1"] == pytest.approx(1 / 3)  # image 2's top detection hits the crowd
    assert stats["APm"] == -1.0  # no medium gt (crowd is ignored)


def test_tie_threshold_and_id_zero_edges() -> None:
    """Exact IoU ties between gts (later gt wins), IoU exactly at thresholds 0.5 / 0.75 (>= matches),
    and pycocotools' quirk that a match to the gt with id 0 counts as unmatched."""
    ann = lambda i, img, box: {
        "id": i,
        "image_id": img,
        "category_id": 1,
        "bbox": box,  # noqa: E731
        "area": box[2] * box[3],
        "iscrowd": 0,
    }
    gt = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            ann(4, 1, [0, 0, 10, 10]),
            ann(5, 1, [2, 0, 10, 10]),
            ann(6, 2, [0, 0, 20, 20]),
            ann(7, 2, [100, 100, 20, 20]),
            ann(0, 3, [0, 0, 10, 10]),
        ],
    }
    res = lambda img, box, s: {"image_id": img, "category_id": 1, "bbox": box, "score": s}  # noqa: E731
    results = [
        res(1, [1, 0, 10, 10], 0.9),  # IoU 9/11 with both gts of image 1: takes the later one (id 5)
        res(1, [0, 0, 10, 10], 0.8),  # then IoU 1 with id 4; had id 4 been taken: IoU 2/3 with id 5
        res(2, [0, 0, 20, 10], 0.7),  # IoU exactly 0.5
        res(2, [100, 100, 20, 15], 0.6),  # IoU exactly 0.75
        res(3, [0, 0, 10, 10], 0.5),  # perfect hit on the gt with id 0
    ]
    stats = coco_evaluate(gt, results)
    np.testing.assert_allclose([stats[k] for k in STAT_NAMES], _pycoco(gt, results).stats, atol=1e-6, rtol=0)
    # Recall at each IoU threshold: 4 of 5 gts at 0.5 (the id-0 match does not count), 3 up to 0.75,
    # 2 at 0.8 (IoU 9/11 = 0.818), 1 above.
    full = coco_evaluate_full(gt, results)
    np.testing.assert_allclose(full.recall[:, 0, 0, 2], [0.8] + [0.6] * 5 + [0.4] + [0.2] * 3)


def test_no_results_and_unknown_image() -> None:
    gt, results = _random_case(7, False)
    stats = coco_evaluate(gt, [])
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(
            gt, results + [{"image_id": 123456, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]
        )
    with pytest.raises(NotImplementedError):
        coco_evaluate(gt, results, iou_type="segm")


def test_detections_to_coco_results() -> None:
    boxes = np.array([[[10, 20, 30, 60], [0, 0, 5, 5]], [[1, 2, 3, 4], [0, 0, 0, 0]]], np.float32)
    scores = np.array([[0.9, 0.1], [0.5, 0.0]], np.float32)
    labels = np.array([[0, 2], [1, 0]])
    valid = np.array([[True, True], [True, False]])
    res = detections_to_coco_results(
        [7, 8], boxes, scores, labels, valid, [1, 3, 5], scales=np.array([2.0, 1.0])
    )
    assert len(res) == 3
    assert res[0] == {
        "image_id": 7,
        "category_id": 1,
        "bbox": [5.0, 10.0, 10.0, 20.0],
        "score": pytest.approx(0.9),
    }
    assert res[1]["category_id"] == 5 and res[2]["image_id"] == 8 and res[2]["bbox"] == [1.0, 2.0, 2.0, 2.0]
