"""COCO box evaluation (host-side numpy) reproducing pycocotools' `COCOeval` for iouType="bbox".

Semantics follow pycocotools 2.0 `cocoeval.py` / `coco.py` exactly, so `coco_evaluate(...)` equals
`COCOeval(...).stats` (to float round-off):
- images are `sorted(unique(image ids))` of `gt["images"]`, categories `sorted(unique(ids))`; ground
  truth and results of other images/categories are dropped (results on an unknown image are an error,
  as pycocotools' `loadRes` asserts);
- a result's area is `w * h` of its box and it is never crowd (what `loadRes` adds); ground truth uses
  its `area` field (not the box) for the area ranges;
- per (image, category): detections stable-sorted by descending score (mergesort) and cut to 100;
  IoU as `maskUtils.iou` for boxes (for a crowd gt the union is the detection's area);
- a gt is ignored when crowd or its area is outside the range (bounds inclusive); greedy matching of
  each detection, highest score first, at each IoU threshold: among gts not yet taken (crowd gts may be
  taken many times), the best IoU >= min(t, 1 - 1e-10) wins, ties going to the later gt, and non-ignored
  gts are preferred over ignored ones (pycocotools sorts ignored gts last and stops at the first
  ignored one once it holds a regular match); a detection matched to an ignored gt is ignored, an
  unmatched detection outside the area range is ignored;
- per (category, area, maxDet): detections of all images (image order, each cut to maxDet) stable-sorted
  by score, cumulative TP/FP, precision with `np.spacing(1)` in the denominator, the monotone precision
  envelope sampled at 101 recall points (`searchsorted(..., side="left")`, 0 past the last recall),
  recall = final recall; -1 where a category has no non-ignored gt;
- the 12 summary numbers average the entries > -1 exactly as `COCOeval.summarize`.
As in pycocotools, a match's stored value is the gt annotation `id`, so a match to a gt with `id == 0`
counts as unmatched.

The matching loop runs over detection rank (<= 100 steps) and is vectorized over groups (padded, in
size-sorted chunks), area ranges, IoU thresholds and gts; accumulation is vectorized over thresholds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# pycocotools Params.setDetParams, computed the same way (np.arange would drift).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], np.float64)
AREA_LABELS = ("all", "small", "medium", "large")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# Element budget of one padded [groups, areas, thresholds, gts] block in the matching loop.
_CHUNK_ELEMENTS = 1 << 21


@dataclass
class CocoEvalResult:
    """Everything `coco_evaluate_full` computes.

    `precision` [T=10, R=101, K, A=4, M=3] and `recall` [T, K, A, M] are laid out as pycocotools'
    `COCOeval.eval["precision"]` / `["recall"]` (-1 where a category has no non-ignored gt).
    `per_class` maps category name -> AP@[.5:.95] (area all, 100 dets), NaN without gt (detectron2's
    convention); `per_class_ap50` likewise at IoU 0.5.
    """

    stats: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    category_ids: list[int]
    per_class: dict[str, float] = field(default_factory=dict)
    per_class_ap50: dict[str, float] = field(default_factory=dict)


def _load(obj: Any) -> Any:
    if isinstance(obj, str | Path):
        with open(obj) as f:
            return json.load(f)
    return obj


def _box_iou_xywh(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """dt [..., D, 4], gt [..., G, 4] xywh, crowd [..., G] bool -> IoU [..., D, G] in float64.

    Same operations, in the same order, as pycocotools' C `bbIou`, so results agree bit for bit;
    for a crowd gt the denominator is the detection's area.
    """
    d = dt[..., :, None, :]
    g = gt[..., None, :, :]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    da = d[..., 2] * d[..., 3]
    ga = g[..., 2] * g[..., 3]
    inter = w * h
    union = np.where(crowd[..., None, :], da, da + ga - inter)
    ok = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def _parse_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"COCO ground truth has no {key!r} list")
    img_ids = np.unique(np.array([im["id"] for im in gt["images"]], np.int64))
    cats = {c["id"]: c for c in gt["categories"]}
    cat_ids = np.unique(np.array(list(cats), np.int64))
    anns = gt["annotations"]
    ids = [a["id"] for a in anns]
    if len(set(ids)) != len(ids):
        raise ValueError("COCO ground truth has duplicate annotation ids")
    for a in anns:
        for key in ("image_id", "category_id", "bbox", "area"):
            if key not in a:
                raise ValueError(f"COCO annotation id {a.get('id')} has no {key!r}")
    n = len(anns)
    return {
        "img_ids": img_ids,
        "cat_ids": cat_ids,
        "cat_names": [str(cats[int(c)].get("name", int(c))) for c in cat_ids],
        "image_id": np.array([a["image_id"] for a in anns], np.int64).reshape(n),
        "category_id": np.array([a["category_id"] for a in anns], np.int64).reshape(n),
        "bbox": np.array([a["bbox"] for a in anns], np.float64).reshape(n, 4),
        "area": np.array([a["area"] for a in anns], np.float64).reshape(n),
        "crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(n),
        "id": np.array(ids, np.int64).reshape(n),
    }


def _parse_results(results: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    n = len(results)
    for i, r in enumerate(results):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in r:
                raise ValueError(f"COCO result #{i} has no {key!r}")
    bbox = np.array([r["bbox"] for r in results], np.float64).reshape(n, 4)
    return {
        "image_id": np.array([r["image_id"] for r in results], np.int64).reshape(n),
        "category_id": np.array([r["category_id"] for r in results], np.int64).reshape(n),
        "bbox": bbox,
        "score": np.array([r["score"] for r in results], np.float64).reshape(n),
        "area": bbox[:, 2] * bbox[:, 3],  # loadRes: area = w * h
    }


def _index_of(values: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each value in the sorted unique `table` and whether it is present."""
    pos = np.searchsorted(table, values)
    pos_c = np.minimum(pos, max(len(table) - 1, 0))
    found = (pos < len(table)) & (table[pos_c] == values) if len(table) else np.zeros(len(values), bool)
    return pos_c, found


def _match(
    gt_box: np.ndarray,
    gt_area: np.ndarray,
    gt_crowd: np.ndarray,
    gt_id: np.ndarray,
    dt_box: np.ndarray,
    dt_area: np.ndarray,
    gt_start: np.ndarray,
    gt_count: np.ndarray,
    dt_start: np.ndarray,
    dt_count: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy COCO matching for every (image, category) group.

    gt_* are sorted by group (dataset order inside a group), dt_* by group then descending score and
    already cut to 100 per group; gt_start/gt_count/dt_start/dt_count [U] locate each group.
    Returns, per detection, `matched` [A, T, Nd] (matched to a gt with nonzero id, pycocotools'
    `dtm != 0`), `ignored` [A, T, Nd] (`dtIgnore`), and per gt `gt_ignored` [A, Ng] (`gtIgnore`).
    """
    A, T = len(AREA_RANGES), len(IOU_THRESHOLDS)
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    nd = len(dt_box)
    matched = np.zeros((A, T, nd), bool)
    ignored = np.zeros((A, T, nd), bool)
    lo, hi = AREA_RANGES[:, 0], AREA_RANGES[:, 1]
    gt_ignored = gt_crowd[None, :] | (gt_area[None, :] < lo[:, None]) | (gt_area[None, :] > hi[:, None])
    dt_out = (dt_area[None, :] < lo[:, None]) | (dt_area[None, :] > hi[:, None])  # [A, Nd]

    todo = np.flatnonzero((gt_count > 0) & (dt_count > 0))  # other groups: nothing to match
    todo = todo[np.lexsort((dt_count[todo], gt_count[todo]))]
    start = 0
    while start < len(todo):
        # Grow the chunk while the padded block stays within budget (groups sorted by gt count).
        stop = start + 1
        while stop < len(todo) and (stop + 1 - start) * A * T * gt_count[todo[stop]] <= _CHUNK_ELEMENTS:
            stop += 1
        grp = todo[start:stop]
        start = stop
        B, Gm, Dm = len(grp), int(gt_count[grp].max()), int(dt_count[grp].max())
        gi = gt_start[grp, None] + np.arange(Gm)[None, :]  # [B, Gm]
        g_ok = np.arange(Gm)[None, :] < gt_count[grp, None]
        gi = np.where(g_ok, gi, 0)
        di = dt_start[grp, None] + np.arange(Dm)[None, :]  # [B, Dm]
        d_ok = np.arange(Dm)[None, :] < dt_count[grp, None]
        di = np.where(d_ok, di, 0)
        crowd = gt_crowd[gi] & g_ok  # [B, Gm]
        ious = _box_iou_xywh(dt_box[di], gt_box[gi], crowd)  # [B, Dm, Gm]
        ious = np.where(g_ok[:, None, :] & d_ok[:, :, None], ious, -1.0)  # padding never matches
        g_ign = np.moveaxis(gt_ignored[:, gi], 0, 1)[:, :, None, :]  # [B, A, 1, Gm]
        g_idnz = (gt_id[gi] != 0)[:, None, None, :]  # [B, 1, 1, Gm]
        crowd4 = crowd[:, None, None, :]
        taken = np.zeros((B, A, T, Gm), bool)
        m_out = np.zeros((B, A, T, Dm), bool)
        i_out = np.zeros((B, A, T, Dm), bool)
        rev = np.arange(Gm)[::-1]
        for d in range(Dm):
            v = ious[:, d, None, None, :]  # [B, 1, 1, Gm]
            cand = (v >= thr[None, None, :, None]) & ~(taken & ~crowd4)
            reg = cand & ~g_ign
            sel = np.where(reg.any(-1, keepdims=True), reg, cand & g_ign)
            vals = np.where(sel, v, -np.inf)
            best = sel & (vals == vals.max(-1, keepdims=True))
            last = rev[np.argmax(best[..., ::-1], axis=-1)]  # last gt holding the best IoU
            hit = sel.any(-1)  # [B, A, T]
            onehot = (np.arange(Gm) == last[..., None]) & hit[..., None]
            taken |= onehot
            m_out[..., d] = (onehot & g_idnz).any(-1)
            i_out[..., d] = (onehot & g_ign).any(-1)
        flat = di[d_ok]  # detection indices in (group, rank) order
        matched[:, :, flat] = np.moveaxis(m_out, 0, 2)[:, :, d_ok]
        ignored[:, :, flat] = np.moveaxis(i_out, 0, 2)[:, :, d_ok]
    # Unmatched (dtm == 0) detections outside the area range are ignored.
    ignored |= ~matched & dt_out[:, None, :]
    return matched, ignored, gt_ignored


def coco_evaluate_full(
    gt: Mapping[str, Any] | str | Path,
    results: Sequence[Mapping[str, Any]] | str | Path,
    iou_type: str = "bbox",
) -> CocoEvalResult:
    """COCOeval(gt, loadRes(results), "bbox") evaluate/accumulate/summarize, with per-class AP.

    gt: COCO dict (or JSON path) with `images`, `annotations` (`image_id`, `category_id`, `bbox` xywh,
    `area`, `iscrowd`, `id`), `categories`. results: list (or JSON path) of dicts with `image_id`,
    `category_id`, `bbox` xywh pixels, `score`. An empty result list gives 0 AP/AR wherever there is gt
    (pycocotools itself fails on an empty list).
    """
    if iou_type != "bbox":
        raise NotImplementedError(f"iou_type {iou_type!r}: only 'bbox' is implemented")
    g = _parse_gt(_load(gt))
    r = _parse_results(_load(results))
    img_ids, cat_ids = g["img_ids"], g["cat_ids"]
    n_images, K = len(img_ids), len(cat_ids)
    A, T, R, M = len(AREA_RANGES), len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(MAX_DETS)

    # Ground truth of known images/categories, grouped by key = image * K + category (stable).
    gi_img, ok_i = _index_of(g["image_id"], img_ids)
    gi_cat, ok_c = _index_of(g["category_id"], cat_ids)
    keep = np.flatnonzero(ok_i & ok_c)
    g_key = gi_img[keep] * K + gi_cat[keep]
    order = keep[np.argsort(g_key, kind="stable")]
    g_key = np.sort(g_key, kind="stable")
    gt_box, gt_area, gt_crowd, gt_id = g["bbox"][order], g["area"][order], g["crowd"][order], g["id"][order]
    gt_cat = g_key % K if K else g_key

    # Results: unknown image -> error (loadRes asserts); unknown category -> dropped (getAnnIds filters).
    di_img, ok_i = _index_of(r["image_id"], img_ids)
    if not ok_i.all():
        bad = sorted(set(r["image_id"][~ok_i].tolist()))[:10]
        raise ValueError(f"results refer to images not in the ground truth: {bad}")
    di_cat, ok_c = _index_of(r["category_id"], cat_ids)
    keep = np.flatnonzero(ok_c)
    d_key = di_img[keep] * K + di_cat[keep]
    # Group, then descending score; ties keep result order (mergesort of -score, as pycocotools).
    order = keep[np.lexsort((-r["score"][keep], d_key))]
    d_key = di_img[order] * K + di_cat[order]
    n_keys = n_images * K
    d_count_all = np.bincount(d_key, minlength=n_keys)
    d_start_all = np.concatenate([[0], np.cumsum(d_count_all)[:-1]]) if n_keys else np.zeros(0, np.int64)
    rank = np.arange(len(d_key)) - d_start_all[d_key]
    top = rank < MAX_DETS[-1]
    order, d_key, rank = order[top], d_key[top], rank[top]
    dt_box, dt_area, dt_score = r["bbox"][order], r["area"][order], r["score"][order]

    g_count = np.bincount(g_key, minlength=n_keys)
    g_start = np.concatenate([[0], np.cumsum(g_count)[:-1]]) if n_keys else np.zeros(0, np.int64)
    d_count = np.bincount(d_key, minlength=n_keys)
    d_start = np.concatenate([[0], np.cumsum(d_count)[:-1]]) if n_keys else np.zeros(0, np.int64)
    matched, ignored, gt_ignored = _match(
        gt_box, gt_area, gt_crowd, gt_id, dt_box, dt_area, g_start, g_count, d_start, d_count
    )

    # Non-ignored gt per (category, area).
    npig = np.zeros((K, A), np.int64)
    for a in range(A):
        npig[:, a] = np.bincount(gt_cat[~gt_ignored[a]], minlength=K)

    # Detections per category, images in order, each image's detections by rank (pycocotools' concat).
    dt_img, dt_cat = d_key // max(K, 1), d_key % max(K, 1)
    cat_order = np.lexsort((rank, dt_img, dt_cat))
    cat_bounds = np.searchsorted(dt_cat[cat_order], np.arange(K + 1))

    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    for k in range(K):
        idx_k = cat_order[cat_bounds[k] : cat_bounds[k + 1]]
        for m, max_det in enumerate(MAX_DETS):
            idx = idx_k[rank[idx_k] < max_det]
            inds = np.argsort(-dt_score[idx], kind="mergesort")
            idx = idx[inds]
            for a in range(A):
                if npig[k, a] == 0:
                    continue
                dtm = matched[a][:, idx]  # [T, n]
                dtig = ignored[a][:, idx]
                tps = np.cumsum(dtm & ~dtig, axis=1).astype(float)
                fps = np.cumsum(~dtm & ~dtig, axis=1).astype(float)
                n = tps.shape[1]
                rc = tps / npig[k, a]
                pr = tps / (fps + tps + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if n else 0.0
                if n == 0:
                    precision[:, :, k, a, m] = 0.0
                    continue
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
                for t in range(T):
                    pos = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    inside = pos < n
                    precision[t, :, k, a, m] = np.where(inside, pr[t, np.minimum(pos, n - 1)], 0.0)

    stats = _summarize(precision, recall)
    per_class, per_class_ap50 = {}, {}
    for k, name in enumerate(g["cat_names"]):
        for table, s in ((per_class, precision[:, :, k, 0, -1]), (per_class_ap50, precision[0, :, k, 0, -1])):
            s = s[s > -1]
            table[name] = float(np.mean(s)) if s.size else float("nan")
    return CocoEvalResult(stats, precision, recall, [int(c) for c in cat_ids], per_class, per_class_ap50)


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """COCOeval.summarize for boxes: the same slicing and `np.mean(s[s > -1])` (-1 if none)."""

    def one(ap: bool, iou_thr: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        aind = [i for i, lbl in enumerate(AREA_LABELS) if lbl == area]
        mind = [i for i, m in enumerate(MAX_DETS) if m == max_dets]
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRESHOLDS)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    values = [
        one(True),
        one(True, 0.5),
        one(True, 0.75),
        one(True, area="small"),
        one(True, area="medium"),
        one(True, area="large"),
        one(False, max_dets=1),
        one(False, max_dets=10),
        one(False),
        one(False, area="small"),
        one(False, area="medium"),
        one(False, area="large"),
    ]
    return dict(zip(STAT_NAMES, values, strict=True))


def coco_evaluate(
    gt: Mapping[str, Any] | str | Path,
    results: Sequence[Mapping[str, Any]] | str | Path,
    iou_type: str = "bbox",
) -> dict[str, float]:
    """The 12 COCO numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl), equal to
    pycocotools `COCOeval(gt, gt.loadRes(results), "bbox").stats`. See `coco_evaluate_full`."""
    return coco_evaluate_full(gt, results, iou_type).stats


def detections_to_coco_results(
    image_ids: Sequence[int] | np.ndarray,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray,
    label_to_category_id: Sequence[int] | Mapping[int, int] | None = None,
    scales: np.ndarray | None = None,
    clip_hw: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Padded batch detections -> COCO result dicts (`bbox` xywh).

    image_ids [B]; boxes_xyxy [B, D, 4] pixels; scores [B, D]; labels [B, D] contiguous class ids;
    valid [B, D] bool (padding is skipped); label_to_category_id maps a label to its COCO category id
    (identity when None); scales [B] (output px per original px, as the detection transforms record)
    divides boxes back to original-image pixels when given; clip_hw [B, 2] (original height, width) then
    clips them to the image (the network input may be padded past it).
    """
    boxes = np.asarray(boxes_xyxy, np.float64)
    if scales is not None:
        boxes = boxes / np.asarray(scales, np.float64).reshape(-1, 1, 1)
    if clip_hw is not None:
        hw = np.asarray(clip_hw, np.float64).reshape(-1, 1, 2)
        boxes = np.clip(boxes, 0.0, np.concatenate([hw[..., ::-1], hw[..., ::-1]], axis=-1))
    scores, labels, valid = np.asarray(scores), np.asarray(labels), np.asarray(valid, bool)
    out: list[dict[str, Any]] = []
    for b, image_id in enumerate(np.asarray(image_ids).tolist()):
        for j in np.flatnonzero(valid[b]).tolist():
            x1, y1, x2, y2 = boxes[b, j].tolist()
            lab = int(labels[b, j])
            cat = lab if label_to_category_id is None else int(label_to_category_id[lab])
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": cat,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(scores[b, j]),
                }
            )
    return out
