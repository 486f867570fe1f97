"""Small from-scratch CNNs for teaching and quick CPU runs, both registered backbones.

- `SmallCNN` ("small_cnn", CIFAR-10 / MNIST sized inputs): blocks of [3x3 conv -> (BN) -> ReLU] x 2 -> 2x2
  max pool with growing widths, then global average pooling (or flatten), a dense hidden layer with ReLU
  and dropout, and a dense classifier.
- `ConvBackbone` ("conv"): per width, a 3x3 stride-2 conv + BatchNorm + ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models.backbones import Level, level_name, register_backbone
from jaxcv.models.layers import Conv, output_dtype

Array = jax.Array
Dtype = Any


class SmallCNN(nn.Module):
    """`__call__(x: [B, H, W, C], train) -> dict`: the map after each block's pool, `C1`..`Cn` (stride 2**k, the
    backbone contract), and with `num_classes > 0` also `logits` [B, num_classes] float32 and `features` =
    `pre_logits` [B, hidden], the hidden layer's ReLU output (before dropout), e.g. for embeddings/t-SNE.
    Dropout is active only with `train=True` and then needs a `'dropout'` rng; with `batch_norm=True`,
    `train=True` also updates `batch_stats` (call with `mutable=['batch_stats']`).
    `pool="flatten"` flattens the last block's map (input size then fixes the dense layer's size).
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128)
    hidden: int = 256
    dropout_rate: float = 0.5
    batch_norm: bool = False
    pool: str = "avg"  # "avg" | "flatten"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        return {f"C{i + 1}": Level(w, 2 ** (i + 1)) for i, w in enumerate(self.widths)}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if self.pool not in ("avg", "flatten"):
            raise ValueError(f"pool must be 'avg' or 'flatten', got {self.pool!r}")
        x = jnp.asarray(x, self.dtype)
        out: dict[str, Array] = {}
        conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # He init for ReLU
        for i, width in enumerate(self.widths):
            for j in range(2):
                x = Conv(
                    width, (3, 3), padding=((1, 1), (1, 1)), use_bias=not self.batch_norm,
                    kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"block{i}_conv{j}",
                )(x)
                if self.batch_norm:
                    x = nn.BatchNorm(
                        use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=self.dtype, param_dtype=self.param_dtype, name=f"block{i}_bn{j}",
                    )(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            out[f"C{i + 1}"] = x
        if self.num_classes <= 0:
            return out
        wide = output_dtype(self.dtype)
        x = x.astype(wide)
        x = jnp.mean(x, axis=(1, 2)) if self.pool == "avg" else x.reshape(x.shape[0], -1)
        features = nn.relu(
            nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden")(x)
        ).astype(wide)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=wide, param_dtype=self.param_dtype, name="head")(h)
        return {**out, "logits": logits, "pre_logits": features, "features": features}


class ConvBackbone(nn.Module):
    """A plain CNN from scratch, for quick CPU runs and tests: per entry of `widths`, a 3x3 stride-2 conv +
    BatchNorm + ReLU. `__call__(x: [B, H, W, C], train) -> dict`: level `Ck` = the k-th block's output
    [B, ceil(H / 2**k), ceil(W / 2**k), widths[k-1]]; with `num_classes > 0` also `pre_logits` (global
    average pool) and float32 `logits` (a dense layer)."""

    widths: Sequence[int] = (32, 64, 128, 256, 256)
    num_classes: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        return {level_name(2 ** (i + 1)): Level(w, 2 ** (i + 1)) for i, w in enumerate(self.widths)}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        x = jnp.asarray(x, self.dtype)
        out: dict[str, Array] = {}
        for i, width in enumerate(self.widths):
            x = Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
            out[level_name(2 ** (i + 1))] = x
        if self.num_classes > 0:
            pooled = jnp.mean(x.astype(output_dtype(self.dtype)), axis=(1, 2))
            out["pre_logits"] = pooled
            out["logits"] = nn.Dense(self.num_classes, dtype=pooled.dtype, param_dtype=self.param_dtype,
                                     name="head")(pooled)
        return out


register_backbone("small_cnn", SmallCNN)
register_backbone("conv", ConvBackbone)

