"""The keras-io "mini Xception" (NHWC, linen), exact to its Keras 3 reference.

The model is `make_model` of keras-io `examples/vision/image_classification_from_scratch.py` (Keras 3 version;
data augmentation is applied to the dataset there, so it is not part of the model), in inference mode:

- `Rescaling(1/255)`: the input is raw pixels 0..255, multiplied by float32(1/255) inside the model;
- `Conv2D(128, 3, strides=2, padding="same")`, BN, ReLU (the entry block's second ReLU is a no-op and omitted);
- for widths 256, 512, 728: ReLU, `SeparableConv2D(w, 3, "same")`, BN, ReLU, `SeparableConv2D(w, 3, "same")`, BN,
  `MaxPooling2D(3, 2, "same")`, plus `Conv2D(w, 1, strides=2, "same")` of the block's input (the residual);
- `SeparableConv2D(1024, 3, "same")` (on the last residual sum, no ReLU before it), BN, ReLU;
- `GlobalAveragePooling2D`, `Dropout(0.25)`, `Dense(num_classes)` without activation (keras-io uses one unit, a
  logit, for two classes: the fixture's model is `num_classes=1` here).

SeparableConv2D is a depthwise conv (no bias, depth multiplier 1) then a 1x1 pointwise conv with the layer's
`bias`. Keras 'same' padding is JAX 'SAME' also for stride 2 (lo = total // 2, the extra pixel bottom/right); max
pools pad with -inf. BatchNorm eps 1e-3, momentum 0.99 (Keras' and flax's conventions agree).

Levels (the backbone contract, `jaxcv.models.backbones`): `C1` = the stem (128 ch, stride 2), `C2`, `C3` = the
outputs of residual blocks 1 and 2 (the `add` / `add_1` layers: 256 ch at stride 4, 512 at 8). At stride 16 the
network has two maps, the third block's sum (728 ch) and the final SeparableConv(1024) + BN + ReLU map; levels
are unique, so `C4` is the final 1024-channel map (the deepest, most processed feature) and the 728-channel sum
is not returned. With `num_classes > 0`: float32 `logits` [B, num_classes] and `pre_logits` [B, 1024] (the
Dense layer's input: pooled, after dropout).

From-scratch init as Keras: kernels glorot-uniform, biases zero, BN gamma 1 beta 0.

Weights: `IMPORTERS["keras:mini_xception"]` takes a mapping of Keras 3 variable paths `layer/variable` to numpy
arrays in Keras layout (`conv2d/kernel` [kh, kw, in, out], `separable_conv2d/depthwise_kernel` [kh, kw, in, 1],
`separable_conv2d/pointwise_kernel` [1, 1, in, out], `separable_conv2d/bias`,
`batch_normalization/gamma|beta|moving_mean|moving_variance`, `dense/kernel` [in, out], `dense/bias`). The layer
names are those Keras gives a freshly built `make_model` in a new session (`conv2d`, `conv2d_1`, ...,
`batch_normalization_7`, `dense`; see `keras_key`). A user exports a trained Keras model with

    from safetensors.numpy import save_file
    save_file({v.path: v.numpy() for v in model.weights}, "mini_xception.safetensors")

(rename the layers to the default names first if the model was built after other layers in the same session),
then `jaxcv.interop.from_keras("mini_xception", jaxcv.interop.load_safetensors(path))`. `num_classes` comes from
`dense/kernel`; weights without `dense/*` build a headless backbone. Strict: every key used, every shape right.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.backbones import IMPORTERS, Level, register_backbone
from jaxcv.models.layers import BatchNorm, Conv, output_dtype

Array = jax.Array
Dtype = Any

BLOCK_WIDTHS = (256, 512, 728)
STEM_WIDTH = 128
EXIT_WIDTH = 1024

keras_init = nn.initializers.glorot_uniform()  # keras.initializers.GlorotUniform, Keras' default kernel init


class SeparableConv2D(nn.Module):
    """Keras `SeparableConv2D(features, kernel, padding="same")`: x [B, H, W, C] -> [B, H, W, features] =
    pointwise(depthwise(x)) + bias; children `depthwise` (a grouped conv, kernel [k, k, 1, C], no bias) and
    `pointwise` (1x1, kernel [1, 1, C, features], with the layer's bias)."""

    features: int
    kernel: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x = Conv(c, (self.kernel, self.kernel), padding="SAME", feature_group_count=c, use_bias=False,
                 kernel_init=keras_init, dtype=self.dtype, param_dtype=self.param_dtype, name="depthwise")(x)
        return Conv(self.features, (1, 1), padding="VALID", kernel_init=keras_init, bias_init=nn.initializers.zeros,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="pointwise")(x)


class MiniXception(nn.Module):
    """keras-io mini Xception on NHWC raw-pixel inputs (see the module docstring for layers and levels).

    `__call__(x: [B, H, W, C] in 0..255, train) -> dict`: `C1` [B, H/2, W/2, 128], `C2` [B, H/4, W/4, 256],
    `C3` [B, H/8, W/8, 512], `C4` [B, H/16, W/16, 1024] (sizes ceil as 'same'), and with `num_classes > 0`
    float32 `logits` [B, num_classes] and `pre_logits` [B, 1024]. `train=True` uses batch statistics
    (`mutable=["batch_stats"]`) and dropout (rng "dropout")."""

    num_classes: int = 0
    dropout: float = 0.25
    rescale: bool = True  # Keras' Rescaling(1/255) on raw pixels; False for inputs already standardized
    bn_momentum: float = 0.99  # Keras' default; lower it when a short from-scratch run must track the statistics
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        """C1 stem (stride 2), C2/C3 residual blocks 1-2 (4, 8), C4 the final 1024-channel map (16)."""
        return {"C1": Level(STEM_WIDTH, 2), "C2": Level(BLOCK_WIDTHS[0], 4), "C3": Level(BLOCK_WIDTHS[1], 8),
                "C4": Level(EXIT_WIDTH, 16)}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        counts = {"conv2d": 0, "batch_normalization": 0, "separable_conv2d": 0}

        def name(kind: str) -> str:  # Keras' automatic layer names, in creation order
            n = counts[kind]
            counts[kind] += 1
            return kind if n == 0 else f"{kind}_{n}"

        def bn(y: Array, relu: bool) -> Array:
            return BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3,
                             use_fast_variance=False, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=name("batch_normalization"))(y, relu=relu)

        def conv(y: Array, features: int, kernel: int, stride: int) -> Array:
            return Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME", kernel_init=keras_init,
                        bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=name("conv2d"))(y)

        def sep(y: Array, features: int) -> Array:
            return SeparableConv2D(features, 3, self.dtype, self.param_dtype, name=name("separable_conv2d"))(y)

        out: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        if self.rescale:
            x = x * jnp.asarray(np.float32(1.0 / 255.0), self.dtype)  # Rescaling(1/255)
        x = bn(conv(x, STEM_WIDTH, 3, 2), relu=True)
        out["C1"] = x
        previous = x
        for k, width in enumerate(BLOCK_WIDTHS, start=2):
            y = bn(sep(nn.relu(x), width), relu=True)
            y = bn(sep(y, width), relu=False)
            y = nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")  # pads with -inf
            x = y + conv(previous, width, 1, 2)
            previous = x
            if k <= 3:
                out[f"C{k}"] = x
        x = bn(sep(x, EXIT_WIDTH), relu=True)
        out["C4"] = x
        if self.num_classes > 0:
            y = jnp.mean(x.astype(output_dtype(self.dtype)), axis=(1, 2))  # GlobalAveragePooling2D
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
            out["pre_logits"] = y
            out["logits"] = nn.Dense(self.num_classes, kernel_init=keras_init, bias_init=nn.initializers.zeros,
                                     dtype=y.dtype, param_dtype=self.param_dtype, name="dense")(y)
        return out


# --- Keras weights -----------------------------------------------------------------------------------------------

_LEAF = {"kernel": "kernel", "bias": "bias", "scale": "gamma", "mean": "moving_mean", "var": "moving_variance"}


def keras_key(path: tuple[str, ...]) -> str:
    """Flax variable path (collection first) -> Keras 3 variable path: ("params", "conv2d_1", "kernel") ->
    "conv2d_1/kernel", ("params", "separable_conv2d", "depthwise", "kernel") -> "separable_conv2d/depthwise_kernel",
    (..., "pointwise", "bias") -> "separable_conv2d/bias", ("batch_stats", "batch_normalization", "var") ->
    "batch_normalization/moving_variance"."""
    _, layer, *inner, leaf = path
    if inner:  # SeparableConv2D: depthwise/kernel, pointwise/kernel, pointwise/bias
        return f"{layer}/{inner[0]}_kernel" if leaf == "kernel" else f"{layer}/bias"
    if layer.startswith("batch_normalization") and leaf == "bias":
        return f"{layer}/beta"
    return f"{layer}/{_LEAF[leaf]}"


def _depthwise_to_flax(a: np.ndarray) -> np.ndarray:
    """Keras depthwise kernel [kh, kw, in, 1] -> the grouped conv's HWIO [kh, kw, 1, in]."""
    return np.transpose(a, (0, 1, 3, 2))


def from_keras(weights: Mapping[str, np.ndarray], **kwargs: Any) -> tuple[MiniXception, dict[str, Any]]:
    """Keras mini Xception weights {`layer/variable`: array} -> (`MiniXception`, {"params", "batch_stats"});
    `num_classes` from `dense/kernel` (0, headless, without `dense/*`); kwargs (e.g. `dtype`) override."""
    from jaxcv.interop import abstract_variables, strict_load

    if "dense/kernel" in weights:
        num_classes = int(np.shape(weights["dense/kernel"])[-1])
    elif any(k.startswith("dense/") for k in weights):
        raise ValueError("weights have dense/* variables but no dense/kernel to read num_classes from")
    else:
        num_classes = 0
    module = MiniXception(**{"num_classes": num_classes, **kwargs})
    stem = weights.get("conv2d/kernel")
    channels = int(np.shape(stem)[2]) if stem is not None and np.ndim(stem) == 4 else 3
    # Depthwise kernels are transposed up front (strict_load's transform sees arrays, not keys); a wrong shape
    # is then reported in that layout, [kh, kw, 1, in].
    flax_layout = {k: _depthwise_to_flax(np.asarray(v)) if k.endswith("/depthwise_kernel") and np.ndim(v) == 4
                   else v for k, v in weights.items()}
    variables = strict_load(abstract_variables(module, 64, channels), flax_layout, keras_key, transform=np.asarray,
                            ignore=lambda key: False, source="Keras mini_xception weights", target="MiniXception",
                            reference_shape=tuple)
    return module, variables


register_backbone("mini_xception", MiniXception)
IMPORTERS.register("keras:mini_xception", from_keras)
