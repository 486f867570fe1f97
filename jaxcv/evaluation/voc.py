"""PASCAL VOC detection mAP (host-side numpy), with the semantics of the official devkit as ported in
detectron2's `pascal_voc_evaluation.voc_eval` / py-faster-rcnn `voc_eval.py`.

Per class:
- detections of all images sorted by descending score (a stable sort: the devkit's `argsort` leaves the
  order of tied scores unspecified);
- each detection is compared with *all* gt boxes of its class in its image (difficult ones included)
  and takes the one with the highest IoU (the first on ties); IoU > threshold (strict) and that gt
  not difficult: a TP if the gt is still free, else a FP (no fall-back to the second-best gt);
  IoU > threshold on a difficult gt: neither TP nor FP; otherwise a FP;
- recall = cumTP / #non-difficult gt, precision = cumTP / max(cumTP + cumFP, eps);
- AP: VOC2007 11-point (mean over t in `np.arange(0, 1.1, 0.1)` of the max precision at recall >= t)
  or, for VOC2010+, the area under the monotone precision envelope summed where recall changes.
Boxes are pixel xyxy; with `pixel_plus_one=True` (devkit default) widths are `x2 - x1 + 1`, i.e. box
corners are inclusive pixel indices. A class without non-difficult gt has AP NaN and is left out of mAP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from the cumulative recall/precision [N] of score-sorted detections (devkit `voc_ap`)."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = recall >= t
            ap += (float(np.max(precision[above])) if above.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou_one_to_many(det: np.ndarray, gt: np.ndarray, plus_one: float) -> np.ndarray:
    """det [N, 4], gt [N, G, 4] xyxy -> IoU [N, G], with the devkit's +1 pixel convention optional."""
    d = det[:, None, :]
    iw = np.maximum(np.minimum(gt[..., 2], d[..., 2]) - np.maximum(gt[..., 0], d[..., 0]) + plus_one, 0.0)
    ih = np.maximum(np.minimum(gt[..., 3], d[..., 3]) - np.maximum(gt[..., 1], d[..., 1]) + plus_one, 0.0)
    inters = iw * ih
    uni = (
        (d[..., 2] - d[..., 0] + plus_one) * (d[..., 3] - d[..., 1] + plus_one)
        + (gt[..., 2] - gt[..., 0] + plus_one) * (gt[..., 3] - gt[..., 1] + plus_one)
        - inters
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return inters / uni


def _as_list(arrays: Sequence[Any], dtype: Any, shape: tuple[int, ...], name: str) -> list[np.ndarray]:
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype)
        a = a.reshape((-1, *shape)) if a.size == 0 else a
        if a.shape[1:] != shape:
            raise ValueError(
                f"{name}[{i}] has shape {a.shape}, expected [N{', ' if shape else ''}"
                f"{', '.join(map(str, shape))}]"
            )
        out.append(a)
    return out


def voc_evaluate(
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    gt_difficult: Sequence[np.ndarray] | None,
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    det_labels: Sequence[np.ndarray],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    pixel_plus_one: bool = True,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """VOC detection AP per class and their mean over classes with non-difficult gt.

    Per image i: gt_boxes[i] [G_i, 4] xyxy pixels, gt_labels[i] [G_i] in [0, num_classes),
    gt_difficult[i] [G_i] bool (None: none difficult); det_boxes[i] [D_i, 4], det_scores[i] [D_i],
    det_labels[i] [D_i]. Returns {"mAP": float, "AP": [K] float64 (NaN without gt), "per_class":
    {name: AP}, "num_positives": [K] int}.
    """
    n = len(gt_boxes)
    lists = (gt_labels, det_boxes, det_scores, det_labels) + (
        (gt_difficult,) if gt_difficult is not None else ()
    )
    if any(len(x) != n for x in lists):
        raise ValueError("gt and detection lists must have one entry per image")
    gb = _as_list(gt_boxes, np.float64, (4,), "gt_boxes")
    gl = _as_list(gt_labels, np.int64, (), "gt_labels")
    gd = (
        [np.zeros(len(b), bool) for b in gb]
        if gt_difficult is None
        else _as_list(gt_difficult, bool, (), "gt_difficult")
    )
    db = _as_list(det_boxes, np.float64, (4,), "det_boxes")
    ds = _as_list(det_scores, np.float64, (), "det_scores")
    dl = _as_list(det_labels, np.int64, (), "det_labels")
    plus_one = 1.0 if pixel_plus_one else 0.0

    # Flatten everything with an image index.
    g_img = np.concatenate([np.full(len(b), i) for i, b in enumerate(gb)] + [np.zeros(0, np.int64)]).astype(
        int
    )
    g_box = np.concatenate(gb + [np.zeros((0, 4))])
    g_lab = np.concatenate(gl + [np.zeros(0, np.int64)])
    g_dif = np.concatenate(gd + [np.zeros(0, bool)])
    d_img = np.concatenate([np.full(len(b), i) for i, b in enumerate(db)] + [np.zeros(0, np.int64)]).astype(
        int
    )
    d_box = np.concatenate(db + [np.zeros((0, 4))])
    d_score = np.concatenate(ds + [np.zeros(0)])
    d_lab = np.concatenate(dl + [np.zeros(0, np.int64)])
    for what, lab in (("gt", g_lab), ("detection", d_lab)):
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(f"{what} labels must be in [0, {num_classes}); got {lab.min()}..{lab.max()}")

    ap = np.full(num_classes, np.nan)
    npos_all = np.zeros(num_classes, np.int64)
    for c in range(num_classes):
        gsel = np.flatnonzero(g_lab == c)
        npos = int(np.sum(~g_dif[gsel]))
        npos_all[c] = npos
        dsel = np.flatnonzero(d_lab == c)
        dsel = dsel[np.argsort(-d_score[dsel], kind="stable")]
        # Pad this class's gt per image: [n, Gmax].
        counts = np.bincount(g_img[gsel], minlength=n)
        gmax = max(int(counts.max()) if n else 0, 1)
        order = gsel[np.argsort(g_img[gsel], kind="stable")]
        slot = np.arange(len(order)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[g_img[order]]
        pad_box = np.zeros((n, gmax, 4))
        pad_ok = np.zeros((n, gmax), bool)
        pad_dif = np.zeros((n, gmax), bool)
        pad_box[g_img[order], slot] = g_box[order]
        pad_ok[g_img[order], slot] = True
        pad_dif[g_img[order], slot] = g_dif[order]

        img = d_img[dsel]
        ious = np.where(pad_ok[img], _iou_one_to_many(d_box[dsel], pad_box[img], plus_one), -np.inf)
        jmax = np.argmax(ious, axis=1) if len(dsel) else np.zeros(0, int)
        ovmax = ious[np.arange(len(dsel)), jmax] if len(dsel) else np.zeros(0)
        hit = ovmax > iou_threshold
        difficult = pad_dif[img, jmax]
        eligible = np.flatnonzero(hit & ~difficult)
        # The first (highest-scored) detection on each gt is the TP; later ones are duplicates (FP).
        _, first = np.unique(img[eligible] * gmax + jmax[eligible], return_index=True)
        tp = np.zeros(len(dsel))
        tp[eligible[first]] = 1.0
        fp = np.where(hit & difficult, 0.0, 1.0 - tp)
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[c] = voc_ap(rec, prec, use_07_metric)

    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    valid = ~np.isnan(ap)
    return {
        "mAP": float(np.mean(ap[valid])) if valid.any() else float("nan"),
        "AP": ap,
        "per_class": {names[c]: float(ap[c]) for c in range(num_classes)},
        "num_positives": npos_all,
    }
