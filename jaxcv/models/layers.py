"""Layers shared by the models."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.ops import conv as conv_ops
from jaxcv.ops.norm import batch_norm_train


class Conv(nn.Conv):
    """`flax.linen.Conv` (same parameters, names and HWIO kernels) whose convolution is
    `jaxcv.ops.conv.conv_general_dilated`: a slices + matmul form on the CPU, where XLA's own
    convolution gradients are slow, and XLA's convolution elsewhere (see `jaxcv.ops.conv`)."""

    conv_general_dilated: Any = conv_ops.conv_general_dilated


def output_dtype(dtype: Any) -> Any:
    """Dtype of model outputs (logits, box regression): float32 under half-precision compute so losses
    and scores keep float32 accuracy, float64 when the model computes in float64 (config `dtype`)."""
    return jnp.promote_types(dtype, jnp.float32)


class BatchNorm(nn.Module):
    """`flax.linen.BatchNorm` over the last (channel) axis: the same variables (`params`: scale, bias;
    `batch_stats`: mean, var, biased, updated `running = momentum * running + (1 - momentum) * batch`), the
    same values, and, in training mode, `jaxcv.ops.norm.batch_norm_train`'s closed-form gradient instead of
    autodiff's (fewer passes over the activation; measured in benchmarks/README.md)."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    use_fast_variance: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, residual: jax.Array | None = None,
                 relu: bool = False) -> jax.Array:
        """x: [..., C] -> [..., C]: `relu(bn(x) + residual)`, the add and the ReLU optional; fused with the
        normalization (one pass, and one in the backward) when training."""
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = x.shape[-1]
        stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)  # as flax's _compute_stats
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        if use_running_average:  # flax's _normalize, in its order
            xf = x - ra_mean.value
            y = jnp.asarray(xf * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias, dtype)
            if residual is not None:
                y = y + residual
            return nn.relu(y) if relu else y
        y, mean, var = batch_norm_train(x, scale.astype(stats_dtype), bias.astype(stats_dtype), residual,
                                        self.epsilon, self.use_fast_variance, relu, jnp.dtype(dtype))
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
