"""MobileNetV3 small / large (NHWC, linen), laid out exactly like torchvision's `torchvision.models.mobilenetv3`.

Matches torchvision in eval mode:

- stem `features.0`: 3x3/2 conv (no bias), BatchNorm, Hardswish;
- inverted residual blocks from torchvision's `_mobilenet_v3_conf` tables (`SMALL` / `LARGE` below): a 1x1
  expand conv + BN + act (absent when expanded == input channels, so `block.0` is then the depthwise conv), a
  depthwise kxk conv + BN + act, an optional squeeze-excitation (global average pool, 1x1 conv `fc1` with bias,
  ReLU, 1x1 conv `fc2`, hardsigmoid, scale; squeeze width `make_divisible(expanded // 4, 8)`), and a 1x1
  projection conv + BN without activation; the residual is added only for stride 1 and in == out;
- the last 1x1 conv (6 x the last block's width: 576 small, 960 large) + BN + Hardswish, `AdaptiveAvgPool2d(1)`,
  and the classifier Linear(1024 small / 1280 large), Hardswish, Dropout(0.2), Linear(num_classes).

Convs pad symmetrically ((k - 1) // 2 * dilation per side, stride 2 included: not 'SAME'); BatchNorm eps 1e-3,
torch momentum 0.01 (= flax momentum 0.99); hardswish x * relu6(x + 3) / 6 and hardsigmoid relu6(x + 3) / 6
(`jax.nn.hard_swish` / `jax.nn.hard_sigmoid`). `dilated=True` is torchvision's `_mobilenet_v3_conf(...,
dilated=True)`: the last stage's blocks get dilation 2 and its stride-2 depthwise conv becomes stride 1, so the
deepest level has stride 16 (the DeepLabV3 / LR-ASPP backbone). `reduced_tail=True` halves the last stage's
widths, and `width_mult` scales every width (both as torchvision).

Submodules are named after torchvision's sequential indices: the flax path `features_3/block_0_0/kernel` is the
key `features.3.block.0.0.weight`, `features_1/block_1/fc1/bias` is `features.1.block.1.fc1.bias`,
`classifier_3/kernel` is `classifier.3.weight` (`torchvision_key`).

Levels (the backbone contract, `jaxcv.models.backbones`): `Ck` is the output of the last `features` module at
stride 2**k (torchvision's stride-end indices: small 0, 1, 3, 8, 12; large 1, 3, 6, 12, 16), `C5` being the output
of `features` (576 / 960 channels). With `dilated=True` the last stage stays at stride 16, so `C5` has stride 16
(`feature_info` says so). With `num_classes > 0`: float32 `logits` [B, num_classes] and `pre_logits` = the pooled
[B, 576 / 960] vector the classifier reads.

Detection stages: `stage_outputs=True` also returns `stage0`..`stage5`, the outputs of the `features` modules that
torchvision's `_mobilenet_extractor` (and LR-ASPP) pick: `stage_indices` = [0] + the blocks with a stride-2 config
(`_is_cn`) + [last] (large: features 0, 2, 4, 7, 13, 16; small: 0, 1, 2, 4, 9, 12). A strided block *starts* a
stage, so `stage4` (large: features.13, 160 channels) already has stride 32, as `stage5` (`C5`, 960): the two maps
torchvision's MobileNetV3-FPN detectors read (`returned_layers = [num_stages - 2, num_stages - 1]`).
`stage_info()` declares them (`{}` without `stage_outputs`) as `feature_info()` does the levels (dilated: the last
stage at stride 16).

From-scratch init as torchvision: convs kaiming-normal (fan_out) with zero bias, BN scale 1 bias 0, Linear
N(0, 0.01) with zero bias.

Weights: `IMPORTERS["torchvision:mobilenet_v3_small"]` / `["torchvision:mobilenet_v3_large"]` take a torchvision
state dict of numpy arrays; `num_classes` comes from `classifier.3.weight`, and a state dict without `classifier.*`
keys builds a headless backbone. Strict: every key used, every shape right.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.backbones import IMPORTERS, Level, register_backbone
from jaxcv.models.layers import BatchNorm, Conv, output_dtype
from jaxcv.models.resnet import conv_init

Array = jax.Array
Dtype = Any


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: round `v` to the nearest multiple of `divisor` (at least `min_value`,
    default `divisor`), going up one step when rounding down would lose more than 10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One row of torchvision's `InvertedResidualConfig` (widths before `width_mult`)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (Hardswish)
    stride: int
    dilation: int = 1


def _conf(arch: str, reduced_tail: bool = False, dilated: bool = False) -> tuple[tuple[BlockConfig, ...], int]:
    """torchvision's `_mobilenet_v3_conf(arch, reduced_tail, dilated)`: (block configs, classifier width)."""
    r = 2 if reduced_tail else 1
    d = 2 if dilated else 1
    b = BlockConfig
    if arch == "mobilenet_v3_large":
        return (
            b(16, 3, 16, 16, False, "RE", 1), b(16, 3, 64, 24, False, "RE", 2), b(24, 3, 72, 24, False, "RE", 1),
            b(24, 5, 72, 40, True, "RE", 2), b(40, 5, 120, 40, True, "RE", 1), b(40, 5, 120, 40, True, "RE", 1),
            b(40, 3, 240, 80, False, "HS", 2), b(80, 3, 200, 80, False, "HS", 1), b(80, 3, 184, 80, False, "HS", 1),
            b(80, 3, 184, 80, False, "HS", 1), b(80, 3, 480, 112, True, "HS", 1), b(112, 3, 672, 112, True, "HS", 1),
            b(112, 5, 672, 160 // r, True, "HS", 2, d), b(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
            b(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
        ), 1280 // r
    if arch == "mobilenet_v3_small":
        return (
            b(16, 3, 16, 16, True, "RE", 2), b(16, 3, 72, 24, False, "RE", 2), b(24, 3, 88, 24, False, "RE", 1),
            b(24, 5, 96, 40, True, "HS", 2), b(40, 5, 240, 40, True, "HS", 1), b(40, 5, 240, 40, True, "HS", 1),
            b(40, 5, 120, 48, True, "HS", 1), b(48, 5, 144, 48, True, "HS", 1),
            b(48, 5, 288, 96 // r, True, "HS", 2, d), b(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
            b(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
        ), 1024 // r
    raise ValueError(f"unknown MobileNetV3 arch {arch!r}; expected 'mobilenet_v3_small' or 'mobilenet_v3_large'")


def _act(name: str, x: Array) -> Array:
    return nn.relu(x) if name == "RE" else jax.nn.hard_swish(x)


def _conv(m: nn.Module, features: int, kernel: int, name: str, stride: int = 1, dilation: int = 1,
          groups: int = 1, bias: bool = False) -> Conv:
    """A conv child of the compact module `m`, padded as torchvision's (k - 1) // 2 * dilation per side."""
    p = (kernel - 1) // 2 * dilation
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                kernel_dilation=(dilation, dilation), feature_group_count=groups, use_bias=bias,
                kernel_init=conv_init, bias_init=nn.initializers.zeros, dtype=m.dtype, param_dtype=m.param_dtype,
                name=name)


def _conv_bn_act(m: nn.Module, x: Array, features: int, kernel: int, index: str, train: bool, act: str | None,
                 stride: int = 1, dilation: int = 1, groups: int = 1) -> Array:
    """torchvision `Conv2dNormActivation` at Sequential position `index` of `m`: children `{index}_0` (conv,
    no bias) and `{index}_1` (BN eps 1e-3, torch momentum 0.01), then ReLU ("RE"), Hardswish ("HS") or none."""
    x = _conv(m, features, kernel, f"{index}_0", stride, dilation, groups)(x)
    x = BatchNorm(use_running_average=not train, momentum=m.bn_momentum, epsilon=1e-3, use_fast_variance=False,
                  dtype=m.dtype, param_dtype=m.param_dtype, name=f"{index}_1")(x, relu=act == "RE")
    return jax.nn.hard_swish(x) if act == "HS" else x


class SqueezeExcitation(nn.Module):
    """torchvision `SqueezeExcitation(expanded, squeeze, scale_activation=Hardsigmoid)`: x [B, H, W, C] ->
    x * hardsigmoid(fc2(relu(fc1(mean_hw(x))))), fc1/fc2 1x1 convs with bias."""

    squeeze_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(_conv(self, self.squeeze_channels, 1, "fc1", bias=True)(s))
        s = _conv(self, x.shape[-1], 1, "fc2", bias=True)(s)
        return x * jax.nn.hard_sigmoid(s)


class InvertedResidual(nn.Module):
    """torchvision `InvertedResidual`: x [B, H, W, in] -> [B, H / stride, W / stride, out] (see the module doc);
    children `block_0`, `block_1`, ... in torchvision's `block` order."""

    cfg: BlockConfig
    width_mult: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = self.cfg
        cin, exp = x.shape[-1], make_divisible(c.expanded_channels * self.width_mult)
        out = make_divisible(c.out_channels * self.width_mult)
        y, j = x, 0
        if exp != cin:
            y = _conv_bn_act(self, y, exp, 1, f"block_{j}", train, c.activation)
            j += 1
        stride = 1 if c.dilation > 1 else c.stride  # torchvision: a dilated block does not stride
        y = _conv_bn_act(self, y, exp, c.kernel, f"block_{j}", train, c.activation, stride, c.dilation, exp)
        j += 1
        if c.use_se:
            y = SqueezeExcitation(make_divisible(exp // 4, 8), self.dtype, self.param_dtype, name=f"block_{j}")(y)
            j += 1
        y = _conv_bn_act(self, y, out, 1, f"block_{j}", train, None)
        return y + x if c.stride == 1 and cin == out else y


ARCHS = ("mobilenet_v3_small", "mobilenet_v3_large")


class MobileNetV3(nn.Module):
    """torchvision MobileNetV3 on NHWC inputs (see the module docstring for blocks, levels and weights).

    `__call__(x: [B, H, W, C], train) -> dict`: `C1`..`C5` ([B, ceil(H / s), ceil(W / s), ch] at the strides of
    `feature_info()`) and, with `num_classes > 0`, float32 `logits` [B, num_classes] and `pre_logits` (the pooled
    [B, 576 / 960] vector). `train=True` uses batch statistics (`mutable=["batch_stats"]`) and dropout (rng
    "dropout")."""

    arch: str = "mobilenet_v3_large"
    num_classes: int = 0
    width_mult: float = 1.0
    reduced_tail: bool = False
    dilated: bool = False
    dropout: float = 0.2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # flax momentum of the running statistics: 0.99 is torchvision's 0.01; short from-scratch runs need a faster one
    bn_momentum: float = 0.99
    # also return torchvision's detection stage outputs `stage0`..`stage5` (see the module docstring)
    stage_outputs: bool = False

    @nn.nowrap
    def _layout(self) -> tuple[tuple[BlockConfig, ...], int, list[tuple[int, int, int]]]:
        """(block configs, classifier width, [(features index, stride, channels)] of the levels C1..C5)."""
        cfgs, last = _conf(self.arch, self.reduced_tail, self.dilated)
        ends, stride, width = [], 2, make_divisible(16 * self.width_mult)
        for i, c in enumerate(cfgs, start=1):
            if c.stride > 1:  # a stage boundary; a dilated block keeps the resolution (and the stride)
                ends.append((i - 1, stride, width))
                stride *= 1 if c.dilation > 1 else c.stride
            width = make_divisible(c.out_channels * self.width_mult)
        ends.append((len(cfgs) + 1, stride, 6 * width))
        return cfgs, make_divisible(last * self.width_mult), ends

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        """C1..C5 at strides 2..32 (`dilated=True`: the last stage's C5 at stride 16)."""
        return {f"C{k}": Level(ch, s) for k, (_, s, ch) in enumerate(self._layout()[2], start=1)}

    @nn.nowrap
    def _stages(self) -> list[tuple[int, int, int]]:
        """[(features index, stride, channels)] of torchvision's `stage_indices`: the stem, every block whose
        config strides (`_is_cn`, a dilated one included, which keeps the stride), and the last conv."""
        cfgs, _, _ = self._layout()
        stride = 2
        stages = [(0, stride, make_divisible(16 * self.width_mult))]
        for i, c in enumerate(cfgs, start=1):
            width = make_divisible(c.out_channels * self.width_mult)
            if c.stride > 1:
                stride *= 1 if c.dilation > 1 else c.stride
                stages.append((i, stride, width))
        stages.append((len(cfgs) + 1, stride, 6 * width))
        return stages

    @nn.nowrap
    def stage_info(self) -> dict[str, Level]:
        """`stage0`..`stage5` -> Level(channels, stride) of torchvision's stage outputs: the extra maps the module
        returns, so empty unless `stage_outputs=True`."""
        if not self.stage_outputs:
            return {}
        return {f"stage{k}": Level(ch, s) for k, (_, s, ch) in enumerate(self._stages())}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        cfgs, last, ends = self._layout()
        names: dict[int, list[str]] = {}
        for k, (i, _, _) in enumerate(ends, start=1):
            names.setdefault(i, []).append(f"C{k}")
        if self.stage_outputs:
            for k, (i, _, _) in enumerate(self._stages()):
                names.setdefault(i, []).append(f"stage{k}")
        out: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        x = _conv_bn_act(self, x, make_divisible(16 * self.width_mult), 3, "features_0", train, "HS", stride=2)
        out.update(dict.fromkeys(names.get(0, ()), x))
        for i, c in enumerate(cfgs, start=1):
            x = InvertedResidual(c, self.width_mult, self.dtype, self.param_dtype, self.bn_momentum,
                                 name=f"features_{i}")(x, train)
            out.update(dict.fromkeys(names.get(i, ()), x))
        n = len(cfgs) + 1
        x = _conv_bn_act(self, x, 6 * x.shape[-1], 1, f"features_{n}", train, "HS")
        out.update(dict.fromkeys(names[n], x))
        if self.num_classes > 0:
            pooled = jnp.mean(x.astype(output_dtype(self.dtype)), axis=(1, 2))  # AdaptiveAvgPool2d(1) + flatten
            out["pre_logits"] = pooled
            dense = functools.partial(nn.Dense, kernel_init=nn.initializers.normal(0.01),
                                      bias_init=nn.initializers.zeros, dtype=pooled.dtype,
                                      param_dtype=self.param_dtype)
            y = jax.nn.hard_swish(dense(last, name="classifier_0")(pooled))
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
            out["logits"] = dense(self.num_classes, name="classifier_3")(y)
        return out


# --- torchvision weights -----------------------------------------------------------------------------------------

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_INDEX = re.compile(r"_(\d+)")


def torchvision_key(path: tuple[str, ...]) -> str:
    """Flax variable path (collection first) -> torchvision key: ("params", "features_3", "block_0_0", "kernel")
    -> "features.3.block.0.0.weight", ("batch_stats", "features_0_1", "var") -> "features.0.1.running_var"."""
    _, *modules, leaf = path
    return ".".join([*(_INDEX.sub(r".\1", m) for m in modules), _LEAF[leaf]])


def from_torchvision(state_dict: Mapping[str, np.ndarray], arch: str = "mobilenet_v3_large",
                     **kwargs: Any) -> tuple[MobileNetV3, dict[str, Any]]:
    """torchvision `mobilenet_v3_*` state dict -> (`MobileNetV3`, {"params", "batch_stats"}); `num_classes` from
    `classifier.3.weight` (0, headless, without `classifier.*` keys); kwargs (`dtype`, `dilated`, ...) override."""
    from jaxcv.interop import abstract_variables, strict_load

    if "classifier.3.weight" in state_dict:
        num_classes = int(np.shape(state_dict["classifier.3.weight"])[0])
    elif any(k.startswith("classifier.") for k in state_dict):
        raise ValueError("state dict has classifier keys but no classifier.3.weight to read num_classes from")
    else:
        num_classes = 0
    module = MobileNetV3(arch=arch, **{"num_classes": num_classes, **kwargs})
    first = state_dict.get("features.0.0.weight")
    channels = int(np.shape(first)[1]) if first is not None else 3
    variables = strict_load(abstract_variables(module, 64, channels), state_dict, torchvision_key,
                            source=f"torchvision {arch} state dict", target=f"MobileNetV3({arch})")
    return module, variables


for _arch in ARCHS:
    register_backbone(_arch, functools.partial(MobileNetV3, arch=_arch))
    IMPORTERS.register(f"torchvision:{_arch}", functools.partial(from_torchvision, arch=_arch))
