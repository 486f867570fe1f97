"""RetinaNet (ResNet + FPN + shared heads), matching torchvision's `retinanet_resnet50_fpn` (and `_v2`).

The module returns raw head outputs; anchors, matching, losses and decoding live elsewhere. Outputs
are flattened exactly as torchvision's heads do: level by level (P3..P7), then row-major over (y, x),
then the A anchors of a location, so anchor `i` lines up with torchvision's `AnchorGenerator` order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models import MODELS
from jaxcv.models.backbones import create_backbone, deepest_level, require_levels
from jaxcv.models.fpn import FPN
from jaxcv.models.layers import Conv, output_dtype
from jaxcv.models.pyramid import SimpleFeaturePyramid

Array = jax.Array
Dtype = Any
FPN_LEVELS = ("C3", "C4", "C5")


class RetinaNetBranch(nn.Module):
    """One head branch, shared across levels: 4 x (3x3 conv [+ GroupNorm(32)] + ReLU), then a 3x3
    conv to `num_anchors * out_per_anchor` channels.

    torchvision init: convs N(0, 0.01), bias 0 (no conv bias when GroupNorm follows, as
    Conv2dNormActivation); final conv N(0, 0.01) with bias `final_bias`. The final conv is named
    `final_name` (`cls_logits` / `bbox_reg`), the tower `conv_i` (+ `norm_i`).
    `__call__(features: list of [B, h, w, C]) -> [B, sum_l h_l * w_l * A, out_per_anchor]`, float32.
    """

    num_anchors: int
    out_per_anchor: int
    final_name: str
    final_bias: float = 0.0
    norm: bool = False
    num_convs: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[Array]) -> Array:
        std001 = nn.initializers.normal(0.01)
        channels = features[0].shape[-1]
        convs = [
            Conv(
                channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=not self.norm, kernel_init=std001,
                dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv_{i}",
            )
            for i in range(self.num_convs)
        ]
        norms = [
            nn.GroupNorm(
                num_groups=32, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"norm_{i}",
            )
            for i in range(self.num_convs)
        ] if self.norm else [None] * self.num_convs
        final = Conv(
            self.num_anchors * self.out_per_anchor, (3, 3), padding=((1, 1), (1, 1)),
            kernel_init=std001, bias_init=nn.initializers.constant(self.final_bias),
            dtype=self.dtype, param_dtype=self.param_dtype, name=self.final_name,
        )
        outs = []
        for x in features:
            for conv, norm in zip(convs, norms, strict=True):
                x = conv(x)
                if norm is not None:
                    x = norm(x)
                x = nn.relu(x)
            y = final(x)  # [B, h, w, A * K], channel = a * K + k as torch's view
            y = y.astype(output_dtype(y.dtype))
            outs.append(y.reshape(y.shape[0], -1, self.out_per_anchor))
        return jnp.concatenate(outs, axis=1)


class RetinaNetHead(nn.Module):
    """`classification_head` (prior-probability bias -log((1 - p) / p)) and `regression_head`."""

    num_anchors: int
    num_classes: int
    norm: bool = False
    prior_probability: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[Array]) -> dict[str, Array]:
        p = self.prior_probability
        common = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        cls = RetinaNetBranch(
            self.num_anchors, self.num_classes, "cls_logits", -math.log((1 - p) / p),
            name="classification_head", **common,
        )(features)
        reg = RetinaNetBranch(
            self.num_anchors, 4, "bbox_reg", 0.0, name="regression_head", **common
        )(features)
        return {"cls_logits": cls, "bbox_regression": reg}


class RetinaNet(nn.Module):
    """RetinaNet on NHWC images (already normalized).

    `__call__(x: [B, H, W, 3], train) -> dict`: `cls_logits` [B, A_total, num_classes] and
    `bbox_regression` [B, A_total, 4] (float32, torchvision's flattening order), and `features`:
    [P3, P4, P5, P6, P7], each [B, h_l, w_l, fpn_channels], with h_3 = H/8 ... by conv arithmetic
    (ceil(n / 2) per stride-2 step), so any input size works.
    `freeze_backbone_bn=True` (torchvision's FrozenBatchNorm2d) makes the backbone use running
    statistics even when `train=True`. `p6_from="c5"` and `head_norm=True` give torchvision's v2 model.
    `backbone` is any registered backbone with levels C3..C5 (`jaxcv.models.backbones`); one with a single
    scale (a ViT) needs `simple_pyramid=True`, which builds C3..C5 from its deepest level as ViTDet does
    (`jaxcv.models.pyramid.SimpleFeaturePyramid`).
    """

    num_classes: int = 91
    backbone: str = "resnet50"
    backbone_kwargs: Mapping[str, Any] | None = None
    simple_pyramid: bool = False
    num_anchors: int = 9
    fpn_channels: int = 256
    p6_from: str = "p5"  # "p5" | "c5"
    head_norm: bool = False
    freeze_backbone_bn: bool = True
    prior_probability: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Any]:
        body = create_backbone(
            self.backbone, num_classes=0, dtype=self.dtype, param_dtype=self.param_dtype, name="backbone",
            **dict(self.backbone_kwargs or {}),
        )
        info = body.feature_info()
        c = body(x, train=train and not self.freeze_backbone_bn)
        if self.simple_pyramid:  # one-scale backbones (ViT): C3..C5 from the deepest level (ViTDet)
            src = deepest_level(info)
            c = SimpleFeaturePyramid(levels=FPN_LEVELS, out_channels=self.fpn_channels, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name="simple_pyramid")(
                c, src, info[src].stride, train=train, image_size=x.shape[1:3])
        else:
            require_levels(self.backbone, info, FPN_LEVELS)
        features = FPN(
            self.fpn_channels, p6_from=self.p6_from, dtype=self.dtype, param_dtype=self.param_dtype,
            name="fpn",
        )([c[lvl] for lvl in FPN_LEVELS])
        out = RetinaNetHead(
            self.num_anchors, self.num_classes, norm=self.head_norm, prior_probability=self.prior_probability,
            dtype=self.dtype, param_dtype=self.param_dtype, name="head",
        )(features)
        out["features"] = features
        return out


@MODELS.register("retinanet")
def retinanet(**kwargs: Any) -> RetinaNet:
    return RetinaNet(**kwargs)
