"""The small from-scratch CNN used in teaching (CIFAR-10 / MNIST sized inputs).

Blocks of [3x3 conv -> (BN) -> ReLU] x 2 -> 2x2 max pool with growing widths, then global average
pooling (or flatten), a dense hidden layer with ReLU and dropout, and a dense classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models import MODELS
from jaxcv.models.layers import Conv, output_dtype

Array = jax.Array
Dtype = Any


class SmallCNN(nn.Module):
    """`__call__(x: [B, H, W, C], train) -> {'logits': [B, num_classes] float32, 'features': [B, hidden]}`.

    `features` is the hidden layer's ReLU output (before dropout), e.g. for embeddings/t-SNE.
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

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if self.pool not in ("avg", "flatten"):
            raise ValueError(f"pool must be 'avg' or 'flatten', got {self.pool!r}")
        x = jnp.asarray(x, self.dtype)
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
        wide = output_dtype(self.dtype)
        x = x.astype(wide)
        x = jnp.mean(x, axis=(1, 2)) if self.pool == "avg" else x.reshape(x.shape[0], -1)
        features = nn.relu(
            nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden")(x)
        ).astype(wide)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=wide, param_dtype=self.param_dtype, name="head")(h)
        return {"logits": logits, "features": features}


@MODELS.register("small_cnn")
def small_cnn(**kwargs: Any) -> SmallCNN:
    return SmallCNN(**kwargs)
