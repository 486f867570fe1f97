"""YOLO's mosaic augmentation (Bochkovskiy et al. 2020, YOLOv4; ultralytics' default for YOLOv8 training) as a
random-access, box-aware transform with the output of `jaxcv.data.detection.make_detection_transform`.

Per training item, everything drawn from the item's `rng` (the Loader derives it from (seed, epoch, index), so a
resumed run sees the same mosaics):

1. mosaic (with probability `prob`): 3 partner indices, uniform over the source, and a centre (xc, yc) uniform
   in [S/2, 3S/2]^2 of a 2S x 2S canvas filled with grey `fill`; each of the 4 images, resized so its long side
   is S (aspect kept), is placed in one quadrant with a corner on the centre (the item top-left, partners
   top-right, bottom-left, bottom-right), cut at the canvas border. Otherwise the item alone, letterboxed
   (long side S, centred on an S x S grey canvas);
2. random affine: a scale factor from `scale` about the canvas centre and a translation of up to
   `translate` * S, then the S x S output window (ultralytics' `random_perspective` with its defaults: no
   rotation, shear or perspective, so boxes stay exact);
3. boxes clipped to the output; a box is dropped when a side is under `min_box_size` px, its aspect ratio
   exceeds `max_aspect`, or less than `area_thr` of its transformed area is left after clipping (ultralytics'
   `box_candidates`: 2 px, 100, 0.1);
4. HSV jitter: hue, saturation and value gains uniform in 1 +- `hsv` (ultralytics' hsv_h 0.015, hsv_s 0.7,
   hsv_v 0.4), then a horizontal flip with probability 0.5 when `hflip`.

Crowd boxes are no targets (as `make_detection_transform`). A partner the source cannot read (`DataError`) is
replaced by the item itself, so one bad file never fails another item.

Close-mosaic (ultralytics' `close_mosaic`: the last epochs see plain letterboxed items, still with the affine,
HSV and flip): items of epochs >= `close_epoch` take step 1's "otherwise" branch. The epoch is the one the
Loader seeded the item's rng with (`loader_epoch`), so the switch, like everything else, is a pure function
of (seed, epoch, index) and a resumed run switches at the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxcv.data.base import DataError, Source
from jaxcv.data.detection import NORMALIZATIONS, sanitize_boxes, to_model_input

Example = dict[str, Any]


def _load(ex: Example, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw example -> (image resized to long side `s` uint8 [h, w, 3], boxes [N, 4] xyxy of it, labels [N])."""
    image = np.asarray(ex["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    boxes = np.asarray(ex.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    labels = np.asarray(ex.get("labels", np.zeros((0,))), np.int32).reshape(-1)
    if "iscrowd" in ex:
        crowd = np.asarray(ex["iscrowd"], bool).reshape(-1)[: len(boxes)]
        boxes, labels = boxes[: len(crowd)][~crowd], labels[: len(crowd)][~crowd]
    boxes, labels = sanitize_boxes(boxes, labels, h, w, min_size=0.0)
    r = s / max(h, w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    return image, boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32), labels


def loader_epoch(rng: np.random.Generator) -> int | None:
    """The epoch of a training item's rng: `jaxcv.data.loader.Loader` seeds item i of epoch e with
    `default_rng([seed, e, i])` (its documented contract), whose SeedSequence keeps that entropy. None for a
    Generator seeded otherwise (a single int, e.g. a test's or a preview's), which counts as no epoch known."""
    entropy = getattr(getattr(rng.bit_generator, "seed_seq", None), "entropy", None)
    if isinstance(entropy, (list, tuple)) and len(entropy) == 3:
        return int(entropy[1])
    return None


def _hsv(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiplies hue (cyclic), saturation and value of uint8 RGB [h, w, 3] by `gains` [3] (Pillow's HSV)."""
    x = np.arange(256, dtype=np.float32)
    luts = [np.mod(np.round(x * gains[0]), 256), np.clip(np.round(x * gains[1]), 0, 255),
            np.clip(np.round(x * gains[2]), 0, 255)]
    hsv = np.asarray(Image.fromarray(image).convert("HSV"))
    out = np.stack([lut.astype(np.uint8)[hsv[..., i]] for i, lut in enumerate(luts)], -1)
    return np.asarray(Image.fromarray(out, "HSV").convert("RGB"))


def make_mosaic_transform(
    source: Source,
    image_size: int,
    max_boxes: int,
    *,
    prob: float = 1.0,
    scale: tuple[float, float] = (0.5, 1.5),
    translate: float = 0.1,
    hsv: Sequence[float] = (0.015, 0.7, 0.4),
    hflip: bool = True,
    fill: int = 114,
    min_box_size: float = 2.0,
    max_aspect: float = 100.0,
    area_thr: float = 0.1,
    normalize: str = "imagenet",
    close_epoch: int | None = None,
) -> Callable[[Example, np.random.Generator], Example]:
    """Training transform (module docstring): raw example + rng -> `image` float32 [S, S, 3] (`to_model_input`
    of `normalize`), `boxes` float32 [max_boxes, 4] xyxy output pixels, `labels` int32 [max_boxes], `box_mask`
    bool [max_boxes], `image_id` int32, `scale` float32 (1: a mosaic has no single original image),
    `orig_size` int32 [2] (S, S). More than `max_boxes` boxes: the first are kept (item, then partners, in
    source order). `close_epoch`: from this epoch of the Loader's rng on (`loader_epoch`), no mosaic."""
    s = int(image_size)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mosaic prob must be in [0, 1], got {prob}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: unknown; known: {', '.join(NORMALIZATIONS)}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
    n = len(source)

    def partner(index: int, fallback: Example) -> Example:
        try:
            return source[index]
        except DataError:
            return fallback

    def canvas(ex: Example, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mosaic (2S x 2S) or the letterboxed item (S x S), its boxes and labels."""
        epoch = loader_epoch(rng) if close_epoch is not None else None
        p = 0.0 if epoch is not None and epoch >= close_epoch else prob
        if rng.random() >= p:
            image, boxes, labels = _load(ex, s)
            h, w = image.shape[:2]
            out = np.full((s, s, 3), fill, np.uint8)
            top, left = (s - h) // 2, (s - w) // 2
            out[top : top + h, left : left + w] = image
            return out, boxes + np.array([left, top, left, top], np.float32), labels
        others = rng.integers(0, n, size=3)
        xc, yc = (int(v) for v in rng.uniform(s / 2, 3 * s / 2, size=2))
        out = np.full((2 * s, 2 * s, 3), fill, np.uint8)
        all_boxes, all_labels = [], []
        for q, item in enumerate([ex, *(partner(int(i), ex) for i in others)]):
            image, boxes, labels = _load(item, s)
            h, w = image.shape[:2]
            x0 = xc - w if q in (0, 2) else xc  # the image's top-left corner on the canvas
            y0 = yc - h if q in (0, 1) else yc
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x0 + w, 2 * s), min(y0 + h, 2 * s)
            out[cy0:cy1, cx0:cx1] = image[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            all_boxes.append(boxes + np.array([x0, y0, x0, y0], np.float32))
            all_labels.append(labels)
        boxes, labels = np.concatenate(all_boxes), np.concatenate(all_labels)
        return out, np.clip(boxes, 0, 2 * s), labels

    def transform(ex: Example, rng: np.random.Generator) -> Example:
        image, boxes, labels = canvas(ex, rng)
        c = image.shape[0] / 2  # canvas centre (square canvas)
        gain = float(rng.uniform(*scale))
        tx, ty = (float(v) for v in rng.uniform(0.5 - translate, 0.5 + translate, size=2) * s)
        # output = gain * (canvas - c) + (tx, ty); Pillow's AFFINE takes the inverse map (output -> canvas).
        warped = Image.fromarray(image).transform(
            (s, s), Image.AFFINE, (1 / gain, 0, c - tx / gain, 0, 1 / gain, c - ty / gain), Image.BILINEAR,
            fillcolor=(fill,) * 3)
        out_image = np.asarray(warped)
        moved = (boxes - c) * np.float32(gain) + np.array([tx, ty, tx, ty], np.float32)
        clipped = np.clip(moved, 0, s)
        w0, h0 = moved[:, 2] - moved[:, 0], moved[:, 3] - moved[:, 1]
        w1, h1 = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        aspect = np.maximum(w1 / (h1 + 1e-16), h1 / (w1 + 1e-16))
        keep = ((w1 > min_box_size) & (h1 > min_box_size) & (aspect < max_aspect)
                & (w1 * h1 / (w0 * h0 + 1e-16) > area_thr))
        boxes, labels = clipped[keep], labels[keep]
        gains = rng.uniform(-1, 1, size=3) * np.asarray(hsv, np.float32) + 1
        if np.any(gains != 1):
            out_image = _hsv(out_image, gains)
        if hflip and rng.random() < 0.5:
            out_image = out_image[:, ::-1]
            boxes = np.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], axis=1)
        k = min(len(boxes), max_boxes)
        padded_boxes = np.zeros((max_boxes, 4), np.float32)
        padded_labels = np.zeros((max_boxes,), np.int32)
        mask = np.zeros((max_boxes,), bool)
        padded_boxes[:k], padded_labels[:k], mask[:k] = boxes[:k], labels[:k], True
        return {
            "image": to_model_input(np.ascontiguousarray(out_image), normalize),
            "boxes": padded_boxes,
            "labels": padded_labels,
            "box_mask": mask,
            "image_id": np.int32(ex.get("image_id", 0)),
            "scale": np.float32(1.0),
            "orig_size": np.array([s, s], np.int32),
        }

    return transform
