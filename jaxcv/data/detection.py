"""Box-aware transforms for detection: resize keeping aspect ratio, pad to a fixed square, random
horizontal flip, scale jitter with random crop, photometric jitter. Boxes move with the image, are
clipped, and degenerate ones are dropped; ground truth is padded to `max_boxes` with a mask so every
batch has one shape (one compilation).

Box policy (the "fail vs skip" decision on bad annotations belongs to the sources; here a box that
cannot be a target is simply left out): non-finite boxes, empty or inverted ones (x2 <= x1 or
y2 <= y1) and boxes with no area left after clipping to the image (fully outside) are dropped;
the rest are clipped. After resize/crop, boxes smaller than `min_box_size` output pixels on either
side are dropped. `boxes` and `labels` of different lengths are cut to the shorter one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxcv.data import register_dataset
from jaxcv.data.base import IMAGENET_MEAN, IMAGENET_STD, DataError, cfg_get, normalize
from jaxcv.data.tfds_detection import COCO_CATEGORY_IDS, COCO_CLASS_NAMES

Example = dict[str, Any]
# Model-input conventions (`config.preprocess.normalize`): "imagenet" (torchvision's mean/std standardization) and
# "unit" (pixels / 255 in [0, 1], RGB: what darknet's and ultralytics' weights expect).
NORMALIZATIONS = ("imagenet", "unit")

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB <-> YIQ (NTSC). Rotating the (I, Q) chroma plane shifts hue and keeps luma: a cheap hue jitter.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def sanitize_boxes(boxes: np.ndarray, labels: np.ndarray, height: int, width: int,
                   min_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Drops non-finite and inverted/empty boxes, clips the rest to the image, then drops those
    under `min_size` pixels (and any with no area left). boxes: [N, 4] xyxy, labels: [N]."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    n = min(len(boxes), len(labels))
    boxes, labels = boxes[:n], labels[:n]
    finite = np.isfinite(boxes).all(axis=1)
    boxes = np.where(finite[:, None], boxes, 0)
    proper = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = finite & proper & (bw > 0) & (bh > 0) & (bw >= min_size) & (bh >= min_size)
    return boxes[keep], labels[keep]


def to_model_input(image: np.ndarray, mode: str = "imagenet") -> np.ndarray:
    """uint8 [..., 3] RGB -> float32 model input by `mode` (`NORMALIZATIONS`)."""
    if mode == "unit":
        return image.astype(np.float32) / np.float32(255.0)
    if mode != "imagenet":
        raise ValueError(f"normalize={mode!r}: unknown; known: {', '.join(NORMALIZATIONS)}")
    return normalize(image)


def from_model_input(image: np.ndarray, mode: str = "imagenet") -> np.ndarray:
    """Inverse of `to_model_input`, to uint8 for drawing."""
    x = np.asarray(image, np.float32)
    x = x * 255.0 if mode == "unit" else (x * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def pad_color(mode: str = "imagenet", pad_value: float = -1.0) -> np.ndarray:
    """float32 [3]: the model-input value of padding grey `pad_value` (0..255 pixels), or with -1 of the mean
    colour (exactly 0 after "imagenet" normalization, torchvision's zero padding of normalized images)."""
    if pad_value < 0:
        return np.zeros(3, np.float32) if mode == "imagenet" else IMAGENET_MEAN.copy()
    grey = np.full(3, pad_value, np.float32)
    return ((grey / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32) if mode == "imagenet" else grey / 255.0


def _photometric(image: np.ndarray, rng: np.random.Generator, strength: float = 0.2,
                 hue: float = 0.03) -> np.ndarray:
    """Brightness, contrast, saturation (factors in [1 - strength, 1 + strength]) then a hue shift of
    up to `hue` turns (a rotation in YIQ chroma), in that fixed order, on uint8 [h, w, 3]; clipped to
    0..255 once at the end. Like torchvision's ColorJitter(0.2, 0.2, 0.2, 0.03) without its random
    order. All four steps are affine in RGB, so they are composed into one 3x3 matrix and an offset."""
    x = image.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    angle = rng.uniform(-hue, hue) * 2 * np.pi
    mean = b * float(x.mean())  # contrast pivots on the mean after the brightness step
    saturation = s * np.eye(3) + (1 - s) * np.outer(_LUMA, np.ones(3))  # row vectors: x @ saturation
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    tail = saturation @ (_YIQ2RGB @ rot @ _RGB2YIQ).T
    matrix = (b * c * tail).astype(np.float32)
    offset = ((1 - c) * mean * np.ones(3) @ tail).astype(np.float32)
    return np.clip(np.round(x @ matrix + offset), 0, 255).astype(np.uint8)


def make_detection_transform(
    image_size: int,
    max_boxes: int,
    train: bool,
    *,
    hflip: bool = True,
    scale_jitter: tuple[float, float] | None = None,
    photometric: bool = False,
    min_box_size: float = 1.0,
    normalize: str = "imagenet",
    pad_value: float = -1.0,
) -> Callable[[Example, np.random.Generator], Example]:
    """Raw detection example -> fixed shapes:

    `image` float32 [S, S, 3] normalized (`to_model_input(normalize)`); `boxes` float32 [max_boxes, 4] xyxy
    pixels of the output; `labels` int32 [max_boxes]; `box_mask` bool [max_boxes]; `image_id` int32; `scale`
    float32 (output pixels per original pixel: divide predicted boxes by it to return to the original image);
    `orig_size` int32 [2] (h, w).

    Eval: the long side is resized to S (aspect kept, Pillow bilinear), then padded bottom/right with
    `pad_color(normalize, pad_value)`: by default 0 (= the mean colour after normalization, as torchvision pads
    after normalizing); `normalize="unit"` with grey 114 is ultralytics' input and letterbox. Train adds a
    random scale factor from `scale_jitter` (then a random S x S crop where the image got larger,
    padding where smaller), a random horizontal flip and photometric jitter, all drawn from `rng`.
    Only the crop window is resampled, so large jitter factors cost no more than S x S pixels.
    Crowd boxes (`iscrowd`) are not training targets (torchvision's reference drops them too).
    More than `max_boxes` boxes: the first `max_boxes` are kept (source order, not by size).
    """
    s = int(image_size)
    if scale_jitter is not None and not 0 < scale_jitter[0] <= scale_jitter[1]:
        raise ValueError(f"scale_jitter must be (lo, hi) with 0 < lo <= hi, got {scale_jitter}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: unknown; known: {', '.join(NORMALIZATIONS)}")
    fill = pad_color(normalize, pad_value)

    def transform(ex: Example, rng: np.random.Generator) -> Example:
        image = np.asarray(ex["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
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
        y0 = int(rng.integers(0, nh - s + 1)) if train and nh > s else 0
        x0 = int(rng.integers(0, nw - s + 1)) if train and nw > s else 0
        ch, cw = min(s, nh - y0), min(s, nw - x0)
        if (nh, nw) == (h, w):
            crop = image[y0 : y0 + ch, x0 : x0 + cw]
        else:  # resample only the window [x0, x0 + cw) x [y0, y0 + ch) of the (virtual) resized image
            sx, sy = nw / w, nh / h
            window = (x0 / sx, y0 / sy, (x0 + cw) / sx, (y0 + ch) / sy)
            crop = np.asarray(Image.fromarray(image).resize((cw, ch), Image.BILINEAR, box=window))
        boxes = boxes * np.float32(scale) - np.array([x0, y0, x0, y0], np.float32)
        boxes, labels = sanitize_boxes(boxes, labels, ch, cw, min_size=min_box_size)
        if train and hflip and rng.random() < 0.5:
            crop = crop[:, ::-1]
            boxes = np.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], axis=1)
        if train and photometric:
            crop = _photometric(crop, rng)
        out = np.empty((s, s, 3), np.float32)
        out[...] = fill
        out[:ch, :cw] = to_model_input(np.ascontiguousarray(crop), normalize)
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


class ClassNames:
    """A detection source with classes and no images, for prediction with converted weights (`--mode=predict`
    needs the class names and count, never an image of a dataset). `data.name = "class_names"`,
    `data.class_names`: "coco" (COCO's 80 detection classes, with their official category ids, as darknet's
    `coco.names` and ultralytics' `coco.yaml` order them), a file with one name per line (darknet's `.names`),
    or comma-separated names (category ids 1..K)."""

    def __init__(self, spec: str):
        spec = str(spec).strip()
        if spec == "coco":
            names, ids = list(COCO_CLASS_NAMES), list(COCO_CATEGORY_IDS)
        else:
            path = Path(spec).expanduser()
            text = path.read_text() if path.is_file() else spec.replace(",", "\n")
            names = [n.strip() for n in text.splitlines() if n.strip()]
            ids = list(range(1, len(names) + 1))
        if not names:
            raise DataError(f"data.class_names={spec!r} names no class: give 'coco', a .names file or 'a,b,c'")
        self.class_names, self.category_ids, self.num_classes = names, ids, len(names)

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> Example:
        raise IndexError(f"data.name='class_names' holds no images (item {index}): it serves prediction only")

    def coco_ground_truth(self) -> dict[str, Any]:
        return {"images": [], "annotations": [],
                "categories": [{"id": i, "name": n} for i, n in zip(self.category_ids, self.class_names, strict=True)]}


def class_names(data_config: Any, split: str) -> ClassNames:
    return ClassNames(cfg_get(data_config, "class_names", "coco"))


register_dataset("class_names", class_names, ("class_names",))
