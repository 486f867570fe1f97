"""Training-mode batch normalization with a hand-written backward pass.

Why: autodiff of `flax.linen.BatchNorm` (mean, centered variance, normalize, scale, shift) leaves XLA:CPU
with ~5 reductions and ~6 element-wise passes over each normalized activation per training step
(counted in the compiled ResNet-50 step; BatchNorm and ReLU's share of the step is in benchmarks/README.md),
all memory-bound. The closed-form gradient needs two per-channel sums over (g, x) and one
element-wise pass:

    xhat = (x - mean) * r,  r = rsqrt(var + eps),  y = scale * xhat + bias
    dbias = sum(g),  dscale = sum(g * xhat)
    dx = scale * r * (g - dbias / n - xhat * dscale / n)      (+ the cotangents of mean and var, if any)

(Ioffe & Szegedy 2015, sec. 3; the same formula as cuDNN's and PyTorch's native batch-norm backward).
The forward computes exactly what flax does (statistics in at least float32, two-pass variance unless
`fast_variance`), so values, running statistics and parameters are unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp


def _stats(xf: jax.Array, axes: tuple[int, ...], fast_variance: bool) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(xf, axes)
    if fast_variance:  # E[x^2] - E[x]^2, clipped at 0 as flax does
        var = jnp.maximum(0.0, jnp.mean(jnp.square(xf), axes) - jnp.square(mean))
    else:
        var = jnp.mean(jnp.square(xf - mean), axes)
    return mean, var


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, residual: jax.Array | None, epsilon: float,
                     fast_variance: bool, relu: bool, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x: [..., C] (normalized over all leading axes); scale, bias: [C]; residual: None or [..., C], added after
    the normalization; relu: apply max(0, .) last ->
    (out: [..., C] in `dtype`, batch mean: [C], batch variance (biased): [C]).

    Computed in promote(x.dtype, scale.dtype, float32) (flax's statistics are at least float32).
    `out = relu(scale * xhat + bias + residual)` is one element-wise pass forward and the ReLU mask is read
    back from `out` (> 0 exactly where the pre-activation is), so neither the normalized pre-activation nor
    a separate ReLU pass is stored or run, forward or backward."""
    return _forward(x, scale, bias, residual, epsilon, fast_variance, relu, dtype)[0]


def _forward(x: jax.Array, scale: jax.Array, bias: jax.Array, residual: jax.Array | None, epsilon: float,
             fast_variance: bool, relu: bool, dtype: Any) -> tuple[tuple[jax.Array, ...], tuple[Any, ...]]:
    cd = jnp.promote_types(jnp.promote_types(x.dtype, scale.dtype), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(cd)
    mean, var = _stats(xf, axes, fast_variance)
    r = jax.lax.rsqrt(var + epsilon)
    y = (xf - mean) * (r * scale) + bias  # flax's order: (x - mean) * (rsqrt(var + eps) * scale) + bias
    if residual is not None:
        y = y.astype(dtype).astype(cd) + residual.astype(cd)  # flax's model rounds to dtype before the add
    out = (jnp.maximum(y, 0) if relu else y).astype(dtype)
    return (out, mean, var), (x, scale, mean, r, out if relu else None, residual)  # residual: for its dtype


def _bwd(epsilon: float, fast_variance: bool, relu: bool, dtype: Any, res: tuple[Any, ...],
         cts: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[Any, ...]:
    x, scale, mean, r, out, residual = res
    # The barrier hides the forward's values from XLA's simplifier and CSE: without it XLA rewrites the mask
    # `out > 0` as `pre-activation > 0` and shares `x - mean` and the broadcast `r * scale` with the forward
    # pass, so each of them is written out at full size (extra passes per BatchNorm).
    x, scale, mean, r, out = jax.lax.optimization_barrier((x, scale, mean, r, out))
    g, g_mean, g_var = cts
    cd = mean.dtype
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    gf = g.astype(cd)
    if relu:
        gf = jnp.where(out > 0, gf, 0)
    centered = x.astype(cd) - mean
    sum_g = jnp.sum(gf, axes)  # = dbias
    sum_gc = jnp.sum(gf * centered, axes)  # = dscale / r
    a = r * scale
    # dx = a * g + b * (x - mean) + c: the y path, plus mean's (1/n each) and var's (2 (x - mean) / n) cotangents
    b = -a * r * r * sum_gc / n + 2.0 * g_var.astype(cd) / n
    c = -a * sum_g / n + g_mean.astype(cd) / n
    dx = a * gf + b * centered + c
    d_residual = None if residual is None else gf.astype(residual.dtype)
    return dx.astype(x.dtype), (sum_gc * r).astype(scale.dtype), sum_g.astype(scale.dtype), d_residual


batch_norm_train.defvjp(_forward, _bwd)
