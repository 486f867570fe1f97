"""Layers shared by the models."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcv.ops import conv as conv_ops


class Conv(nn.Conv):
    """`flax.linen.Conv` (same parameters, names and HWIO kernels) whose convolution is
    `jaxcv.ops.conv.conv_general_dilated`: a slices + matmul form on the CPU, where XLA's own
    convolution gradients are slow, and XLA's convolution elsewhere (see `jaxcv.ops.conv`)."""

    conv_general_dilated: Any = conv_ops.conv_general_dilated


def output_dtype(dtype: Any) -> Any:
    """Dtype of model outputs (logits, box regression): float32 under half-precision compute so losses
    and scores keep float32 accuracy, float64 when the model computes in float64 (config `dtype`)."""
    return jnp.promote_types(dtype, jnp.float32)
