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


# (size, channels, kernel, stride, dilation, padding): MobileNetV3's and Xception's depthwise convolutions (3x3
# and 5x5, stride 1 and 2, the dilated MobileNetV3 variant, Keras 'same' on stride 2, explicit asymmetric pads)
DEPTHWISE = [
    (9, 5, 3, 1, 1, ((1, 1), (1, 1))), (10, 6, 5, 2, 1, ((2, 2), (2, 2))), (11, 4, 3, 1, 2, "SAME"),
    (8, 3, 5, 1, 2, ((4, 4), (4, 4))), (8, 3, 3, 2, 1, "SAME"), (7, 4, 3, 2, 1, ((1, 2), (0, 1))),
]


@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_shift_form_equals_xla_forward_and_gradients(case):
    """On the CPU, depthwise convolutions (groups = channels) take the slices form; forward and both gradients
    equal XLA's grouped convolution to float32 round-off."""
    size, c, k, s, d, padding = case
    x = jax.random.normal(jax.random.key(0), (2, size, size, c))
    w = jax.random.normal(jax.random.key(1), (k, k, 1, c))
    kw = dict(window_strides=(s, s), padding=padding, rhs_dilation=(d, d), feature_group_count=c,
              dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, **kw)))

    ours = jax.jit(jax.value_and_grad(loss(conv_ops.conv_general_dilated), (0, 1)))(x, w)
    ref = jax.jit(jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1)))(x, w)
    hlo = jax.jit(lambda x, w: conv_ops.conv_general_dilated(x, w, **kw)).lower(x, w).as_text()
    assert "convolution" not in hlo, "the depthwise convolution was not rewritten"
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)


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


@pytest.mark.parametrize("batch,size,kernel,padding,convolutions,dtype,cout", [
    (1, 8, 3, "SAME", 0, "float32", 4),  # 64 output rows: im2col
    (1, 32, 3, "SAME", 0, "float32", 4),  # 1024 rows: still im2col (the bound is inclusive)
    (2, 32, 3, "SAME", 1, "float32", 4),  # 2048 rows: XLA's convolution
    (2, 32, 1, "SAME", 0, "float32", 4),  # 1x1: always a matmul
    (1, 34, 3, "VALID", 0, "float32", 4),  # the output's rows count (32 x 32 = 1024), not the input's (34 x 34)
    (1, 34, 3, "SAME", 1, "float32", 4),  # 34 x 34 = 1156 rows
    (2, 32, 3, "SAME", 1, "bfloat16", 64),  # bfloat16, 2048 rows, 64 output channels: XLA's convolution
    (2, 32, 3, "SAME", 0, "bfloat16", 128),  # bfloat16 from 128 output channels: im2col (native bf16 matmul)
])
def test_auto_rule(batch, size, kernel, padding, convolutions, dtype, cout):
    """conv_impl=auto on the CPU: 1x1 kernels as a matmul, larger ones by output rows (batch x pixels), and
    in bfloat16 also by output channels; on other backends always XLA's convolution."""
    if jax.default_backend() != "cpu":
        convolutions = 1
    assert conv_ops.get_conv_impl() == "auto"
    x = jnp.ones((batch, size, size, 4), dtype)
    w = jnp.ones((kernel, kernel, 4, cout), dtype)
    text = jax.jit(lambda x, w: _ours(x, w, 1, padding)).lower(x, w).as_text()
    assert text.count("convolution") == convolutions, text


def test_bf16_matmul_accumulates_in_float32_forward_and_gradients():
    """bf16_matmul: bfloat16 operands into a float32-accumulating dot (what XLA:CPU runs natively), in the
    forward and both gradient dots; the values equal float32 math on the bfloat16-rounded operands up to
    the output's bfloat16 rounding."""
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 5, 7, 96)).astype(jnp.bfloat16)
    w = (jax.random.normal(kw, (96, 48)) / np.sqrt(96)).astype(jnp.bfloat16)
    g = jax.random.normal(kg, (2, 5, 7, 48)).astype(jnp.bfloat16)
    out, vjp = jax.vjp(conv_ops.bf16_matmul, x, w)
    dx, dw = vjp(g)
    assert out.dtype == dx.dtype == dw.dtype == jnp.bfloat16
    x32, w32, g32 = (np.asarray(a, np.float32) for a in (x, w, g))
    want = {"out": x32 @ w32, "dx": g32 @ w32.T, "dw": np.einsum("bhwk,bhwn->kn", x32, g32)}
    for name, got in (("out", out), ("dx", dx), ("dw", dw)):
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(np.asarray(got, np.float32), want[name], rtol=1e-2, atol=1e-2 * scale, err_msg=name)
    text = jax.jit(lambda x, w, g: jax.vjp(conv_ops.bf16_matmul, x, w)[1](g)).lower(x, w, g).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert len(dots) == 2 and all("bf16>, tensor<" in d and "xbf16>) -> tensor<" in d and d.rstrip().endswith("xf32>")
                                  for d in dots), dots


@pytest.mark.parametrize("name,kwargs,size", [
    ("resnet18", {"num_classes": 5}, 64),
    ("unet_resnet", {"encoder": "resnet18", "num_classes": 3}, 64),
])
def test_bfloat16_training_gradients_follow_float32(name, kwargs, size):
    """A bfloat16 training step (BatchNorm in training mode, every convolution path of the model: im2col with
    bf16_matmul, 1x1 matmuls, XLA convolutions) compiles and runs on this backend, and its gradients point
    where float32's do."""
    from jaxcv.models import create_model

    x = jax.random.normal(jax.random.key(0), (4, size, size, 3))
    grads = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = create_model(name, dtype=dtype, **kwargs)
        variables = jax.jit(lambda x, m=model: m.init(jax.random.key(1), x, train=False))(x[:1])

        def loss(params, m=model, v=variables):
            out, _ = m.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(jnp.square(out["logits"].astype(jnp.float32)))

        grads[dtype] = jax.jit(jax.grad(loss))(variables["params"])
    flat32, flat16 = (np.concatenate([np.ravel(a).astype(np.float32) for a in jax.tree.leaves(grads[d])])
                      for d in (jnp.float32, jnp.bfloat16))
    assert np.all(np.isfinite(flat16))
    cosine = flat32 @ flat16 / (np.linalg.norm(flat32) * np.linalg.norm(flat16))
    # bfloat16 noise alone gives ~0.95 here (BatchNorm over 16 values on ResNet-18's 2x2 last stage); a wrong
    # or missing gradient path gives far less
    assert cosine > 0.9, cosine
