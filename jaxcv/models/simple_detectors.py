"""The teaching detectors of the fastai course (part 2, "pascal" and "pascal-multi" notebooks) in linen.

- `Localizer` ("localizer"): a backbone, global pooling, then one head regressing a single box (4
  sigmoid-normalized numbers) and one classifying it: the largest-object localization exercise.
- `SSDGrid` ("ssd_grid"): an SSD-style detector on a few coarse square grids (e.g. 4x4, 2x2, 1x1
  cells) of the backbone's last feature map, with `jaxcv.ops.anchors.grid_anchors` anchors. Its
  outputs have RetinaNet's keys and flattening order (grid, cells row-major, then the anchors of a
  cell), so `jaxcv.tasks.detection` trains and decodes it with RetinaNet's matching, loss and
  post-processing (`config.anchors.kind = "grid"`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models import MODELS
from jaxcv.models.layers import Conv

Array = jax.Array
Dtype = Any


def adaptive_avg_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging weights of torch `AdaptiveAvgPool1d`: output i averages inputs
    floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1 (so it also upsamples by copying)."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool2d(x: Array, out_hw: tuple[int, int]) -> Array:
    """x [B, H, W, C] -> [B, oh, ow, C], as torch `AdaptiveAvgPool2d` (separable static weights)."""
    mh = jnp.asarray(adaptive_avg_pool_matrix(x.shape[1], out_hw[0]), x.dtype)
    mw = jnp.asarray(adaptive_avg_pool_matrix(x.shape[2], out_hw[1]), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw)


class ConvBackbone(nn.Module):
    """A plain CNN from scratch, for quick CPU runs and tests: per entry of `widths`, a 3x3 stride-2
    conv + BatchNorm + ReLU. `__call__(x: [B, H, W, C], train) -> [B, H / 2**n, W / 2**n, widths[-1]]`
    (ceil per step)."""

    widths: Sequence[int] = (32, 64, 128, 256, 256)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = jnp.asarray(x, self.dtype)
        for i, width in enumerate(self.widths):
            x = Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
        return x


def _backbone_features(backbone: str, kwargs: Mapping[str, Any], dtype: Dtype, param_dtype: Dtype,
                       x: Array, train: bool, need_map: bool) -> Array:
    """Runs the backbone: ResNets give their last map `C5` [B, h, w, C], "conv" (`ConvBackbone`) its
    last map; `small_cnn` (no map exposed) gives its hidden `features` [B, hidden]. `need_map`
    requires a map."""
    if backbone == "conv":
        return ConvBackbone(dtype=dtype, param_dtype=param_dtype, name="backbone", **dict(kwargs))(x, train=train)
    if backbone.startswith("resnet"):
        out = MODELS.get(backbone)(num_classes=0, dtype=dtype, param_dtype=param_dtype, name="backbone",
                                   **dict(kwargs))(x, train=train)
        return out["C5"]
    if backbone == "small_cnn" and not need_map:
        # small_cnn always ends with a classifier; one output unit keeps it tiny (it stays unused).
        out = MODELS.get(backbone)(num_classes=1, dtype=dtype, param_dtype=param_dtype, name="backbone",
                                   **dict(kwargs))(x, train=train)
        return out["features"]
    kinds = "resnet* or conv" if need_map else "resnet*, conv or small_cnn"
    raise ValueError(f"unsupported backbone {backbone!r}; use {kinds}")


def relative_boxes(raw: Array, box_format: str = "cxcywh") -> Array:
    """Box head outputs [..., 4] -> xyxy boxes relative to the image [..., 4] through a sigmoid:
    "cxcywh" reads (cx, cy, w, h) (the box may reach past the image by up to half its size, never
    inverted); "xyxy" reads two corners (inside the image) and sorts each pair, so x1 <= x2, y1 <= y2."""
    s = jax.nn.sigmoid(raw.astype(jnp.float32))
    if box_format == "cxcywh":
        half = s[..., 2:] / 2
        return jnp.concatenate([s[..., :2] - half, s[..., :2] + half], axis=-1)
    if box_format == "xyxy":
        return jnp.concatenate([jnp.minimum(s[..., :2], s[..., 2:]), jnp.maximum(s[..., :2], s[..., 2:])], axis=-1)
    raise ValueError(f"box_format must be 'cxcywh' or 'xyxy', got {box_format!r}")


class Localizer(nn.Module):
    """Largest-object localizer: backbone (resnet*, conv or small_cnn) -> global average pool (or,
    `pool="flatten"`, the whole last map flattened, as the course's head does: it keeps where things
    are) -> [Dense(hidden) -> ReLU -> dropout] -> `box_head` (4, sigmoid) and `class_head` (num_classes).

    `__call__(x: [B, H, W, 3], train) -> dict`: `boxes` [B, 4] float32 xyxy relative to the image
    (0..1), `logits` [B, num_classes] float32. `box_format="cxcywh"` reads the 4 sigmoids as
    centre/size (always a valid box); `"xyxy"` reads them as corners like the course (sigmoid * size),
    then sorts each pair so x1 <= x2 and y1 <= y2. `hidden=0` puts the heads on the pooled features.
    """

    num_classes: int
    backbone: str = "resnet18"
    backbone_kwargs: Mapping[str, Any] | None = None
    hidden: int = 256
    dropout_rate: float = 0.25
    box_format: str = "cxcywh"  # "cxcywh" | "xyxy"
    pool: str = "avg"  # "avg" | "flatten" (a map's size then fixes the hidden layer's input size)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if self.box_format not in ("cxcywh", "xyxy"):
            raise ValueError(f"box_format must be 'cxcywh' or 'xyxy', got {self.box_format!r}")
        if self.pool not in ("avg", "flatten"):
            raise ValueError(f"pool must be 'avg' or 'flatten', got {self.pool!r}")
        f = _backbone_features(self.backbone, self.backbone_kwargs or {}, self.dtype, self.param_dtype,
                               x, train, need_map=False)
        f = f.astype(jnp.float32)
        if f.ndim == 4:
            f = jnp.mean(f, axis=(1, 2)) if self.pool == "avg" else f.reshape(f.shape[0], -1)  # [B, C | h*w*C]
        if self.hidden:
            f = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden")(f))
            f = nn.Dropout(self.dropout_rate, deterministic=not train)(f).astype(jnp.float32)
        raw = nn.Dense(4, dtype=jnp.float32, param_dtype=self.param_dtype, name="box_head")(f)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="class_head")(f)
        return {"boxes": relative_boxes(raw, self.box_format), "logits": logits}


class SSDGrid(nn.Module):
    """SSD-style detector on square grids of one backbone feature map (fastai "pascal-multi").

    Backbone's last map (`C5` of a ResNet, or `ConvBackbone`'s with backbone="conv") -> 3x3 conv + BN +
    ReLU (`neck`); then per grid k in `grid_sizes` (in order, each
    from the previous grid's features): a 3x3 conv + BN + ReLU (stride 2 while the map is larger
    than k), adaptive average pooling to exactly k x k when the strides do not land on k, and two 3x3
    output convs: `cls_{i}` (num_anchors * num_classes, prior-probability bias as RetinaNet) and
    `box_{i}` (num_anchors * 4, BoxCoder deltas).

    `__call__(x: [B, H, W, 3], train) -> dict`: `cls_logits` [B, A, num_classes] and `bbox_regression`
    [B, A, 4] (float32), A = sum_k k*k*num_anchors, in `grid_anchors` order (grid, cells row-major
    (y, x), then the anchors of a cell; channel a*K + c as RetinaNet heads).
    """

    num_classes: int
    num_anchors: int = 9
    grid_sizes: Sequence[int] = (4, 2, 1)
    backbone: str = "resnet18"
    backbone_kwargs: Mapping[str, Any] | None = None
    channels: int = 256
    dropout_rate: float = 0.0
    freeze_backbone_bn: bool = False
    prior_probability: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _conv_bn(self, x: Array, stride: int, train: bool, name: str) -> Array:
        x = Conv(self.channels, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False,
                    dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"{name}_bn")(x)
        x = nn.relu(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x) if self.dropout_rate else x

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if not self.grid_sizes or min(self.grid_sizes) < 1:
            raise ValueError(f"grid_sizes must be positive, got {tuple(self.grid_sizes)}")
        c5 = _backbone_features(self.backbone, self.backbone_kwargs or {}, self.dtype, self.param_dtype,
                                x, train and not self.freeze_backbone_bn, need_map=True)
        f = self._conv_bn(c5, 1, train, "neck")
        p = self.prior_probability
        std001 = nn.initializers.normal(0.01)
        cls_out, box_out = [], []
        for i, k in enumerate(self.grid_sizes):
            stride = 2 if min(f.shape[1], f.shape[2]) > k else 1
            f = self._conv_bn(f, stride, train, f"grid{i}")
            if f.shape[1:3] != (k, k):
                f = adaptive_avg_pool2d(f, (k, k))
            cls = Conv(self.num_anchors * self.num_classes, (3, 3), padding=((1, 1), (1, 1)),
                          kernel_init=std001, bias_init=nn.initializers.constant(-math.log((1 - p) / p)),
                          dtype=self.dtype, param_dtype=self.param_dtype, name=f"cls_{i}")(f)
            box = Conv(self.num_anchors * 4, (3, 3), padding=((1, 1), (1, 1)), kernel_init=std001,
                          dtype=self.dtype, param_dtype=self.param_dtype, name=f"box_{i}")(f)
            b = x.shape[0]
            cls_out.append(cls.astype(jnp.float32).reshape(b, -1, self.num_classes))
            box_out.append(box.astype(jnp.float32).reshape(b, -1, 4))
        return {"cls_logits": jnp.concatenate(cls_out, axis=1), "bbox_regression": jnp.concatenate(box_out, axis=1)}


@MODELS.register("localizer")
def localizer(**kwargs: Any) -> Localizer:
    return Localizer(**kwargs)


@MODELS.register("ssd_grid")
def ssd_grid(**kwargs: Any) -> SSDGrid:
    if "grid_sizes" in kwargs:
        kwargs["grid_sizes"] = tuple(int(k) for k in kwargs["grid_sizes"])
    return SSDGrid(**kwargs)
