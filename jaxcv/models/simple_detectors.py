"""The teaching detectors of the fastai course (part 2, "pascal" and "pascal-multi" notebooks) in linen.

- `Localizer` ("localizer"): a backbone, global pooling, then one head regressing a single box (4
  sigmoid-normalized numbers) and one classifying it: the largest-object localization exercise.

The SSD-style grid detector of the same course is `jaxcv.detectors.ssd` (model and head in one file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models import MODELS
from jaxcv.models.backbones import create_backbone, deepest_level

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


def backbone_features(backbone: str, kwargs: Mapping[str, Any] | None, dtype: Dtype, param_dtype: Dtype,
                      x: Array, train: bool) -> Array:
    """Runs registered backbone `backbone` as submodule "backbone" of the calling module (call it inside a
    compact method) and returns its deepest level [B, h, w, C] (`jaxcv.models.backbones`)."""
    body = create_backbone(backbone, num_classes=0, dtype=dtype, param_dtype=param_dtype, name="backbone",
                           **dict(kwargs or {}))
    return body(x, train=train)[deepest_level(body.feature_info())]


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
    """Largest-object localizer: any registered backbone's deepest level -> global average pool (or,
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
        f = backbone_features(self.backbone, self.backbone_kwargs, self.dtype, self.param_dtype, x, train)
        f = f.astype(jnp.float32)
        f = jnp.mean(f, axis=(1, 2)) if self.pool == "avg" else f.reshape(f.shape[0], -1)  # [B, C | h*w*C]
        if self.hidden:
            f = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden")(f))
            f = nn.Dropout(self.dropout_rate, deterministic=not train)(f).astype(jnp.float32)
        raw = nn.Dense(4, dtype=jnp.float32, param_dtype=self.param_dtype, name="box_head")(f)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="class_head")(f)
        return {"boxes": relative_boxes(raw, self.box_format), "logits": logits}


@MODELS.register("localizer")
def localizer(**kwargs: Any) -> Localizer:
    return Localizer(**kwargs)


