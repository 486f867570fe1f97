"""Built-in synthetic shapes for detection and segmentation: no download, deterministic, O(1) access.

Item `i` of a split is a pure function of `np.random.default_rng([seed, split_id, i])` (split ids
as in `jaxcv.data.classification.split_id`: train 0, validation 1), so any item can be produced
on its own and two runs with the same config see the same pixels.

Each image has a textured background (smooth noise, a linear gradient or stripes) and
`min_objects..max_objects` filled shapes of random class, size (diameters from ~max(6, S/16) px
to S/2 px, log-uniform, so small objects are common), colour, rotation and position (shapes may be
cut by the image border). Later shapes are drawn over earlier ones; each instance's mask is its
*visible* part and its box is tight around that mask. An instance left with less than
`min_visible` of its own area (or fewer than `min_pixels` pixels) is removed from the image
altogether, so every visible shape pixel belongs to an annotated instance.

Raw example (see `jaxcv.data.base`): `image` uint8 [S, S, 3], `boxes` float32 [N, 4] xyxy pixels
(pixel-edge convention: a mask covering columns 3..7 has x1 = 3, x2 = 8, as COCO's mask->bbox),
`labels` int32 [N] in [0, num_classes), `masks` uint8 [N, S, S] (0/1), `semantic` uint8 [S, S]
(0 = background, class c -> c + 1) and `image_id` int (= index + 1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jaxcv.data import register_dataset
from jaxcv.data.base import cfg_get, split_id

SHAPE_NAMES = ("circle", "square", "triangle", "ellipse", "star", "ring")


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """Synthetic shapes settings. `num_classes` takes the first classes of `SHAPE_NAMES`."""

    image_size: int = 128
    num_train: int = 2000
    num_val: int = 200
    min_objects: int = 1
    max_objects: int = 6
    num_classes: int = 3
    seed: int = 0
    min_visible: float = 0.25  # instances with less of their area visible are removed
    min_pixels: int = 12  # ... as are instances with fewer visible pixels
    min_size: float = 0.0  # object diameter range in pixels (log-uniform); 0 = max(6, S/16)
    max_size: float = 0.0  # 0 = S/2

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"num_classes must be in [1, {len(SHAPE_NAMES)}], got {self.num_classes}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0 <= self.min_objects <= self.max_objects or self.max_objects < 1:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects and max_objects >= 1, got "
                f"{self.min_objects}..{self.max_objects}"
            )


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """float32 [S, S, 3] in 0..255: smooth noise, a linear gradient or stripes, plus pixel noise."""
    kind = int(rng.integers(3))
    c0, c1 = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if kind == 0:  # smooth noise: a coarse random grid upsampled bilinearly
        g = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 255, size=(g, g, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((s, s), Image.BILINEAR), np.float32) / 255.0
        img = c0 + (c1 - c0) * smooth
    elif kind == 1:  # linear gradient in a random direction
        a = rng.uniform(0, 2 * np.pi)
        t = np.cos(a) * xx + np.sin(a) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + (c1 - c0) * t[..., None]
    else:  # stripes of random period and angle, slightly soft
        a = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.3)
        t = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / period))
        img = c0 + (c1 - c0) * t[..., None]
    return img + rng.normal(0.0, rng.uniform(2.0, 14.0), size=(s, s, 3)).astype(np.float32)


def _polygon(cx: float, cy: float, radii: np.ndarray, angles: np.ndarray) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, r: float,
                rng: np.random.Generator) -> None:
    """Fills shape `kind` (index into SHAPE_NAMES) of radius ~r centred at (cx, cy) with value 1."""
    rot = rng.uniform(0, 2 * np.pi)
    if kind == 0:  # circle
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    elif kind == 1:  # square (slightly rectangular, mildly rotated)
        aspect = rng.uniform(0.8, 1.25)
        hw, hh = r * math.sqrt(aspect) * 0.8, r / math.sqrt(aspect) * 0.8
        t = rng.uniform(-0.35, 0.35)
        corners = [(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
        draw.polygon([(cx + x * math.cos(t) - y * math.sin(t), cy + x * math.sin(t) + y * math.cos(t))
                      for x, y in corners], fill=1)
    elif kind == 2:  # triangle, roughly equilateral
        angles = rot + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.2, 0.2, 3)
        draw.polygon(_polygon(cx, cy, np.full(3, r), angles), fill=1)
    elif kind == 3:  # elongated rotated ellipse
        ratio = rng.uniform(0.35, 0.6)
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x, y = r * np.cos(t), r * ratio * np.sin(t)
        draw.polygon([(cx + a * math.cos(rot) - b * math.sin(rot), cy + a * math.sin(rot) + b * math.cos(rot))
                      for a, b in zip(x, y, strict=True)], fill=1)
    elif kind == 4:  # five-pointed star
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon(_polygon(cx, cy, radii, angles), fill=1)
    else:  # ring: the hole shows what is behind
        ri = r * rng.uniform(0.45, 0.6)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)


def render_shapes(config: ShapesConfig, split: int, index: int) -> dict[str, Any]:
    """Item `index` of split id `split` (see the module docstring for the returned fields)."""
    rng = np.random.default_rng([config.seed, split, index])
    s = config.image_size
    image = _background(rng, s)
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    d_min = config.min_size or max(6.0, s / 16)
    d_max = config.max_size or s / 2
    pad = int(math.ceil(d_max / 2)) + 2  # shapes are drawn on a padded canvas to know their full area
    full, labels, colours = [], [], []
    for _ in range(n):
        kind = int(rng.integers(config.num_classes))
        r = float(np.exp(rng.uniform(np.log(d_min), np.log(d_max)))) / 2
        cx, cy = rng.uniform(0, s, size=2)
        canvas = Image.new("L", (s + 2 * pad, s + 2 * pad), 0)
        _draw_shape(ImageDraw.Draw(canvas), kind, cx + pad, cy + pad, r, rng)
        m = np.asarray(canvas, np.uint8)
        full.append((m[pad:pad + s, pad:pad + s].astype(bool), int(m.sum())))
        labels.append(kind)
        colours.append(rng.uniform(0, 255, size=3))
    # Visible part = pixels where an instance is the topmost; drop nearly hidden ones and redo once
    # (removing an instance only uncovers the others).
    keep = list(range(n))
    for _ in range(2):
        top = np.full((s, s), -1, np.int64)
        for i in keep:
            top[full[i][0]] = i
        visible = {i: int((top == i).sum()) for i in keep}
        keep = [i for i in keep if visible[i] >= max(config.min_pixels, config.min_visible * full[i][1])]
    top = np.full((s, s), -1, np.int64)
    for i in keep:
        top[full[i][0]] = i
        shade = rng.normal(0.0, 6.0, size=(int(full[i][0].sum()), 3))
        image[full[i][0]] = colours[i] + shade
    masks = np.stack([top == i for i in keep]).astype(np.uint8) if keep else np.zeros((0, s, s), np.uint8)
    boxes = np.zeros((len(keep), 4), np.float32)
    for j, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        boxes[j] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    labels_arr = np.asarray([labels[i] for i in keep], np.int32)
    semantic = np.zeros((s, s), np.uint8)
    for j, m in enumerate(masks):
        semantic[m.astype(bool)] = labels_arr[j] + 1
    return {
        "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
        "boxes": boxes,
        "labels": labels_arr,
        "masks": masks,
        "semantic": semantic,
        "image_id": index + 1,
    }


# --------------------------------------------------------------------------------------------------
# Source
# --------------------------------------------------------------------------------------------------


class ShapesDetection:
    """Random-access synthetic shapes source for one split ("train" or "validation").

    `ShapesDetection(config, split)` or `ShapesDetection(split=..., image_size=..., ...)` with
    `ShapesConfig` fields as keyword arguments. For segmentation use `segmentation_example(i)`
    (`{"image", "mask"}` with `num_classes + 1` classes, background 0).
    """

    def __init__(self, config: ShapesConfig | None = None, split: str = "train", **kwargs: Any):
        self.config = dataclasses.replace(config or ShapesConfig(), **kwargs)
        self.split = split
        self.split_id = split_id(split)
        self.num_classes = self.config.num_classes
        self.class_names = list(SHAPE_NAMES[: self.num_classes])
        self.category_ids = list(range(1, self.num_classes + 1))  # COCO category id = label + 1
        self._length = self.config.num_train if self.split_id == 0 else self.config.num_val
        self._gt: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} shapes ({self.split})")
        return render_shapes(self.config, self.split_id, index)

    def segmentation_example(self, index: int) -> dict[str, Any]:
        """`{"image": uint8 [S, S, 3], "mask": uint8 [S, S]}` with 0 = background, class c -> c + 1."""
        ex = self[index]
        return {"image": ex["image"], "mask": ex["semantic"]}

    def coco_ground_truth(self) -> dict[str, Any]:
        """The split as a COCO-format dict (images, annotations, categories), for COCO evaluation.

        `bbox` is the tight xywh box of the visible mask; `area` is the visible mask's pixel count
        (COCO uses the segment area too); `iscrowd` 0; `category_id` = label + 1; image ids = index + 1.
        """
        if self._gt is None:
            s = self.config.image_size
            images, anns = [], []
            for i in range(len(self)):
                ex = self[i]
                images.append({"id": ex["image_id"], "height": s, "width": s, "file_name": f"{i:06d}.png"})
                for box, label, mask in zip(ex["boxes"], ex["labels"], ex["masks"], strict=True):
                    x1, y1, x2, y2 = (float(v) for v in box)
                    anns.append({
                        "id": len(anns) + 1,  # pycocotools treats annotation id 0 as "unmatched"
                        "image_id": ex["image_id"],
                        "category_id": int(label) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                    })
            cats = [{"id": c + 1, "name": name, "supercategory": "shape"} for c, name in enumerate(self.class_names)]
            self._gt = {"images": images, "annotations": anns, "categories": cats}
        return self._gt


def shapes_config_from(data_config: Any) -> ShapesConfig:
    """ShapesConfig from `config.data`: `image_size` (128), `num_train` (2000), `num_val` (200),
    `min_objects` (1), `max_objects` (6), `shape_classes` (3; number of shape classes), `seed` (0),
    `min_visible` (0.25, visible fraction below which an occluded instance is removed), `min_size` /
    `max_size` (object diameters in pixels; 0 = S/16 and S/2)."""
    d = ShapesConfig()
    return ShapesConfig(
        image_size=int(cfg_get(data_config, "image_size", d.image_size)),
        num_train=int(cfg_get(data_config, "num_train", d.num_train)),
        num_val=int(cfg_get(data_config, "num_val", d.num_val)),
        min_objects=int(cfg_get(data_config, "min_objects", d.min_objects)),
        max_objects=int(cfg_get(data_config, "max_objects", d.max_objects)),
        num_classes=int(cfg_get(data_config, "shape_classes", d.num_classes)),
        seed=int(cfg_get(data_config, "seed", d.seed)),
        min_visible=float(cfg_get(data_config, "min_visible", d.min_visible)),
        min_size=float(cfg_get(data_config, "min_size", d.min_size)),
        max_size=float(cfg_get(data_config, "max_size", d.max_size)),
    )


def shapes(data_config: Any, split: str) -> ShapesDetection:
    """`DATASETS` factory "shapes" (fields: see `shapes_config_from`)."""
    return ShapesDetection(shapes_config_from(data_config), split)


SHAPES_KEYS = ("num_train", "num_val", "min_objects", "max_objects", "shape_classes", "seed", "min_visible",
               "min_size", "max_size")
register_dataset("shapes", shapes, SHAPES_KEYS)
