"""jaxcv.ops.conv: the matmul-form convolution equals XLA's, forward and gradients, and the
implementation switch reaches flax models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv.models.layers import Conv
from jaxcv.ops import conv as conv_ops

# (batch, size, cin, cout, kernel, stride, padding): the convolutions of ResNet, FPN, RetinaNet and
# U-Net (7x7/2 stem, 3x3 with and without stride, 1x1 projections, odd sizes, asymmetric padding)
CASES = [
    (2, 17, 3, 8, 7, 2, ((3, 3), (3, 3))),
    (2, 9, 8, 16, 3, 1, ((1, 1), (1, 1))),
    (2, 9, 8, 16, 3, 2, ((1, 1), (1, 1))),
    (2, 8, 16, 8, 1, 1, ((0, 0), (0, 0))),
    (2, 9, 16, 8, 1, 2, ((0, 0), (0, 0))),
    (1, 2, 16, 16, 3, 1, ((1, 1), (1, 1))),
    (2, 10, 4, 6, 3, 2, ((0, 1), (2, 0))),
    (2, 6, 4, 6, 2, 2, "VALID"),
    (2, 7, 4, 6, 3, 2, "SAME"),
]


def _lax(x, k, stride, padding):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _ours(x, k, stride, padding):
    return conv_ops.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.fixture
def im2col():
    before = conv_ops.get_conv_impl()
    conv_ops.set_conv_impl("im2col")
    yield
    conv_ops.set_conv_impl(before)


@pytest.mark.parametrize("case", CASES, ids=[f"k{c[4]}s{c[5]}n{c[1]}" for c in CASES])
def test_im2col_equals_xla_forward_and_gradients(case, im2col):
    b, n, cin, cout, k, stride, padding = case
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (b, n, n, cin))
    w = jax.random.normal(kk, (k, k, cin, cout)) / np.sqrt(k * k * cin)
    ref, ref_vjp = jax.vjp(lambda x, w: _lax(x, w, stride, padding), x, w)
    out, vjp = jax.vjp(lambda x, w: _ours(x, w, stride, padding), x, w)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, ref.shape)
    for got, want in zip(vjp(g), ref_vjp(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_unsupported_forms_fall_back_to_xla(im2col):
    """Dilated and grouped convolutions are not rewritten (and stay correct)."""
    x = jax.random.normal(jax.random.key(1), (1, 9, 9, 4))
    w = jax.random.normal(jax.random.key(2), (3, 3, 2, 4))
    args = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    for extra in ({"rhs_dilation": (2, 2), "feature_group_count": 2},
                  {"lhs_dilation": (2, 2), "feature_group_count": 2}):
        np.testing.assert_array_equal(
            conv_ops.conv_general_dilated(x, w, **args, **extra), jax.lax.conv_general_dilated(x, w, **args, **extra)
        )


def test_switch_selects_the_implementation():
    """The choice is made when a function is traced: im2col leaves no convolution in the program,
    xla leaves one, and auto follows the backend (CPU here, a small output: im2col)."""
    layer = Conv(4, (3, 3))
    x = jnp.ones((1, 8, 8, 3))
    variables = layer.init(jax.random.key(0), x)
    before = conv_ops.get_conv_impl()
    try:
        counts = {}
        for impl in ("xla", "im2col", "auto"):
            conv_ops.set_conv_impl(impl)
            text = jax.jit(lambda v, x: layer.apply(v, x)).lower(variables, x).as_text()
            counts[impl] = text.count("convolution")
        assert counts["xla"] >= 1 and counts["im2col"] == 0
        assert counts["auto"] == (0 if jax.default_backend() == "cpu" else counts["xla"])
    finally:
        conv_ops.set_conv_impl(before)
    with pytest.raises(ValueError, match="conv_impl='fast'"):
        conv_ops.set_conv_impl("fast")


@pytest.mark.parametrize("batch,size,kernel,padding,convolutions", [
    (1, 8, 3, "SAME", 0),  # 64 output rows: im2col
    (1, 32, 3, "SAME", 0),  # 1024 rows: still im2col (the bound is inclusive)
    (2, 32, 3, "SAME", 1),  # 2048 rows: XLA's convolution
    (2, 32, 1, "SAME", 0),  # 1x1: always a matmul
    (1, 34, 3, "VALID", 0),  # the output's rows count (32 x 32 = 1024), not the input's (34 x 34)
    (1, 34, 3, "SAME", 1),  # 34 x 34 = 1156 rows
])
def test_auto_rule(batch, size, kernel, padding, convolutions):
    """conv_impl=auto on the CPU: 1x1 kernels as a matmul, larger ones by output rows (batch x pixels);
    on other backends always XLA's convolution."""
    if jax.default_backend() != "cpu":
        convolutions = 1
    assert conv_ops.get_conv_impl() == "auto"
    x = jnp.ones((batch, size, size, 4))
    w = jnp.ones((kernel, kernel, 4, 4))
    text = jax.jit(lambda x, w: _ours(x, w, 1, padding)).lower(x, w).as_text()
    assert text.count("convolution") == convolutions, text
