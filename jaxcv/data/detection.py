"""Box-aware transforms for detection: resize keeping aspect ratio, pad to a fixed square, random
horizontal flip, scale jitter with random crop, photometric jitter. Boxes move with the image, are
clipped, and degenerate ones are dropped; ground truth is padded to `max_boxes` with a mask so every
batch has one shape (one compilation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from jaxcv.data.base import normalize

Example = dict[str, Any]


def sanitize_boxes(boxes: np.ndarray, labels: np.ndarray, height: int, width: int,
                   min_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Clips boxes [N, 4] xyxy to the image and drops NaN ones and those under `min_size` pixels."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    n = min(len(boxes), len(labels))
    boxes, labels = boxes[:n], labels[:n]
    finite = np.isfinite(boxes).all(axis=1)
    boxes = np.where(finite[:, None], boxes, 0)
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    keep = finite & (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    return boxes[keep], labels[keep]


def _photometric(image: np.ndarray, rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Brightness, contrast and saturation jitter (factors in [1 - s, 1 + s], random order-free)."""
    x = image.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray[..., None]) * s + gray[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def make_detection_transform(
    image_size: int,
    max_boxes: int,
    train: bool,
    *,
    hflip: bool = True,
    scale_jitter: tuple[float, float] | None = None,
    photometric: bool = False,
    min_box_size: float = 1.0,
) -> Callable[[Example, np.random.Generator], Example]:
    """Raw detection example -> fixed shapes:

    `image` float32 [S, S, 3] normalized; `boxes` float32 [max_boxes, 4] xyxy pixels of the output;
    `labels` int32 [max_boxes]; `box_mask` bool [max_boxes]; `image_id` int32; `scale` float32 (output
    pixels per original pixel: divide predicted boxes by it to return to the original image);
    `orig_size` int32 [2] (h, w).

    Eval: the long side is resized to S (aspect kept), then padded bottom/right. Train adds a random
    scale factor from `scale_jitter` (then a random S x S crop where the image got larger), a random
    horizontal flip and photometric jitter, all drawn from `rng`. Crowd boxes (`iscrowd`) are not
    training targets. More than `max_boxes` boxes: the first `max_boxes` are kept.
    """
    s = int(image_size)

    def transform(ex: Example, rng: np.random.Generator) -> Example:
        image = np.asarray(ex["image"])
        h, w = image.shape[:2]
        boxes = np.asarray(ex.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        labels = np.asarray(ex.get("labels", np.zeros((0,))), np.int32).reshape(-1)
        if train and "iscrowd" in ex:
            crowd = np.asarray(ex["iscrowd"], bool).reshape(-1)[: len(boxes)]
            boxes, labels = boxes[: len(crowd)][~crowd], labels[: len(crowd)][~crowd]
        boxes, labels = sanitize_boxes(boxes, labels, h, w, min_size=0.0)
        scale = s / max(h, w)
        if train and scale_jitter:
            scale *= float(rng.uniform(*scale_jitter))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        im = Image.fromarray(image)
        if (nh, nw) != (h, w):
            im = im.resize((nw, nh), Image.BILINEAR)
        resized = np.asarray(im)
        boxes = boxes * np.float32(scale)
        y0 = int(rng.integers(0, nh - s + 1)) if train and nh > s else 0
        x0 = int(rng.integers(0, nw - s + 1)) if train and nw > s else 0
        crop = resized[y0 : y0 + s, x0 : x0 + s]
        ch, cw = crop.shape[:2]
        boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
        boxes, labels = sanitize_boxes(boxes, labels, ch, cw, min_size=min_box_size)
        if train and hflip and rng.random() < 0.5:
            crop = crop[:, ::-1]
            boxes = np.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], axis=1)
        if train and photometric:
            crop = _photometric(crop, rng)
        out = np.zeros((s, s, 3), np.float32)  # 0 after normalization = the mean colour
        out[:ch, :cw] = normalize(np.ascontiguousarray(crop))
        n = min(len(boxes), max_boxes)
        padded_boxes = np.zeros((max_boxes, 4), np.float32)
        padded_labels = np.zeros((max_boxes,), np.int32)
        mask = np.zeros((max_boxes,), bool)
        padded_boxes[:n], padded_labels[:n], mask[:n] = boxes[:n], labels[:n], True
        return {
            "image": out,
            "boxes": padded_boxes,
            "labels": padded_labels,
            "box_mask": mask,
            "image_id": np.int32(ex.get("image_id", 0)),
            "scale": np.float32(scale),
            "orig_size": np.array([h, w], np.int32),
        }

    return transform
