"""ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object
Detection"; detectron2 `SimpleFeaturePyramid`) in linen, NHWC.

From one backbone map (a ViT's stride-16 `C4` [B, h, w, D]) it builds each requested level `Ck`:
- finer (scale 2**n, n >= 1): n 2x2 stride-2 transposed convs halving the channels each time (D -> D/2 -> D/4),
  with LayerNorm + GELU between consecutive ones (ViTDet's 4x branch: ConvT, LN, GELU, ConvT);
- the source's own stride: the map itself;
- coarser (scale 2**-n): n 2x2 stride-2 max pools (ViTDet's 0.5x branch is one);
then, on every level, ViTDet's output head: 1x1 conv -> LayerNorm -> 3x3 conv (padding 1) -> LayerNorm to
`out_channels`, without biases (detectron2 drops them when a norm follows) and without activations.

LayerNorm is over channels, eps 1e-6 (detectron2's channel LayerNorm on NCHW = flax LayerNorm on NHWC's last axis).
Sizes: a transposed conv doubles exactly (2h); max pools use ceil mode (odd maps padded with -inf at the bottom /
right), so coarser levels are ceil(h / 2**n) = ceil(H / 2**k) when h = ceil(H / 2**source) -- detectron2's
MaxPool2d floors instead, which differs only on odd maps. Passing `image_size` crops finer levels to
ceil(H / 2**k) when doubling overshoots (e.g. H = 40: C4 is 3, 2x gives 6, ceil(40 / 8) = 5).

Init as detectron2: the 1x1 / 3x3 convs `c2_xavier_fill` (kaiming-uniform a=1, U(+-sqrt(3 / fan_in))), the
transposed convs torch's default (U(+-1/sqrt(out * 4)) weights and bias); LayerNorm 1 / 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models.backbones import LEVEL_ORDER, Level
from jaxcv.models.layers import Conv
from jaxcv.models.resnet import torch_linear_bias_init

Array = jax.Array
Dtype = Any

c2_xavier_fill = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def _level_index(level: str) -> int:
    if level not in LEVEL_ORDER or level == "stem":
        raise ValueError(f"pyramid levels are C1..C5, got {level!r}")
    return int(level[1:])


def _ceil_max_pool(x: Array) -> Array:
    """2x2 stride-2 max pool, ceil mode: [B, h, w, C] -> [B, ceil(h / 2), ceil(w / 2), C]."""
    pad = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
    if any(p[1] for p in pad):
        x = jnp.pad(x, pad, constant_values=-jnp.inf)
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class SimpleFeaturePyramid(nn.Module):
    """`__call__(features, source_level="C4", source_stride=None, train=False, image_size=None) -> dict`:
    `features[source_level]` [B, h, w, D] -> {level: [B, h * 2**(s - k), ..., out_channels]} for each of `levels`
    (k the level's index, s the source's: finer levels h * 2**(s - k), coarser ceil(h / 2**(k - s))).
    `source_stride` defaults to 2**s and must agree with `source_level`; `image_size` (H, W) crops finer levels to
    ceil(H / 2**k)."""

    levels: Sequence[str] = ("C3", "C4", "C5")
    out_channels: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        """The output levels: `out_channels` each, stride 2**k, in increasing stride."""
        ordered = sorted(self.levels, key=_level_index)
        return {lvl: Level(self.out_channels, 2 ** _level_index(lvl)) for lvl in ordered}

    def _norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=self.dtype, param_dtype=self.param_dtype,
                            name=name)

    @nn.compact
    def __call__(self, features: Mapping[str, Array], source_level: str = "C4", source_stride: int | None = None,
                 train: bool = False, image_size: tuple[int, int] | None = None) -> dict[str, Array]:
        del train  # no dropout or batch statistics
        s = _level_index(source_level)
        if source_stride is not None and source_stride != 2**s:
            raise ValueError(f"source_stride {source_stride} does not match {source_level} (stride {2**s})")
        if source_level not in features:
            raise ValueError(f"features have no {source_level!r} (they have {sorted(features)})")
        x = jnp.asarray(features[source_level], self.dtype)
        dim = x.shape[-1]
        out: dict[str, Array] = {}
        for lvl in sorted(self.levels, key=_level_index):
            k = _level_index(lvl)
            y = x
            if k < s:  # finer: transposed convs, LN + GELU between them
                for i in range(s - k):
                    if i > 0:
                        y = nn.gelu(self._norm(f"{lvl}_up_norm_{i - 1}")(y), approximate=False)
                    cout = max(dim // 2 ** (i + 1), 1)
                    # torch ConvTranspose2d default init: weight [in, out, 2, 2], fan_in = out * 2 * 2
                    init = torch_linear_bias_init(cout * 4)
                    y = nn.ConvTranspose(cout, (2, 2), strides=(2, 2), padding="VALID", kernel_init=init,
                                         bias_init=init,
                                         dtype=self.dtype, param_dtype=self.param_dtype, name=f"{lvl}_up_{i}")(y)
                if image_size is not None:
                    th, tw = (-(-int(image_size[0]) // 2**k), -(-int(image_size[1]) // 2**k))
                    y = y[:, : min(th, y.shape[1]), : min(tw, y.shape[2])]
            for _ in range(k - s):  # coarser
                y = _ceil_max_pool(y)
            y = Conv(self.out_channels, (1, 1), use_bias=False, kernel_init=c2_xavier_fill, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=f"{lvl}_lateral")(y)
            y = self._norm(f"{lvl}_lateral_norm")(y)
            y = Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=c2_xavier_fill,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=f"{lvl}_output")(y)
            out[lvl] = self._norm(f"{lvl}_output_norm")(y)
        return out
