"""Feature Pyramid Network (NHWC) matching torchvision's `FeaturePyramidNetwork` with its extra blocks.

1x1 lateral convs (`inner_blocks_i`) and 3x3 output convs (`layer_blocks_i`), both with bias and
kaiming-uniform(a=1) init, top-down pathway by nearest upsampling to the lateral's size with torch's
legacy 'nearest' index rule (the identity when two inputs have the same size, as MobileNetV3's two stride-32
maps), then the extra levels of `extra_blocks`: "p6p7" (`LastLevelP6P7`: P6 3x3/2, P7 3x3/2 on relu(P6)),
"maxpool" (`LastLevelMaxPool`: `max_pool2d(kernel 1, stride 2)` of the last output, i.e. its even rows and
columns, no parameters) or "none".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.layers import Conv

Array = jax.Array
Dtype = Any

# torch.nn.init.kaiming_uniform_(w, a=1): U(-sqrt(3 / fan_in), sqrt(3 / fan_in)).
fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of `F.interpolate(mode="nearest", size=...)` along one axis (static, int32 [out]).

    torch: identity if sizes equal, `i >> 1` if exactly 2x, else min(floor(i * (in / out)), in - 1)
    computed in float32. For odd sizes this is *not* `repeat(2)` followed by a crop.
    """
    if out_size == in_size:
        return np.arange(out_size, dtype=np.int32)
    if out_size == 2 * in_size:
        return np.arange(out_size, dtype=np.int32) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1).astype(np.int32)


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
    """x: [B, h, w, C] -> [B, H, W, C] with torch's 'nearest' rule (shapes are static)."""
    rows = torch_nearest_indices(x.shape[1], size[0])
    cols = torch_nearest_indices(x.shape[2], size[1])
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


EXTRA_BLOCKS = ("p6p7", "maxpool", "none")


def extra_strides(last_stride: int, extra_blocks: str) -> tuple[int, ...]:
    """Strides of the levels `extra_blocks` appends after an FPN level of stride `last_stride`."""
    if extra_blocks not in EXTRA_BLOCKS:
        raise ValueError(f"extra_blocks must be one of {', '.join(EXTRA_BLOCKS)}; got {extra_blocks!r}")
    return {"p6p7": (2 * last_stride, 4 * last_stride), "maxpool": (2 * last_stride,), "none": ()}[extra_blocks]


class FPN(nn.Module):
    """`__call__(features: [C_a, ..., C_z] NHWC) -> [P_a, ..., P_z, extra levels]`, each [B, h_l, w_l,
    out_channels]: with the default "p6p7" and inputs [C3, C4, C5], [P3, P4, P5, P6, P7]; with "maxpool"
    one level more than the inputs (torchvision's "pool"), of size ceil(h / 2) of the last.

    `p6_from="p5"` is torchvision's RetinaNet (LastLevelP6P7(256, 256) takes P5); `"c5"` takes C5 as
    in the RetinaNet paper, detectron2 and torchvision's retinanet_resnet50_fpn_v2 (only for "p6p7").
    `extra_levels=False` returns only the FPN levels on the inputs (as `extra_blocks="none"`).
    """

    out_channels: int = 256
    p6_from: str = "p5"  # "p5" | "c5"
    extra_levels: bool = True
    extra_blocks: str = "p6p7"  # "p6p7" | "maxpool" | "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _conv(self, kernel: int, stride: int, name: str) -> Conv:
        p = kernel // 2
        return Conv(
            self.out_channels,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((p, p), (p, p)),
            kernel_init=fpn_init,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    @nn.compact
    def __call__(self, features: Sequence[Array]) -> list[Array]:
        if self.p6_from not in ("p5", "c5"):
            raise ValueError(f"p6_from must be 'p5' or 'c5', got {self.p6_from!r}")
        extra_strides(1, self.extra_blocks)  # checks the name
        n = len(features)
        last_inner = self._conv(1, 1, f"inner_blocks_{n - 1}")(features[-1])
        results = [self._conv(3, 1, f"layer_blocks_{n - 1}")(last_inner)]
        for i in range(n - 2, -1, -1):
            lateral = self._conv(1, 1, f"inner_blocks_{i}")(features[i])
            last_inner = lateral + resize_nearest(last_inner, lateral.shape[1:3])
            results.insert(0, self._conv(3, 1, f"layer_blocks_{i}")(last_inner))
        if not self.extra_levels or self.extra_blocks == "none":
            return results
        if self.extra_blocks == "maxpool":  # F.max_pool2d(P_last, 1, 2, 0): a 1x1 window keeps every other pixel
            return [*results, results[-1][:, ::2, ::2, :]]
        src = results[-1] if self.p6_from == "p5" else features[-1]
        p6 = self._conv(3, 2, "p6")(src)
        p7 = self._conv(3, 2, "p7")(nn.relu(p6))
        return [*results, p6, p7]
