"""Static anchor generation in numpy, computed once per image size (outside jit).

Anchor order everywhere: pyramid level (coarse index = level order in the config), then feature-map
locations row-major over (y, x), then the anchors of one location. Within a location the torchvision
order is aspect-ratio-major: for each ratio (h / w), each scale. Models' heads must emit their
per-location outputs in the same order (torchvision RetinaNet heads do: [N, A*K, H, W] -> [N, H*W*A, K]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class AnchorConfig:
    """Multi-level anchor layout (RetinaNet defaults).

    levels: pyramid levels (stride ~ 2**level). sizes: base size per level (torchvision presets).
    scales: multipliers of the base size per location. aspect_ratios: height / width.
    convention:
      "torchvision": base anchors `round(±size*scale*ratio_factor/2)` with `size*scale` truncated to
        int (torchvision's RetinaNet builds `(x, int(x*2**(1/3)), int(x*2**(2/3)))`), centres at
        i * stride, stride = image_size // feature_size (torchvision AnchorGenerator).
      "tf_model_garden": centres at (i + 0.5) * 2**level, size = anchor_scale * 2**level * scale,
        no rounding (TF Model Garden `Anchor`); `sizes` is ignored.
    """

    levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    convention: Literal["torchvision", "tf_model_garden"] = "torchvision"
    anchor_scale: float = 4.0

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.scales) * len(self.aspect_ratios)


def feature_sizes(image_hw: Sequence[int], levels: Sequence[int]) -> list[tuple[int, int]]:
    """(H, W) of each pyramid level: each stride-2 conv (with padding) maps n -> ceil(n / 2), so level l
    has ceil(n / 2**l) after repeated halving (ResNet stem conv+maxpool, stages, P6/P7 convs)."""
    out = []
    for level in levels:
        h, w = int(image_hw[0]), int(image_hw[1])
        for _ in range(level):
            h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def _torchvision_base_anchors(size: float, scales: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """[R*S, 4] zero-centred anchors, ratio-major, rounded half-to-even like torch.round (float32)."""
    sizes = np.array([int(size * s) for s in scales], np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def _grid(
    base: np.ndarray, grid_hw: tuple[int, int], stride_hw: tuple[float, float], offset: float
) -> np.ndarray:
    """Places `base` [P, 4] at every location of a grid: -> [H*W*P, 4] (row-major, then P)."""
    ys = (np.arange(grid_hw[0], dtype=np.float32) + offset) * np.float32(stride_hw[0])
    xs = (np.arange(grid_hw[1], dtype=np.float32) + offset) * np.float32(stride_hw[1])
    sy, sx = np.meshgrid(ys, xs, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


def generate_anchors(
    image_hw: Sequence[int], cfg: AnchorConfig = AnchorConfig()
) -> tuple[np.ndarray, list[int]]:
    """All anchors for one (padded) image size.

    Returns (anchors [A, 4] float32 xyxy pixels, num_anchors_per_level [len(levels)]), ordered as in
    the module docstring. With the torchvision convention this equals torchvision's AnchorGenerator
    for RetinaNet (`anchors` of retinanet_io.npz for 320x448).
    """
    if cfg.convention not in ("torchvision", "tf_model_garden"):
        raise ValueError(f"unknown anchor convention {cfg.convention!r}")
    if cfg.convention == "torchvision" and len(cfg.sizes) != len(cfg.levels):
        raise ValueError(f"need one size per level: sizes={cfg.sizes}, levels={cfg.levels}")
    out, counts = [], []
    for i, (level, (fh, fw)) in enumerate(zip(cfg.levels, feature_sizes(image_hw, cfg.levels), strict=True)):
        if cfg.convention == "torchvision":
            base = _torchvision_base_anchors(cfg.sizes[i], cfg.scales, cfg.aspect_ratios)
            stride = (int(image_hw[0]) // fh, int(image_hw[1]) // fw)
            anchors = _grid(base, (fh, fw), stride, 0.0)
        else:
            stride = 2.0**level
            rows = []
            for ratio in cfg.aspect_ratios:
                for scale in cfg.scales:
                    size = cfg.anchor_scale * stride * scale
                    half_w = size / math.sqrt(ratio) / 2
                    half_h = size * math.sqrt(ratio) / 2
                    rows.append([-half_w, -half_h, half_w, half_h])
            anchors = _grid(np.asarray(rows, np.float32), (fh, fw), (stride, stride), 0.5)
        out.append(anchors)
        counts.append(len(anchors))
    return np.concatenate(out, axis=0), counts


def grid_anchors(
    image_hw: Sequence[int],
    grid_sizes: Sequence[int] = (4, 2, 1),
    zooms: Sequence[float] = (0.75, 1.0, 1.3),
    ratios: Sequence[float] = (1.0, 2.0, 0.5),
) -> tuple[np.ndarray, list[int]]:
    """SSD-style anchors for the teaching detector: for each k in grid_sizes, a k x k grid of cells
    over the image; each cell gets one anchor per (zoom, ratio) centred on the cell, of size
    zoom * cell with height / width = ratio (h = zoom*cell_h*sqrt(r), w = zoom*cell_w/sqrt(r)).
    Not clipped to the image. Order: grid, cells row-major (y, x), then zoom-major (zoom, ratio).

    Returns (anchors [sum_k k*k*Z*R, 4] float32 xyxy pixels, anchors per grid).
    """
    height, width = float(image_hw[0]), float(image_hw[1])
    out, counts = [], []
    for k in grid_sizes:
        cell_h, cell_w = height / k, width / k
        base = []
        for zoom in zooms:
            for ratio in ratios:
                hh = zoom * cell_h * math.sqrt(ratio) / 2
                hw = zoom * cell_w / math.sqrt(ratio) / 2
                base.append([-hw, -hh, hw, hh])
        anchors = _grid(np.asarray(base, np.float32), (k, k), (cell_h, cell_w), 0.5)
        out.append(anchors)
        counts.append(len(anchors))
    return np.concatenate(out, axis=0), counts
