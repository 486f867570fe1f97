"""Data interfaces shared by every source and transform.

A *source* is random access: `len(source)` and `source[i]` give one raw, decoded example as a dict
of numpy arrays. Random access (rather than a stream) is what makes resume exact: the loader derives
the order of epoch `e` and the augmentation randomness of item `i` from `(seed, e, i)` alone.

Raw examples, by task:
- classification: `image` uint8 [H, W, 3], `label` int (or `labels` int32 [L] for multi-label).
- detection: `image` uint8 [H, W, 3], `boxes` float32 [N, 4] xyxy pixels, `labels` int32 [N] in
  [0, num_classes), `image_id` int, optional `iscrowd` bool [N] and `masks` uint8 [N, H, W].
- segmentation: `image` uint8 [H, W, 3], `mask` uint8 [H, W] class ids (IGNORE_INDEX = void).

A *transform* `(example, rng: np.random.Generator) -> example` maps a raw example to fixed shapes,
so every batch of a split has one shape and the jitted step compiles once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

IGNORE_INDEX = 255
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class DataError(ValueError):
    """Bad input data. The message names the file (or dataset/index) and the problem."""


class Source(Protocol):
    """Random-access dataset of raw examples (see module docstring)."""

    num_classes: int
    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image file as uint8 [H, W, 3] RGB; raises DataError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 scaled to [0, 1] then standardized with ImageNet mean/std
    (torchvision's GeneralizedRCNNTransform and classification presets do the same)."""
    return ((image.astype(np.float32) / 255.0) - IMAGENET_MEAN) / IMAGENET_STD


def denormalize(image: np.ndarray) -> np.ndarray:
    """Inverse of `normalize`, to uint8 for drawing."""
    x = (np.asarray(image, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
