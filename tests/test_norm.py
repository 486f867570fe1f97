"""jaxcv.ops.norm / models.layers.BatchNorm: the hand-written BatchNorm backward gives flax's values and
autodiff's gradients, with the residual add and ReLU fused in."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv.models.layers import BatchNorm
from jaxcv.ops.norm import batch_norm_train

KW = dict(momentum=0.9, epsilon=1e-5, use_fast_variance=False)


def _reference(x, variables, residual, relu, train):
    """flax's BatchNorm, then the add and the ReLU as the models wrote them before."""
    y, state = nn.BatchNorm(**KW).apply(variables, x, use_running_average=not train, mutable=["batch_stats"])
    if residual is not None:
        y = y + residual
    return (nn.relu(y) if relu else y), state


def _ours(x, variables, residual, relu, train):
    return BatchNorm(**KW).apply(variables, x, use_running_average=not train, residual=residual, relu=relu,
                                 mutable=["batch_stats"])


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_batchnorm_equals_flax_values_statistics_and_gradients(residual, relu, train):
    k = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(k[0], (4, 5, 6, 8)) * 3 + 1
    res = jax.random.normal(k[1], x.shape) if residual else None
    variables = BatchNorm(**KW).init(k[2], x, use_running_average=False)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, nn.BatchNorm(**KW).init(k[2], x, use_running_average=False))  # same names, same shapes
    variables = {"params": {"scale": jax.random.normal(k[3], (8,)), "bias": jax.random.normal(k[4], (8,))},
                 "batch_stats": {"mean": jnp.full((8,), 0.5), "var": jnp.full((8,), 2.0)}}
    g = jax.random.normal(jax.random.key(5), x.shape)

    def loss(fn, params, x, res):
        y, state = fn(x, {**variables, "params": params}, res, relu, train)
        return jnp.sum(y * g) + jnp.sum(jnp.sin(y)), (y, state)

    argnums = (0, 1, 2) if residual else (0, 1)
    args = (variables["params"], x, res) if residual else (variables["params"], x)
    (_, (want, want_state)), want_grads = jax.value_and_grad(
        lambda p, x, r=None: loss(_reference, p, x, r), argnums, has_aux=True)(*args)
    (_, (got, got_state)), got_grads = jax.value_and_grad(
        lambda p, x, r=None: loss(_ours, p, x, r), argnums, has_aux=True)(*args)
    np.testing.assert_array_equal(got, want)  # the forward is flax's arithmetic, in flax's order
    for a, b in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_statistics_cotangents_follow_autodiff():
    """Gradients through the returned batch mean and variance (not used by the models, but part of the
    function) equal autodiff of the plain formula."""
    x = jax.random.normal(jax.random.key(0), (3, 4, 5, 6)) * 2 - 1
    scale, bias = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-1, 1, 6)
    w = jax.random.normal(jax.random.key(1), x.shape)

    def plain(x, scale, bias):
        mean = jnp.mean(x, (0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
        y = (x - mean) * (jax.lax.rsqrt(var + 1e-5) * scale) + bias
        return y, mean, var

    def loss(fn):
        return lambda x, s, b: (lambda y, m, v: jnp.sum(y * w) + jnp.sum(m ** 3) + jnp.sum(jnp.sqrt(v)))(*fn(x, s, b))

    want = jax.grad(loss(plain), (0, 1, 2))(x, scale, bias)
    got = jax.grad(loss(lambda x, s, b: batch_norm_train(x, s, b, None, 1e-5, False, False, jnp.float32)),
                   (0, 1, 2))(x, scale, bias)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_statistics():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)).astype(jnp.bfloat16)
    bn = BatchNorm(**KW, dtype=jnp.bfloat16)
    variables = bn.init(jax.random.key(1), x, use_running_average=False)
    def loss(x):
        y, state = bn.apply(variables, x, use_running_average=False, relu=True, mutable=["batch_stats"])
        return jnp.sum(y.astype(jnp.float32)), (y, state)

    (_, (y, state)), dx = jax.value_and_grad(loss, has_aux=True)(x)
    assert y.dtype == jnp.bfloat16 and dx.dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
    assert {a.dtype for a in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    assert bool(jnp.all(y >= 0))
