"""Convolution as shifted slices + one matmul ("im2col"), a drop-in `lax.conv_general_dilated`.

Why: XLA:CPU lowers the *gradients* of convolutions poorly, and small maps with many channels slowly even
forward (the per-shape timings are in `benchmarks/README.md`). Writing the convolution as K*K strided
slices concatenated on the channel axis and one `[N, K*K*Cin] x [K*K*Cin, Cout]` matmul turns both passes
into matmuls, which XLA:CPU runs far faster; autodiff of slices and
a matmul is again slices (pads) and matmuls.

`conv_general_dilated` here takes the arguments of `lax.conv_general_dilated` and is passed to
`flax.linen.Conv(conv_general_dilated=...)` by `jaxcv.models.layers.Conv`. Which path it takes is
chosen at trace time by `set_conv_impl` (config key `conv_impl`):

- `"auto"` (default): on the CPU backend, 1x1 kernels as a matmul and larger kernels by output size
  (`_use_im2col`: im2col up to `IM2COL_MAX_ROWS` output rows, XLA's convolution above, which with
  `jaxcv.runtime`'s YNNPACK fusions is the faster one on large maps); XLA's convolution elsewhere (on GPU
  and TPU the backend's own convolutions are the fast path);
- `"xla"`: always `lax.conv_general_dilated`;
- `"im2col"`: always the matmul form (where it applies).

Depthwise convolutions (one channel per group, MobileNet's and Xception's) go through
`depthwise_shift_conv` on the CPU backend unless `"xla"` is chosen: XLA:CPU's grouped convolution is several
times slower there (`benchmarks/depthwise.py`). Other grouped, dilated or transposed (lhs-dilated)
convolutions and layouts other than NHWC/HWIO always use XLA. The result equals XLA's to float32 round-off
(the sums run in another order); parameters keep flax's layout (HWIO kernels), so checkpoints and torchvision
interop are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "im2col")
_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
_impl = "auto"
IM2COL_MAX_ROWS = 1024  # see _use_im2col
BF16_IM2COL_MIN_COUT = 128  # see _use_im2col


def set_conv_impl(name: str) -> None:
    """Selects the convolution implementation for functions traced from now on (a function jit has
    already traced keeps the form it was traced with)."""
    global _impl
    if name not in CONV_IMPLS:
        raise ValueError(f"conv_impl={name!r}: expected one of {', '.join(CONV_IMPLS)}")
    _impl = name


def get_conv_impl() -> str:
    return _impl


def _is_one(x: Sequence[int] | None) -> bool:
    return x is None or all(v == 1 for v in x)


def _use_im2col(lhs_shape: Sequence[int], rhs_shape: Sequence[int], strides: Sequence[int],
                padding: Sequence[tuple[int, int]], bf16: bool = False) -> bool:
    """The `auto` rule on the CPU backend (chosen from per-layer timings, benchmarks/README.md): 1x1 kernels are
    a plain matmul; larger kernels use XLA's convolution when the output has more than `IM2COL_MAX_ROWS` rows
    (batch x output pixels), where it beats im2col (few channels, large maps: the U-Net decoder), and im2col
    on smaller outputs, where XLA's convolution is slow (small maps).

    bfloat16 (`bf16`: both operands bfloat16): XLA:CPU computes every convolution in float32 (converts around
    it), while im2col's matmul runs natively in bfloat16 (`bf16_matmul`), so im2col also wins on large
    outputs when the matmul is wide enough to outweigh writing the KH*KW-times larger patches: from
    `BF16_IM2COL_MIN_COUT` output channels (below that it is slower than XLA's; benchmarks/README.md)."""
    if _impl != "auto":
        return _impl == "im2col"
    if jax.default_backend() != "cpu":
        return False
    kh, kw = rhs_shape[:2]
    if kh == kw == 1:
        return True
    (pt, pb), (pl, pr) = padding
    ho = (lhs_shape[1] + pt + pb - kh) // strides[0] + 1
    wo = (lhs_shape[2] + pl + pr - kw) // strides[1] + 1
    if lhs_shape[0] * ho * wo <= IM2COL_MAX_ROWS:
        return True
    return bf16 and rhs_shape[3] >= BF16_IM2COL_MIN_COUT


def im2col_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """2-D convolution as slices + matmul. lhs: [B, H, W, Cin]; rhs: [KH, KW, Cin, Cout] (HWIO);
    padding: ((top, bottom), (left, right)); returns [B, Ho, Wo, Cout] (NHWC), as XLA would."""
    kh, kw, cin, cout = rhs.shape
    sh, sw = strides
    (pt, pb), (pl, pr) = padding
    x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if (pt, pb, pl, pr) != (0, 0, 0, 0) else lhs
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    cols = [
        x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]  # kh*kw slices [B, Ho, Wo, Cin], in the kernel's (i, j) order
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)  # [B, Ho, Wo, KH*KW*Cin]
    kernel = rhs.reshape(kh * kw * cin, cout)
    if preferred_element_type is None and patches.dtype == kernel.dtype == jnp.bfloat16:
        return bf16_matmul(patches, kernel)
    return jnp.einsum(
        "bhwk,ko->bhwo",
        patches,
        kernel,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _dot_f32(a: jax.Array, b: jax.Array, dims: tuple[Any, Any]) -> jax.Array:
    return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x: [..., K] bfloat16, w: [K, N] bfloat16 -> [..., N] bfloat16, accumulated in float32.

    Why: XLA:CPU runs a dot with bfloat16 inputs natively (AVX-512 BF16; its FLOP/s against float32 are in
    benchmarks/README.md) only when it accumulates to float32; a bfloat16-out dot, and every convolution, is
    rewritten to float32 with converts around it (no faster than float32). The backward pass is written out
    (not autodiff) so that both gradient dots also take bfloat16 inputs, the incoming gradient rounded to
    bfloat16 as `torch.autocast` does: dx = g @ w.T and dw = x.T @ g, each accumulated in float32."""
    return _dot_f32(x, w, ((x.ndim - 1,), (0,))).astype(x.dtype)


def _bf16_matmul_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return bf16_matmul(x, w), (x, w)


def _bf16_matmul_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    g = g.astype(x.dtype)
    dx = _dot_f32(g, w, ((g.ndim - 1,), (1,))).astype(x.dtype)  # [..., N] x [K, N] -> [..., K]
    lead = tuple(range(x.ndim - 1))
    dw = _dot_f32(x, g, (lead, lead)).astype(w.dtype)  # sum over the leading axes: [K, N]
    return dx, dw


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def _explicit_pads(lhs_shape: Sequence[int], rhs_shape: Sequence[int], strides: Sequence[int],
                   padding: str | Sequence[tuple[int, int]], rhs_dilation: Sequence[int] | None = None
                   ) -> tuple[tuple[int, int], ...]:
    """`padding` ("SAME", "VALID" or explicit pairs) as explicit (lo, hi) pairs of the NHWC spatial axes, for
    the kernel's extent after `rhs_dilation`."""
    if not isinstance(padding, str):
        return tuple(tuple(p) for p in padding)
    window = [(k - 1) * d + 1 for k, d in zip(rhs_shape[:2], rhs_dilation or (1, 1), strict=True)]
    return tuple(tuple(p) for p in lax.padtype_to_pads(lhs_shape[1:3], window, strides, padding))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` with the same arguments; 2-D NHWC/HWIO convolutions without
    grouping or dilation go through `im2col_conv` when `set_conv_impl` says so."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) if dimension_numbers else None
    simple = (
        lhs.ndim == 4
        and dn == _NHWC
        and feature_group_count == 1
        and batch_group_count == 1
        and _is_one(lhs_dilation)
        and _is_one(rhs_dilation)
    )
    depthwise = (
        lhs.ndim == 4
        and dn == _NHWC
        and feature_group_count == lhs.shape[3] == rhs.shape[3] > 1
        and rhs.shape[2] == 1
        and batch_group_count == 1
        and _is_one(lhs_dilation)
        and preferred_element_type is None
    )
    if depthwise and _impl != "xla" and jax.default_backend() == "cpu":
        pads = _explicit_pads(lhs.shape, rhs.shape, window_strides, padding, rhs_dilation)
        return depthwise_shift_conv(lhs, rhs, window_strides, pads, rhs_dilation)
    if simple:
        pads = _explicit_pads(lhs.shape, rhs.shape, window_strides, padding)
        bf16 = lhs.dtype == rhs.dtype == jnp.bfloat16 and preferred_element_type is None
        if _use_im2col(lhs.shape, rhs.shape, window_strides, pads, bf16):
            return im2col_conv(lhs, rhs, tuple(window_strides), pads, precision, preferred_element_type)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type,
    )


def depthwise_shift_conv(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                         padding: Sequence[tuple[int, int]], rhs_dilation: Sequence[int] | None = None) -> jax.Array:
    """Depthwise convolution as K*K strided slices of the zero-padded input, each times its tap's per-channel
    weight, summed. lhs: [B, H, W, C] NHWC; rhs: [K, K, 1, C] HWIO with `feature_group_count=C`; -> [B, H', W', C].

    Why: XLA:CPU's grouped convolution with one channel per group is slow, in its gradients above all; this
    form is elementwise work XLA fuses, and its gradients are slices, pads and sums (timings per shape:
    `benchmarks/depthwise.py`). Equals `lax.conv_general_dilated` to float32 round-off (another summation order).
    """
    (sh, sw), (dh, dw) = tuple(strides), tuple(rhs_dilation or (1, 1))
    kh, kw = rhs.shape[:2]
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = None
    for i in range(kh):  # K*K static taps (trace-time loop over the kernel window, not over data)
        for j in range(kw):
            tap = lax.slice(x, (0, i * dh, j * dw, 0),
                            (x.shape[0], i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, x.shape[3]),
                            (1, sh, sw, 1))
            term = tap * rhs[i, j, 0]
            out = term if out is None else out + term
    return out
