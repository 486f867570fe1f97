"""voc_evaluate: hand-computed cases and an independent loop-by-loop devkit-style reference."""

import numpy as np
import pytest

from jaxcv.evaluation.voc import voc_ap, voc_evaluate


def _brute_force(gtb, gtl, gtd, detb, dets, detl, num_classes, thr, use07, plus1):
    """Straight transcription of the devkit algorithm with explicit loops (no shared code)."""
    p1 = 1.0 if plus1 else 0.0
    aps = []
    for c in range(num_classes):
        recs, npos = {}, 0
        for i in range(len(gtb)):
            m = [j for j in range(len(gtl[i])) if gtl[i][j] == c]
            recs[i] = {
                "box": [gtb[i][j] for j in m],
                "diff": [bool(gtd[i][j]) for j in m],
                "det": [False] * len(m),
            }
            npos += sum(1 for j in m if not gtd[i][j])
        dets_c = [
            (float(dets[i][j]), i, detb[i][j])
            for i in range(len(detb))
            for j in range(len(detl[i]))
            if detl[i][j] == c
        ]
        # Stable sort by descending score, images then detections in input order.
        dets_c = [d for _, d in sorted(enumerate(dets_c), key=lambda e: (-e[1][0], e[0]))]
        tp, fp = [], []
        for _, i, b in dets_c:
            best, jbest = -np.inf, -1
            for j, g in enumerate(recs[i]["box"]):
                iw = max(min(b[2], g[2]) - max(b[0], g[0]) + p1, 0.0)
                ih = max(min(b[3], g[3]) - max(b[1], g[1]) + p1, 0.0)
                inter = iw * ih
                union = (
                    (b[2] - b[0] + p1) * (b[3] - b[1] + p1) + (g[2] - g[0] + p1) * (g[3] - g[1] + p1) - inter
                )
                if inter / union > best:
                    best, jbest = inter / union, j
            t = f = 0.0
            if best > thr:
                if not recs[i]["diff"][jbest]:
                    if not recs[i]["det"][jbest]:
                        t = 1.0
                        recs[i]["det"][jbest] = True
                    else:
                        f = 1.0
            else:
                f = 1.0
            tp.append(t)
            fp.append(f)
        if npos == 0:
            aps.append(np.nan)
            continue
        ctp, cfp, rec, prec = 0.0, 0.0, [], []
        for t, f in zip(tp, fp, strict=True):
            ctp, cfp = ctp + t, cfp + f
            rec.append(ctp / npos)
            prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
        if use07:
            ap = 0.0
            for t in np.arange(0.0, 1.1, 0.1):  # the devkit's thresholds, float round-off included
                ps = [p for r, p in zip(rec, prec, strict=True) if r >= t]
                ap += (max(ps) if ps else 0.0) / 11
        else:
            # Area under the envelope: for each recall increase, the best precision at that recall or beyond.
            ap, prev = 0.0, 0.0
            for k, r in enumerate(rec):
                if r > prev:
                    ap += (r - prev) * max(prec[k:])
                    prev = r
        aps.append(ap)
    return np.array(aps)


def _random(seed: int, n_img: int = 12, k: int = 4, integer: bool = True):
    rng = np.random.default_rng(seed)
    gtb, gtl, gtd, detb, dets, detl = [], [], [], [], [], []
    for _ in range(n_img):
        g = rng.integers(0, 6)
        xy = rng.uniform(0, 200, (g, 2))
        wh = rng.uniform(4, 80, (g, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, k - 1, g)  # class k-1 never has gt
        diff = rng.random(g) < 0.2
        d_list, s_list, l_list = [], [], []
        for b, lab in zip(boxes, labels, strict=True):
            for _ in range(rng.integers(0, 3)):
                d_list.append(b + rng.normal(0, 0.1, 4) * np.r_[wh.mean(0), wh.mean(0)])
                s_list.append(rng.random())
                l_list.append(lab)
        for _ in range(rng.integers(0, 5)):
            p = rng.uniform(0, 200, 2)
            d_list.append(np.r_[p, p + rng.uniform(4, 80, 2)])
            s_list.append(rng.random() * 0.8)
            l_list.append(rng.integers(0, k))
        db = np.array(d_list).reshape(-1, 4)
        if integer:
            boxes, db = np.round(boxes), np.round(db)
        ds = np.round(np.array(s_list), 1)  # ties
        gtb.append(boxes)
        gtl.append(labels)
        gtd.append(diff)
        detb.append(db)
        dets.append(ds)
        detl.append(np.array(l_list, int))
    return gtb, gtl, gtd, detb, dets, detl, k


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("use07", [False, True])
@pytest.mark.parametrize("plus1", [True, False])
def test_matches_brute_force(seed: int, use07: bool, plus1: bool) -> None:
    gtb, gtl, gtd, detb, dets, detl, k = _random(seed, integer=seed % 2 == 0)
    ref = _brute_force(gtb, gtl, gtd, detb, dets, detl, k, 0.5, use07, plus1)
    out = voc_evaluate(gtb, gtl, gtd, detb, dets, detl, k, 0.5, use_07_metric=use07, pixel_plus_one=plus1)
    np.testing.assert_allclose(out["AP"], ref, atol=1e-12, equal_nan=True)
    assert np.isnan(out["AP"][k - 1])  # class without gt
    assert out["mAP"] == pytest.approx(np.nanmean(ref), abs=1e-12)
    assert 0.05 < out["mAP"] < 0.99  # the case is non-trivial


def test_hand_computed() -> None:
    # Two gts; detections by score: TP, FP (no overlap), TP  -> precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    gtb = [np.array([[0, 0, 9, 9], [20, 20, 29, 29]], float)]
    detb = [np.array([[0, 0, 9, 9], [50, 50, 59, 59], [20, 20, 29, 29]], float)]
    args = (gtb, [np.array([0, 0])], None, detb, [np.array([0.9, 0.8, 0.7])], [np.array([0, 0, 0])], 1)
    assert voc_evaluate(*args)["mAP"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # VOC07: recall >= 0, .1, ..., .5 -> max precision 1; >= .6 ... 1.0 -> 2/3.
    assert voc_evaluate(*args, use_07_metric=True)["mAP"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    # IoU exactly 0.5 (50 of 100 inclusive pixels) is not a hit: the devkit needs IoU > threshold.
    half = (
        [np.array([[0, 0, 9, 9]], float)],
        [np.array([0])],
        None,
        [np.array([[0, 0, 9, 4]], float)],
        [np.array([0.9])],
        [np.array([0])],
        1,
    )
    assert voc_evaluate(*half)["mAP"] == 0.0
    assert voc_evaluate(*half, iou_threshold=0.49)["mAP"] == 1.0
    # Without the +1 convention the same boxes overlap 36/81.
    assert voc_evaluate(*half, iou_threshold=0.44, pixel_plus_one=False)["mAP"] == 1.0
    assert voc_evaluate(*half, iou_threshold=0.45, pixel_plus_one=False)["mAP"] == 0.0


def test_difficult_duplicates_and_no_fallback() -> None:
    # gt 0: normal, gt 1: difficult, gt 2: normal overlapping gt 0 partially.
    gtb = [np.array([[0, 0, 99, 99], [200, 200, 299, 299], [0, 40, 99, 139]], float)]
    gtd = [np.array([False, True, False])]
    det = np.array(
        [
            [0, 0, 99, 99],  # TP on gt 0
            [200, 200, 299, 299],  # on the difficult gt: ignored
            [0, 10, 99, 109],  # best IoU with gt 0 (taken) -> FP, though gt 2 (IoU ~0.54) is free
            [0, 0, 99, 99],  # duplicate on gt 0 -> FP
        ],
        float,
    )
    out = voc_evaluate(
        gtb, [np.zeros(3, int)], gtd, [det], [np.array([0.9, 0.8, 0.7, 0.6])], [np.zeros(4, int)], 1
    )
    # TP, (ignored), FP, FP: recall 1/2 at precision 1, never reaches gt 2.
    assert out["AP"][0] == pytest.approx(0.5)
    assert out["num_positives"][0] == 2


def test_voc_ap_edges() -> None:
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0
    with pytest.raises(ValueError, match="labels must be in"):
        voc_evaluate(
            [np.zeros((1, 4))],
            [np.array([3])],
            None,
            [np.zeros((0, 4))],
            [np.zeros(0)],
            [np.zeros(0, int)],
            2,
        )
