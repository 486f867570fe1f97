"""VGG-11/13/16/19 (with and without BatchNorm) and AlexNet (NHWC, linen), laid out like torchvision's.

Matches `torchvision.models.vgg` / `torchvision.models.alexnet` in eval mode: 3x3 convs with symmetric padding 1
(AlexNet: 11x11/4 pad 2, 5x5 pad 2, 3x3 pad 1), conv biases also with BN, BatchNorm eps 1e-5 (torch momentum
0.1 = flax 0.9), ReLU, MaxPool2d(2, 2) (AlexNet: MaxPool2d(3, 2)) without padding and flooring odd sizes,
`AdaptiveAvgPool2d((7, 7))` (AlexNet `(6, 6)`) computed from the actual map size (uneven, overlapping bins; at
160x192 VGG's 5x6 map is upsampled to 7x7), then the classifier on the map flattened in torch's C, H, W order
(the NHWC map is transposed to NCHW before reshaping, so torchvision's `classifier.0` / `classifier.1` columns
load unchanged). Dropout p=0.5 where torchvision has it, active only with `train=True` (rng "dropout").

Submodules are named after torchvision's sequential indices (`features_24`, `classifier_3`), so a state-dict key
is the flax path with `_<index>` -> `.<index>` (`jaxcv.models.vgg.torchvision_key`).

Levels (the backbone contract, `jaxcv.models.backbones`): level `Ck` is the *last* activation at stride 2**k,
as segmentation_models_pytorch's VGG encoder splits `features` at each MaxPool2d (a stage is a pool and the convs
after it, so its output is the ReLU right before the next pool) and feeds those maps to a U-Net's skips:

- VGG: `C1`..`C4` = the ReLU outputs right before pools 2..5 (128, 256, 512, 512 channels), `C5` = the output of
  pool 5 (= torchvision's `features`, 512). The stride-1 map before pool 1 has no level name and is not returned.
  Sizes follow torch's arithmetic: each pool floors, so odd sizes give floor(H / 2**k), not ceil.
- AlexNet: `C2` = ReLU after conv 1 (the 11x11/4 conv, 64 ch), `C3` = ReLU after conv 2 (after pool 1, 192),
  `C4` = ReLU after conv 5 (after pool 2, 256), `C5` = the output of pool 3 (= `features`, 256). The strides
  4, 8, 16, 32 are exact (4 x 2 x 2 x 2 sample spacing), but AlexNet's unpadded 3x3/2 pools and 11x11/4 conv do
  not keep ceil(H / stride) sizes: at 224 the maps are 55, 27, 13, 6 (not 56, 28, 14, 7). Consumers must take
  sizes from the arrays (as the FPN does: it resizes to each lateral's size). It has no stride-2 map.

With `num_classes > 0`: float32 `logits` [B, num_classes] and `pre_logits` [B, 4096] (the input of the last
Linear: after ReLU and dropout in VGG, after ReLU in AlexNet). The avgpool output is sown as
`intermediates/avgpool` ([B, 7, 7, C] NHWC; read it with `mutable=["intermediates"]`).

From-scratch init as torchvision: VGG convs kaiming-normal (fan_out, relu) with zero bias, BN scale 1 bias 0,
Linear N(0, 0.01) with zero bias; AlexNet keeps torch's default init (weights and biases U(+-1/sqrt(fan_in))).

Weights: `IMPORTERS["torchvision:vgg16_bn"]` (all eight VGGs and `torchvision:alexnet`) takes a torchvision state
dict of numpy arrays; `num_classes` comes from the last classifier weight, and a state dict with no `classifier.*`
keys builds a headless backbone (features only). Strict: every key used, every shape right.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.backbones import IMPORTERS, Level, register_backbone
from jaxcv.models.layers import BatchNorm, Conv, output_dtype
from jaxcv.models.resnet import conv_init, torch_linear_bias_init, torch_linear_kernel_init
from jaxcv.models.simple_detectors import adaptive_avg_pool2d

Array = jax.Array
Dtype = Any

# torchvision.models.vgg.cfgs: conv widths, "M" = MaxPool2d(2, 2).
CFGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
VGG_ARCHS: dict[str, tuple[str, bool]] = {
    f"vgg{depth}{'_bn' if bn else ''}": (cfg, bn)
    for depth, cfg in ((11, "A"), (13, "B"), (16, "D"), (19, "E"))
    for bn in (False, True)
}

# torchvision VGG._initialize_weights: Linear N(0, 0.01), bias 0 (convs: kaiming fan_out relu, bias 0).
vgg_linear_init = nn.initializers.normal(0.01)


def _torch_pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((p, p), (p, p))


def _vgg_levels(cfg: Sequence[int | str]) -> dict[str, Level]:
    """VGG's levels: the last conv width before pool k+1 at stride 2**k (k = 1..4), pool 5's output at 32."""
    info: dict[str, Level] = {}
    pools, width = 0, 0
    for v in cfg:
        if v == "M":
            if pools >= 1:
                info[f"C{pools}"] = Level(width, 2**pools)
            pools += 1
        else:
            width = int(v)
    info[f"C{pools}"] = Level(width, 2**pools)
    return info


def _classify(module: nn.Module, x: Array, pool_hw: tuple[int, int], order: Sequence[str], kernel_init: Any,
              bias_init: Any, train: bool, hidden: int = 4096) -> dict[str, Array]:
    """avgpool (torch-exact adaptive bins) -> CHW flatten -> classifier; sows `avgpool` (NHWC)."""
    x = adaptive_avg_pool2d(x.astype(output_dtype(module.dtype)), pool_hw)
    module.sow("intermediates", "avgpool", x)
    flat = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch.flatten(NCHW, 1): C, H, W order
    out: dict[str, Array] = {}
    linears = [i for i, op in enumerate(order) if op == "linear"]
    y = flat
    for i, op in enumerate(order):
        if op == "linear":
            last = i == linears[-1]
            if last:
                out["pre_logits"] = y
            y = nn.Dense(module.num_classes if last else hidden, kernel_init=kernel_init,
                         bias_init=bias_init(y.shape[-1]), dtype=y.dtype, param_dtype=module.param_dtype,
                         name=f"classifier_{i}")(y)
        elif op == "relu":
            y = nn.relu(y)
        else:
            y = nn.Dropout(module.dropout, deterministic=not train)(y)
    out["logits"] = y
    return out


class VGG(nn.Module):
    """torchvision VGG on NHWC inputs (see the module docstring for levels, classifier and init).

    `__call__(x: [B, H, W, C], train) -> dict`: `C1`..`C5` ([B, floor(H / 2**k), floor(W / 2**k), ch]) and, with
    `num_classes > 0`, float32 `logits` [B, num_classes] and `pre_logits` [B, hidden]. `train=True` uses batch
    statistics (BN variants: `mutable=["batch_stats"]`) and dropout (rng "dropout").

    `pool_size` and `hidden` default to torchvision's (7, 7) and 4096; `pool_size=(1, 1), hidden=512` is the CIFAR
    VGG head (chengyangfu/pytorch-vgg-cifar10: 512 -> 512 -> 512 -> classes on the 1x1 map of a 32 px input)
    instead of repeating that map to 7x7 for a 25088 -> 4096 Linear."""

    cfg: str = "D"
    batch_norm: bool = False
    num_classes: int = 0
    dropout: float = 0.5
    pool_size: tuple[int, int] = (7, 7)
    hidden: int = 4096
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        """C1..C4: the last ReLU before pools 2..5 (strides 2..16); C5: pool 5's output (stride 32)."""
        return _vgg_levels(CFGS[self.cfg])

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if self.cfg not in CFGS:
            raise ValueError(f"unknown VGG cfg {self.cfg!r}; expected one of {sorted(CFGS)}")
        out: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        index, pools = 0, 0  # index: position in torchvision's `features` Sequential
        for v in CFGS[self.cfg]:
            if v == "M":
                if pools >= 1:
                    out[f"C{pools}"] = x
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # MaxPool2d(2, 2): floor
                pools += 1
                index += 1
                continue
            x = Conv(int(v), (3, 3), padding=_torch_pad(1), kernel_init=conv_init, bias_init=nn.initializers.zeros,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=f"features_{index}")(x)
            if self.batch_norm:
                bn = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                               dtype=self.dtype, param_dtype=self.param_dtype, name=f"features_{index + 1}")
                x = bn(x, relu=True)
                index += 3
            else:
                x = nn.relu(x)
                index += 2
        out[f"C{pools}"] = x
        if self.num_classes > 0:
            out.update(_classify(self, x, tuple(self.pool_size),
                                 ("linear", "relu", "dropout", "linear", "relu", "dropout", "linear"),
                                 vgg_linear_init, lambda fan_in: nn.initializers.zeros, train, self.hidden))
        return out


class AlexNet(nn.Module):
    """torchvision AlexNet on NHWC inputs (levels C2..C5, see the module docstring).

    `__call__(x: [B, H, W, C], train) -> dict`: `C2`..`C5` and, with `num_classes > 0`, float32 `logits`
    [B, num_classes] and `pre_logits` [B, 4096]. Dropout (p=0.5, before classifier.1 and classifier.4) is active
    only with `train=True` (rng "dropout")."""

    num_classes: int = 0
    dropout: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        """True strides 4, 8, 16, 32 (sizes by torch arithmetic: 55, 27, 13, 6 at 224)."""
        return {"C2": Level(64, 4), "C3": Level(192, 8), "C4": Level(256, 16), "C5": Level(256, 32)}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        def conv(y: Array, features: int, k: int, stride: int, pad: int, index: int) -> Array:
            fan_in = y.shape[-1] * k * k  # torch's default conv bias init: U(+-1/sqrt(cin * kh * kw))
            return nn.relu(Conv(features, (k, k), strides=(stride, stride), padding=_torch_pad(pad),
                                kernel_init=torch_linear_kernel_init, bias_init=torch_linear_bias_init(fan_in),
                                dtype=self.dtype, param_dtype=self.param_dtype, name=f"features_{index}")(y))

        def pool(y: Array) -> Array:
            return nn.max_pool(y, (3, 3), strides=(2, 2), padding="VALID")  # MaxPool2d(3, 2): floor

        out: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        x = conv(x, 64, 11, 4, 2, 0)
        out["C2"] = x
        x = conv(pool(x), 192, 5, 1, 2, 3)
        out["C3"] = x
        x = conv(pool(x), 384, 3, 1, 1, 6)
        x = conv(x, 256, 3, 1, 1, 8)
        x = conv(x, 256, 3, 1, 1, 10)
        out["C4"] = x
        x = pool(x)
        out["C5"] = x
        if self.num_classes > 0:
            out.update(_classify(self, x, (6, 6), ("dropout", "linear", "relu", "dropout", "linear", "relu", "linear"),
                                 torch_linear_kernel_init, torch_linear_bias_init, train))
        return out


# --- torchvision weights -----------------------------------------------------------------------------------------

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def torchvision_key(path: tuple[str, ...]) -> str:
    """Flax variable path (collection first) -> torchvision key: ("params", "features_24", "kernel") ->
    "features.24.weight", ("batch_stats", "features_25", "mean") -> "features.25.running_mean"."""
    _, *modules, leaf = path
    return ".".join([*(_INDEXED.sub(r"\1.\2", m) for m in modules), _LEAF[leaf]])


def _num_classes(state_dict: Mapping[str, np.ndarray], key: str) -> int:
    """Classes from the last classifier weight; 0 (headless) when the state dict has no classifier keys."""
    if key in state_dict:
        return int(np.shape(state_dict[key])[0])
    if any(k.startswith("classifier.") for k in state_dict):
        raise ValueError(f"state dict has classifier keys but no {key} to read num_classes from")
    return 0


def _load(module: nn.Module, state_dict: Mapping[str, np.ndarray], arch: str) -> dict[str, Any]:
    from jaxcv.interop import abstract_variables, strict_load

    first = state_dict.get("features.0.weight")
    channels = int(np.shape(first)[1]) if first is not None else 3
    return strict_load(abstract_variables(module, 64, channels), state_dict, torchvision_key,
                       source=f"torchvision {arch} state dict", target=f"{type(module).__name__}({arch})")


def from_torchvision_vgg(state_dict: Mapping[str, np.ndarray], arch: str = "vgg16",
                         **kwargs: Any) -> tuple[VGG, dict[str, Any]]:
    """torchvision `vgg*` state dict -> (`VGG`, {"params"[, "batch_stats"]}); kwargs (e.g. `dtype`,
    `num_classes`) override what is read from the weights."""
    cfg, bn = VGG_ARCHS[arch]
    kwargs = {"num_classes": _num_classes(state_dict, "classifier.6.weight"), **kwargs}
    module = VGG(cfg=cfg, batch_norm=bn, **kwargs)
    return module, _load(module, state_dict, arch)


def from_torchvision_alexnet(state_dict: Mapping[str, np.ndarray], **kwargs: Any) -> tuple[AlexNet, dict[str, Any]]:
    """torchvision `alexnet` state dict -> (`AlexNet`, {"params"}); kwargs override what is read from the weights."""
    kwargs = {"num_classes": _num_classes(state_dict, "classifier.6.weight"), **kwargs}
    module = AlexNet(**kwargs)
    return module, _load(module, state_dict, "alexnet")


def _make_vgg(arch: str, /, **kwargs: Any) -> VGG:
    cfg, bn = VGG_ARCHS[arch]
    return VGG(cfg=cfg, batch_norm=bn, **kwargs)


for _arch in VGG_ARCHS:
    register_backbone(_arch, functools.partial(_make_vgg, _arch))
    IMPORTERS.register(f"torchvision:{_arch}", functools.partial(from_torchvision_vgg, arch=_arch))
register_backbone("alexnet", AlexNet)
IMPORTERS.register("torchvision:alexnet", from_torchvision_alexnet)
