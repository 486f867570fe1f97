"""RetinaNet (ResNet + FPN + shared heads), matching torchvision's `retinanet_resnet50_fpn` (and `_v2`).

The module returns raw head outputs; anchors, matching, losses and decoding live elsewhere. Outputs
are flattened exactly as torchvision's heads do: level by level (P3..P7), then row-major over (y, x),
then the A anchors of a location, so anchor `i` lines up with torchvision's `AnchorGenerator` order.

The pyramid is configurable as torchvision's `BackboneWithFPN`: `fpn_levels` names the backbone maps the FPN
reads, `extra_blocks` its extra levels. torchvision's MobileNetV3-Large-FPN (`_mobilenet_extractor(backbone,
fpn=True)`, the backbone of `fasterrcnn_mobilenet_v3_large_fpn`) is `backbone="mobilenet_v3_large",
backbone_kwargs={"stage_outputs": True}, fpn_levels=("stage4", "stage5"), extra_blocks="maxpool"`: the 160- and
960-channel stride-32 maps of features.13 and features.16, then a max-pool level at stride 64.
`RetinaNet.pyramid_levels()` gives the levels (log2 stride) the model produces, which the anchors must use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models import MODELS
from jaxcv.models.backbones import LEVEL_ORDER, Level, create_backbone, deepest_level, require_levels
from jaxcv.models.fpn import FPN, extra_strides
from jaxcv.models.layers import Conv, output_dtype
from jaxcv.models.pyramid import SimpleFeaturePyramid

Array = jax.Array
Dtype = Any
FPN_LEVELS = ("C3", "C4", "C5")


def backbone_maps(body: nn.Module) -> dict[str, Level]:
    """The named maps an FPN may read from backbone module `body`: its contract levels (`feature_info`) and,
    where it declares them, extra named outputs (MobileNetV3's torchvision stages, `stage_info`)."""
    info = dict(body.feature_info())
    stage_info = getattr(body, "stage_info", None)
    return {**info, **(stage_info() if callable(stage_info) else {})}


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
    `fpn_levels` (backbone output names, increasing stride) feed the FPN and `extra_blocks` ("p6p7",
    "maxpool", "none"; `jaxcv.models.fpn.FPN`) adds its extra levels, so `features` has
    len(fpn_levels) + 2 / 1 / 0 maps at the strides of `pyramid_levels()` (module docstring: MobileNetV3-FPN).
    """

    num_classes: int = 91
    backbone: str = "resnet50"
    backbone_kwargs: Mapping[str, Any] | None = None
    simple_pyramid: bool = False
    num_anchors: int = 9
    fpn_channels: int = 256
    p6_from: str = "p5"  # "p5" | "c5"
    fpn_levels: Sequence[str] = FPN_LEVELS  # backbone maps the FPN reads, in increasing stride
    extra_blocks: str = "p6p7"  # "p6p7" (LastLevelP6P7) | "maxpool" (LastLevelMaxPool) | "none"
    head_norm: bool = False
    freeze_backbone_bn: bool = True
    prior_probability: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def _body(self, **kwargs: Any) -> nn.Module:
        return create_backbone(self.backbone, num_classes=0, dtype=self.dtype, param_dtype=self.param_dtype,
                               **kwargs, **dict(self.backbone_kwargs or {}))

    @nn.nowrap
    def _check_levels(self, maps: Mapping[str, Level]) -> tuple[int, ...]:
        """Strides of the FPN inputs `fpn_levels` among the backbone's `maps` (raises naming what is missing)."""
        levels = tuple(self.fpn_levels)
        if not levels:
            raise ValueError("fpn_levels is empty; name the backbone maps the FPN reads, e.g. ('C3', 'C4', 'C5')")
        if self.simple_pyramid:  # it builds levels Ck at stride 2**k
            if not all(lvl in LEVEL_ORDER[1:] for lvl in levels):
                raise ValueError(f"simple_pyramid builds levels C1..C5; fpn_levels={levels}")
            return tuple(2 ** int(lvl[1:]) for lvl in levels)
        missing = [lvl for lvl in levels if lvl not in maps]
        if missing and all(lvl in LEVEL_ORDER for lvl in levels):  # the contract's message (names the pyramid)
            require_levels(self.backbone, {k: v for k, v in maps.items() if k in LEVEL_ORDER}, levels)
        if missing:
            hint = ""
            if any(lvl.startswith("stage") for lvl in missing):
                hint = " (MobileNetV3 returns its stages with backbone_kwargs={'stage_outputs': True})"
            raise ValueError(f"backbone {self.backbone!r} with backbone_kwargs={dict(self.backbone_kwargs or {})} "
                             f"returns {sorted(maps)} but fpn_levels wants {missing}{hint}")
        strides = tuple(maps[lvl].stride for lvl in levels)
        if list(strides) != sorted(strides):
            raise ValueError(f"fpn_levels={levels} must go in increasing stride; their strides are {strides}")
        return strides

    @nn.nowrap
    def pyramid_levels(self) -> tuple[int, ...]:
        """log2 of the stride of each map of `features` (and of the head's levels), without running the model:
        (3, 4, 5, 6, 7) by default; (5, 5, 6) for torchvision's MobileNetV3-Large-FPN (two stride-32 maps and
        the max-pool level). The anchors (`config.anchors.levels`) must be these."""
        strides = self._check_levels(backbone_maps(self._body()))
        strides += extra_strides(strides[-1], self.extra_blocks)
        return tuple(int(s).bit_length() - 1 for s in strides)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Any]:
        body = self._body(name="backbone")
        info = body.feature_info()
        self._check_levels(backbone_maps(body))
        levels = tuple(self.fpn_levels)
        c = body(x, train=train and not self.freeze_backbone_bn)
        if self.simple_pyramid:  # one-scale backbones (ViT): C3..C5 from the deepest level (ViTDet)
            src = deepest_level(info)
            c = SimpleFeaturePyramid(levels=levels, out_channels=self.fpn_channels, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name="simple_pyramid")(
                c, src, info[src].stride, train=train, image_size=x.shape[1:3])
        features = FPN(
            self.fpn_channels, p6_from=self.p6_from, extra_blocks=self.extra_blocks, dtype=self.dtype,
            param_dtype=self.param_dtype, name="fpn",
        )([c[lvl] for lvl in levels])
        out = RetinaNetHead(
            self.num_anchors, self.num_classes, norm=self.head_norm, prior_probability=self.prior_probability,
            dtype=self.dtype, param_dtype=self.param_dtype, name="head",
        )(features)
        out["features"] = features
        return out


@MODELS.register("retinanet")
def retinanet(**kwargs: Any) -> RetinaNet:
    return RetinaNet(**kwargs)
