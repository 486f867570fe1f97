"""Automatic mask generation: a grid of point prompts over the image (and over crops), filtered by predicted IoU
and stability, de-duplicated by box NMS, as `segment_anything.SamAutomaticMaskGenerator` (same settings and
defaults).

Per crop (the whole image, then `crop_n_layers` layers of overlapping crops): the crop is embedded once, the
point grid (`build_point_grid`: n x n cell centres, y outer, x inner, times the crop's (w, h)) is decoded in
fixed-size batches of single foreground points with three masks each, in one jitted call per batch that also
upsamples the logits to the crop, thresholds them, and computes stability scores (#(logit > t + offset) /
#(logit > t - offset)) and boxes (x0, y0, x1, y1, the last pixel inclusive; empty masks [0, 0, 0, 0]).
Then, as the reference: keep IoU > `pred_iou_thresh` and stability >= `stability_score_thresh` (a threshold of 0
disables the filter, the reference tests `> 0`), drop boxes within 20 px of a crop edge that is not an image
edge, NMS per crop (`box_nms_thresh`, scores = predicted IoU; torchvision's NMS), across crops
(`crop_nms_thresh`, scores = 1 / crop area) when there are several, optional small-region removal.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import product
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.sam.sam import Sam
from jaxcv.ops.nms import nms
from jaxcv.sam.predictor import Predictor, apply_coords, upscale_logits

Array = jax.Array


def build_point_grid(n_per_side: int) -> np.ndarray:
    """[n * n, 2] xy in [0, 1]: cell centres, y outer, x inner (reference `build_point_grid`)."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer, `int(n_per_side / scale_per_layer**i)` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float
                        ) -> tuple[list[list[int]], list[int]]:
    """Crop boxes xyxy and their layer index: the whole image, then 2^i x 2^i overlapping crops per layer i."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w, crop_h = crop_len(im_w, n, overlap), crop_len(im_h, n, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def masks_to_boxes(masks: Array) -> Array:
    """[..., H, W] bool -> [..., 4] int32 xyxy, x1 / y1 the last pixel (inclusive); empty masks give zeros
    (reference `batched_mask_to_box`)."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)  # [..., H], [..., W]
    top = jnp.argmax(rows, axis=-1)
    bottom = h - 1 - jnp.argmax(rows[..., ::-1], axis=-1)
    left = jnp.argmax(cols, axis=-1)
    right = w - 1 - jnp.argmax(cols[..., ::-1], axis=-1)
    boxes = jnp.stack([left, top, right, bottom], axis=-1).astype(jnp.int32)
    return jnp.where(rows.any(axis=-1)[..., None], boxes, 0)


def stability_score(logits: Array, threshold: float, offset: float) -> Array:
    """IoU of the masks thresholded at threshold +- offset: [..., H, W] -> [...] float32."""
    inter = jnp.sum(logits > threshold + offset, axis=(-2, -1), dtype=jnp.int32)
    union = jnp.sum(logits > threshold - offset, axis=(-2, -1), dtype=jnp.int32)
    return inter.astype(jnp.float32) / union.astype(jnp.float32)


def _decode_points(module: Sam, variables: Any, features: Array, points: Array, mat_h: Array, mat_w: Array, *,
                   threshold: float, offset: float) -> tuple[Array, Array, Array, Array]:
    """points [P, 2] (input-image pixels) -> masks [P, 3, h, w] bool, iou [P, 3], stability [P, 3], boxes [P, 3, 4]."""
    labels = jnp.ones((points.shape[0], 1), jnp.int32)
    low_res, iou = module.apply(variables, features, points[:, None], labels, multimask_output=True,
                                method=Sam.predict_prompts)
    logits = upscale_logits(low_res, mat_h, mat_w)
    masks = logits > threshold
    return masks, iou, stability_score(logits, threshold, offset), masks_to_boxes(masks)


@partial(jax.jit, static_argnames=("iou_threshold",))
def _nms_padded(boxes: Array, scores: Array, valid: Array, iou_threshold: float) -> tuple[Array, Array]:
    return nms(boxes, scores, iou_threshold, boxes.shape[0], valid)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """torchvision `nms` (what `batched_nms` with one category does): kept indices, decreasing score. Inputs are
    padded to a power of two so the jitted loop compiles for few sizes."""
    n = len(boxes)
    if n == 0:
        return np.zeros((0,), np.int64)
    size = 1 << (n - 1).bit_length()
    b = np.zeros((size, 4), np.float32)
    b[:n] = boxes
    s = np.zeros((size,), np.float32)
    s[:n] = scores
    keep, ok = _nms_padded(jnp.asarray(b), jnp.asarray(s), jnp.asarray(np.arange(size) < n), float(iou_threshold))
    return np.asarray(keep)[np.asarray(ok)].astype(np.int64)


def is_box_near_crop_edge(boxes: np.ndarray, crop_box: list[int], orig_box: list[int], atol: float = 20.0
                          ) -> np.ndarray:
    """[N, 4] crop-frame boxes -> [N] bool: a side within `atol` of a crop edge that is not an image edge."""
    crop = np.asarray(crop_box, np.float32)
    boxes = boxes.astype(np.float32) + np.asarray([crop_box[0], crop_box[1]] * 2, np.float32)
    near_crop = np.abs(boxes - crop) <= atol
    near_image = np.abs(boxes - np.asarray(orig_box, np.float32)) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fills holes ("holes") or drops islands ("islands") smaller than `area_thresh` (8-connected components,
    as the reference's cv2.connectedComponentsWithStats(..., 8)); -> (mask, changed)."""
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode {mode!r}: expected 'holes' or 'islands'")
    holes = mode == "holes"
    regions, n = ndimage.label(holes ^ mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(n + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """[H, W] bool -> uncompressed RLE {"size": [H, W], "counts": [...]} in column-major order, starting with
    a run of zeros (the reference's `mask_to_rle_pytorch`)."""
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _xywh(box: np.ndarray | list[int]) -> list[int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


class AutomaticMaskGenerator:
    """SamAutomaticMaskGenerator for a jaxcv `Sam` (`model`: a `Predictor`, or a module with `variables`).

    `generate(image uint8 [H, W, 3]) -> list of records` {"segmentation", "area", "bbox" (xywh), "predicted_iou",
    "point_coords" ([[x, y]]), "stability_score", "crop_box" (xywh)}, in the reference's order.
    `output_mode`: "binary_mask" (bool [H, W]), "uncompressed_rle", or "coco_rle" (needs pycocotools).
    """

    def __init__(self, model: Predictor | Sam, variables: Any = None, points_per_side: int | None = 32,
                 points_per_batch: int = 64, pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: list[np.ndarray] | None = None,
                 min_mask_region_area: int = 0, output_mode: str = "binary_mask") -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise ValueError(f"unknown output_mode {output_mode!r}")
        if point_grids is None:
            point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        self.predictor = model if isinstance(model, Predictor) else Predictor(model, variables)
        module = self.predictor.module
        self.point_grids = point_grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self._decode = jax.jit(partial(_decode_points, module, threshold=module.mask_threshold,
                                       offset=stability_score_offset))

    def crop_candidates(self, image: np.ndarray, crop_box: list[int], layer_idx: int,
                        orig_size: tuple[int, int]) -> dict[str, np.ndarray]:
        """Embeds the crop, decodes its point grid and applies the per-batch filters. -> arrays over the surviving
        candidates, point-major: masks [n, h, w] bool (crop frame), iou_preds, stability_score, boxes [n, 4]
        (crop frame), points [n, 2] (crop frame, float64)."""
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        crop_size = crop.shape[:2]
        p = self.predictor
        p.set_image(crop)
        points = self.point_grids[layer_idx] * np.asarray(crop_size)[None, ::-1]
        n = len(points)
        per = min(self.points_per_batch, n)  # fixed batch size: the last batch is padded
        orig_box = [0, 0, orig_size[1], orig_size[0]]
        out: dict[str, list] = {k: [] for k in ("masks", "iou_preds", "stability_score", "boxes", "points")}
        for start in range(0, n, per):
            batch = points[start:start + per]
            padded = np.concatenate([batch, np.repeat(batch[-1:], per - len(batch), axis=0)])
            coords = jnp.asarray(apply_coords(padded, crop_size, p.image_size), jnp.float32)
            masks, iou, stab, boxes = self._decode(p.variables, p.features, coords, *p.postprocess_maps)
            c = iou.shape[1]  # masks per point
            m = len(batch) * c
            iou, stab = np.asarray(iou).reshape(-1)[:m], np.asarray(stab).reshape(-1)[:m]
            boxes = np.asarray(boxes).reshape(-1, 4)[:m].astype(np.int64)
            pts = np.repeat(batch, c, axis=0)
            keep = np.ones(m, bool)
            if self.pred_iou_thresh > 0.0:
                keep &= iou > self.pred_iou_thresh
            if self.stability_score_thresh > 0.0:
                keep &= stab >= self.stability_score_thresh
            keep &= ~is_box_near_crop_edge(boxes, crop_box, orig_box)
            idx = np.flatnonzero(keep)
            out["masks"].append(np.asarray(masks.reshape(-1, *masks.shape[2:])[jnp.asarray(idx)]))
            for key, value in (("iou_preds", iou), ("stability_score", stab), ("boxes", boxes), ("points", pts)):
                out[key].append(value[idx])
        return {k: np.concatenate(v) for k, v in out.items()}

    def generate_details(self, image: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """`generate`, plus per crop its pre-NMS candidates (`crop_candidates`) and the NMS's kept indices."""
        image = np.asarray(image)
        orig_h, orig_w = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes((orig_h, orig_w), self.crop_n_layers, self.crop_overlap_ratio)
        details, crops = [], []
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
            cand = self.crop_candidates(image, crop_box, layer_idx, (orig_h, orig_w))
            keep = box_nms(cand["boxes"].astype(np.float32), cand["iou_preds"], self.box_nms_thresh)
            details.append({**{k: v for k, v in cand.items() if k != "masks"}, "crop_box": crop_box,
                            "nms_keep": keep})
            x0, y0, x1, y1 = crop_box
            masks = np.zeros((len(keep), orig_h, orig_w), bool)
            masks[:, y0:y1, x0:x1] = cand["masks"][keep]
            crops.append({"masks": masks, "iou_preds": cand["iou_preds"][keep],
                          "stability_score": cand["stability_score"][keep],
                          "boxes": cand["boxes"][keep] + np.asarray([x0, y0, x0, y0]),
                          "points": cand["points"][keep] + np.asarray([x0, y0]),
                          "crop_boxes": np.asarray([crop_box] * len(keep), np.int64).reshape(-1, 4)})
        data = {k: np.concatenate([c[k] for c in crops]) for k in crops[0]}
        if len(crop_boxes) > 1:
            cb = data["crop_boxes"].astype(np.float32)
            scores = 1.0 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))
            keep = box_nms(data["boxes"].astype(np.float32), scores, self.crop_nms_thresh)
            data = {k: v[keep] for k, v in data.items()}
        if self.min_mask_region_area > 0:
            data = self._remove_small_regions(data, self.min_mask_region_area, max(self.box_nms_thresh, 0.0))
        return self._records(data), details

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """uint8 RGB [H, W, 3] -> mask records (see the class doc)."""
        return self.generate_details(image)[0]

    @staticmethod
    def _remove_small_regions(data: dict[str, np.ndarray], min_area: int, nms_thresh: float) -> dict[str, Any]:
        """The reference's `postprocess_small_regions`: fill small holes, drop small islands, then NMS preferring
        unchanged masks (score 1) over changed ones (score 0); changed masks that survive get their new box."""
        if len(data["masks"]) == 0:
            return data
        new_masks, scores = [], []
        for mask in data["masks"]:
            mask, changed_holes = remove_small_regions(mask, min_area, "holes")
            mask, changed_islands = remove_small_regions(mask, min_area, "islands")
            new_masks.append(mask)
            scores.append(float(not (changed_holes or changed_islands)))
        masks = np.stack(new_masks)
        boxes = np.asarray(masks_to_boxes(jnp.asarray(masks))).astype(np.int64)
        scores = np.asarray(scores, np.float32)
        keep = box_nms(boxes.astype(np.float32), scores, nms_thresh)
        data = dict(data)
        changed = scores == 0.0
        data["masks"] = np.where(changed[:, None, None], masks, data["masks"])
        data["boxes"] = np.where(changed[:, None], boxes, data["boxes"])
        return {k: v[keep] for k, v in data.items()}

    def _records(self, data: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        records = []
        for i in range(len(data["masks"])):
            mask = data["masks"][i]
            if self.output_mode == "binary_mask":
                seg: Any = mask
            elif self.output_mode == "uncompressed_rle":
                seg = mask_to_rle(mask)
            else:
                from pycocotools import mask as mask_utils

                seg = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                seg["counts"] = seg["counts"].decode("utf-8")
            records.append({
                "segmentation": seg, "area": int(mask.sum()), "bbox": _xywh(data["boxes"][i]),
                "predicted_iou": float(data["iou_preds"][i]), "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]), "crop_box": _xywh(data["crop_boxes"][i]),
            })
        return records
