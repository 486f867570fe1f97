"""The SSD-style grid detector of the fastai course (part 2, "pascal-multi"): model and head in one file.

`SSDGrid` (`model.name = "ssd_grid"`) pools one backbone map onto square grids of cells (e.g. 4x4, 2x2,
1x1); `SSDHead` (`head = "ssd"`) gives each cell `jaxcv.ops.anchors.grid_anchors` anchors (zooms x
ratios, `config.anchors.grid_sizes / zooms / ratios`) and trains and decodes them with RetinaNet's
matching, box coder and post-processing; the classification loss is focal or plain sigmoid BCE
(`loss.classification = "bce"`), the course's choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxcv.detectors import HEADS
from jaxcv.detectors.retinanet import AnchorHead, _fail
from jaxcv.models import MODELS
from jaxcv.models.layers import Conv
from jaxcv.models.simple_detectors import adaptive_avg_pool2d, backbone_features
from jaxcv.ops.anchors import grid_anchors

Array = jax.Array
Dtype = Any


class SSDGrid(nn.Module):
    """SSD-style detector on square grids of one backbone feature map (fastai "pascal-multi").

    Any registered backbone's deepest level (`C5` of a ResNet) -> 3x3 conv + BN +
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
        c5 = backbone_features(self.backbone, self.backbone_kwargs, self.dtype, self.param_dtype, x,
                               train and not self.freeze_backbone_bn)
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


@MODELS.register("ssd_grid")
def ssd_grid(**kwargs: Any) -> SSDGrid:
    if "grid_sizes" in kwargs:
        kwargs["grid_sizes"] = tuple(int(k) for k in kwargs["grid_sizes"])
    return SSDGrid(**kwargs)


@HEADS.register("ssd")
class SSDHead(AnchorHead):
    """Grid anchors (`config.anchors`: grid_sizes, zooms, ratios) with RetinaNet's assignment, loss and
    decoding; the model gets `num_anchors` (zooms x ratios) and `grid_sizes` from here."""

    name = "ssd"

    @classmethod
    def default_config(cls, preset: str = "") -> dict[str, ml_collections.ConfigDict]:
        sections = super().default_config()
        sections["anchors"] = ml_collections.ConfigDict(
            {"grid_sizes": (4, 2, 1), "zooms": (0.75, 1.0, 1.3), "ratios": (1.0, 2.0, 0.5)}
        )
        return sections

    def make_anchors(self):
        a = self.config.anchors
        zooms, ratios = tuple(float(z) for z in a.zooms), tuple(float(r) for r in a.ratios)
        anchors, per_grid = grid_anchors(self.image_hw, tuple(int(k) for k in a.grid_sizes), zooms, ratios)
        return anchors, per_grid, len(zooms) * len(ratios)

    def validate(self) -> None:
        super().validate()
        grids = tuple(self.config.anchors.grid_sizes)
        if not grids or min(grids) < 1:
            _fail("anchors.grid_sizes", grids, "must be positive grid sizes, e.g. (4, 2, 1)")

    def model_kwargs(self) -> dict[str, Any]:
        return {**super().model_kwargs(), "grid_sizes": tuple(int(k) for k in self.config.anchors.grid_sizes)}
