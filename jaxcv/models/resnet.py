"""ResNet (NHWC, linen) laid out exactly like torchvision's `torchvision.models.resnet`.

Matches torchvision: 7x7/2 stem conv with symmetric padding 3, BatchNorm (eps 1e-5, torch momentum 0.1
= flax momentum 0.9), 3x3/2 max pool with symmetric padding 1 (not 'SAME', which pads only on the
bottom/right for even inputs), v1.5 bottlenecks (stride on the 3x3 conv), 1x1 conv + BN downsample,
no conv biases, kaiming-normal (fan_out, relu) conv init. Submodules are named after torchvision's
(`conv1`, `bn1`, `layer1_0/conv1`, `layer2_0/downsample_conv`, `fc`) so `jaxcv.interop` can map
state-dict keys one to one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models.backbones import Level, register_backbone
from jaxcv.models.layers import BatchNorm, Conv, output_dtype

Array = jax.Array
Dtype = Any

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (kh * kw * out)), untruncated.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """torch.nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# torch.nn.Linear's default weight init, kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric spatial padding as torch's `padding=p` (never 'SAME')."""
    return ((p, p), (p, p))


class _Layers(nn.Module):
    """Common conv/BN factories so every block uses the same dtype and BN settings."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def conv(self, features: int, kernel: int, stride: int, name: str) -> Conv:
        return Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=pad(kernel // 2),
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def bn(self, train: bool, name: str, zero_init: bool = False) -> BatchNorm:
        return BatchNorm(
            use_running_average=not train,
            momentum=0.9,  # torch momentum 0.1: running = 0.9 * running + 0.1 * batch
            epsilon=1e-5,
            use_fast_variance=False,
            scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )


class BasicBlock(_Layers):
    """torchvision BasicBlock: 3x3 (stride) -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU."""

    planes: int = 64
    stride: int = 1
    zero_init_residual: bool = False
    expansion: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        identity = x
        y = self.conv(self.planes, 3, self.stride, "conv1")(x)
        y = self.bn(train, "bn1")(y, relu=True)
        y = self.conv(self.planes, 3, 1, "conv2")(y)
        if self.stride != 1 or x.shape[-1] != self.planes * self.expansion:
            identity = self.conv(self.planes * self.expansion, 1, self.stride, "downsample_conv")(x)
            identity = self.bn(train, "downsample_bn")(identity)
        return self.bn(train, "bn2", self.zero_init_residual)(y, residual=identity, relu=True)  # relu(bn2 + id)


class Bottleneck(_Layers):
    """torchvision v1.5 Bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (4x planes), BN after each, + shortcut."""

    planes: int = 64
    stride: int = 1
    zero_init_residual: bool = False
    expansion: int = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        identity = x
        y = self.conv(self.planes, 1, 1, "conv1")(x)
        y = self.bn(train, "bn1")(y, relu=True)
        y = self.conv(self.planes, 3, self.stride, "conv2")(y)
        y = self.bn(train, "bn2")(y, relu=True)
        y = self.conv(self.planes * self.expansion, 1, 1, "conv3")(y)
        if self.stride != 1 or x.shape[-1] != self.planes * self.expansion:
            identity = self.conv(self.planes * self.expansion, 1, self.stride, "downsample_conv")(x)
            identity = self.bn(train, "downsample_bn")(identity)
        return self.bn(train, "bn3", self.zero_init_residual)(y, residual=identity, relu=True)  # relu(bn3 + id)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(_Layers):
    """torchvision ResNet on NHWC inputs.

    `__call__(x: [B, H, W, 3], train) -> dict`: `stem` [B, H/4, W/4, 64] (after max pool), `C2`..`C5`
    (outputs of layer1..layer4, strides 4..32, sizes by conv arithmetic: ceil(n / 2) per stride-2 step)
    and, only if `num_classes > 0`, float32 `logits` [B, num_classes] (global average pool + `fc`) and the
    pooled vector `pre_logits` [B, C].
    `train=True` normalizes with batch statistics and updates the `batch_stats` collection (call with
    `mutable=["batch_stats"]`); otherwise running averages are used, as torchvision's eval mode.
    `dtype` is the compute dtype (e.g. bfloat16); parameters stay in `param_dtype`.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"  # "basic" | "bottleneck"
    num_classes: int = 0
    zero_init_residual: bool = False  # torchvision default: off

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        """The backbone contract's levels (`jaxcv.models.backbones`): stem and C2..C5, strides 4..32."""
        expansion = BLOCKS[self.block].expansion
        info = {"stem": Level(64, 4)}
        for i in range(len(self.stage_sizes)):
            info[f"C{i + 2}"] = Level(64 * 2**i * expansion, 2 ** (i + 2))
        return info

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if self.block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {self.block!r}; expected one of {sorted(BLOCKS)}")
        block_cls = BLOCKS[self.block]
        out: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        x = self.conv(64, 7, 2, "conv1")(x)
        x = self.bn(train, "bn1")(x, relu=True)
        # max_pool pads with -inf, like torch's MaxPool2d(3, 2, padding=1).
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad(1))
        out["stem"] = x
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = block_cls(
                    planes=64 * 2**i,
                    stride=2 if (i > 0 and j == 0) else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
            out[f"C{i + 2}"] = x
        if self.num_classes > 0:
            # Pool and classify in float32 so logits are float32 even with bf16 compute.
            pooled = jnp.mean(x.astype(output_dtype(self.dtype)), axis=(1, 2))
            out["pre_logits"] = pooled
            out["logits"] = nn.Dense(
                self.num_classes,
                kernel_init=torch_linear_kernel_init,
                bias_init=torch_linear_bias_init(pooled.shape[-1]),
                dtype=pooled.dtype,
                param_dtype=self.param_dtype,
                name="fc",
            )(pooled)
        return out


RESNET_CONFIGS: dict[str, tuple[tuple[int, ...], str]] = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
}


def _make(arch: str, /, **kwargs: Any) -> ResNet:
    stage_sizes, block = RESNET_CONFIGS[arch]
    return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)


for _name in RESNET_CONFIGS:
    register_backbone(_name, functools.partial(_make, _name))
