"""SAM's image encoder: a plain ViT with windowed and global attention, decomposed relative positions, and a
convolutional neck, laid out like `segment_anything.modeling.image_encoder.ImageEncoderViT` (NHWC).

Matches the reference: 16x16 patch-embedding conv, an absolute `pos_embed` [1, 64, 64, D] added channels-last,
pre-norm blocks (LayerNorm eps 1e-6, exact-erf GELU MLP), window attention on 14x14 windows of the zero-padded
token grid (no mask: padded tokens are zeros, so their keys/values are the qkv bias), global attention in the
blocks listed in `global_attn_indexes`, decomposed relative positions added to the logits
(`attn[qh, qw, kh, kw] += q . Rh[qh, kh] + q . Rw[qw, kw]` with the unscaled q), and a neck of 1x1 conv,
LayerNorm2d, 3x3 conv, LayerNorm2d (convs without bias). Submodules are named after the reference's
(`blocks_3/attn/qkv`, `neck_2`) so `blocks.3.attn.qkv.weight` maps one to one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.layers import Conv

Array = jax.Array
Dtype = Any


def gelu(x: Array) -> Array:
    """torch.nn.GELU(): the exact erf form (not the tanh approximation)."""
    return nn.gelu(x, approximate=False)


def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64 matrix of torch's 1-D linear resize, `align_corners=False`, no antialias
    (`F.interpolate(mode="linear"/"bilinear")`): source `(i + 0.5) * in / out - 0.5` clamped below at 0,
    neighbours `floor(src)` and the next one (clamped at the end), weights `1 - frac`, `frac`."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def get_rel_pos(q_size: int, k_size: int, rel_pos: Array) -> Array:
    """Relative-position embeddings [q_size, k_size, C] for every (query, key) pair of one axis, from the table
    `rel_pos` [L, C] (reference `get_rel_pos`): resized linearly (align_corners=False) to 2 * max(q, k) - 1 rows
    when L differs, then indexed by `q * max(k / q, 1) - k * max(q / k, 1) + (k - 1) * max(q / k, 1)`."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        m = jnp.asarray(linear_resize_matrix(rel_pos.shape[0], max_rel_dist), rel_pos.dtype)
        rel_pos = jnp.einsum("ol,lc->oc", m, rel_pos, precision=jax.lax.Precision.HIGHEST)
    # torch computes these coordinates in float32 and truncates them (`.long()`).
    q_coords = np.arange(q_size, dtype=np.float32)[:, None] * np.float32(max(k_size / q_size, 1.0))
    k_coords = np.arange(k_size, dtype=np.float32)[None, :] * np.float32(max(q_size / k_size, 1.0))
    rel = (q_coords - k_coords) + np.float32((k_size - 1) * max(q_size / k_size, 1.0))
    return rel_pos[rel.astype(np.int64)]


def window_partition(x: Array, window: int) -> tuple[Array, tuple[int, int]]:
    """[B, H, W, C] -> ([B * nh * nw, window, window, C], (Hp, Wp)): zero-pads bottom/right to multiples of
    `window`, then cuts row-major windows (reference `window_partition`)."""
    b, h, w, c = x.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(x: Array, window: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> Array:
    """Inverse of `window_partition`: [B * nh * nw, window, window, C] -> [B, H, W, C] (padding cropped)."""
    hp, wp = pad_hw
    h, w = hw
    b = x.shape[0] // (hp * wp // window // window)
    x = x.reshape(b, hp // window, wp // window, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, :h, :w]


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over the channel axis with the two-pass (biased) variance, as torch's LayerNorm and SAM's
    LayerNorm2d compute it ((x - u) / sqrt(mean((x - u)^2) + eps) * w + b)."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


class MLPBlock(nn.Module):
    """Linear(dim, mlp_dim), activation, Linear(mlp_dim, dim) (reference `common.MLPBlock`: `lin1`, `lin2`)."""

    mlp_dim: int
    act: Callable[[Array], Array] = gelu
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="lin1")(x)
        return nn.Dense(dim, dtype=self.dtype, param_dtype=self.param_dtype, name="lin2")(self.act(x))


class Attention(nn.Module):
    """Multi-head self-attention on a [B, H, W, C] grid with decomposed relative positions.

    `input_size`: the grid the relative-position tables are sized for ((window, window) in windowed blocks,
    the token grid in global ones): `rel_pos_h` [2 * input_size[0] - 1, head_dim], `rel_pos_w` likewise.
    """

    dim: int
    num_heads: int
    input_size: tuple[int, int]
    use_rel_pos: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, _ = x.shape
        heads, hd = self.num_heads, self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
        qkv = qkv.reshape(b, h * w, 3, heads, hd)  # output channels ordered (q|k|v, head, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, hd]
        attn = jnp.einsum("bqnc,bknc->bnqk", q * hd**-0.5, k)
        if self.use_rel_pos:
            init = nn.initializers.zeros
            rel_pos_h = self.param("rel_pos_h", init, (2 * self.input_size[0] - 1, hd), self.param_dtype)
            rel_pos_w = self.param("rel_pos_w", init, (2 * self.input_size[1] - 1, hd), self.param_dtype)
            rh = get_rel_pos(h, h, rel_pos_h.astype(attn.dtype))  # [qh, kh, hd]
            rw = get_rel_pos(w, w, rel_pos_w.astype(attn.dtype))  # [qw, kw, hd]
            rq = q.reshape(b, h, w, heads, hd)
            rel_h = jnp.einsum("byxnc,ykc->bnyxk", rq, rh)
            rel_w = jnp.einsum("byxnc,xkc->bnyxk", rq, rw)
            attn = attn.reshape(b, heads, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
            attn = attn.reshape(b, heads, h * w, h * w)
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bnqk,bknc->bqnc", attn, v).reshape(b, h, w, self.dim)  # heads merged head-major
        return nn.Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(out)


class Block(nn.Module):
    """Pre-norm transformer block: x += attn(norm1(x)) (in windows when `window_size > 0`);
    x += mlp(norm2(x))."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    window_size: int = 0
    input_size: tuple[int, int] = (64, 64)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        shortcut = x
        x = layer_norm(1e-6, name="norm1", **kw)(x)
        ws = self.window_size
        hw = x.shape[1:3]
        if ws > 0:
            x, pad_hw = window_partition(x, ws)
        size = (ws, ws) if ws > 0 else tuple(self.input_size)
        x = Attention(self.dim, self.num_heads, size, name="attn", **kw)(x)
        if ws > 0:
            x = window_unpartition(x, ws, pad_hw, hw)
        x = shortcut + x
        return x + MLPBlock(int(self.dim * self.mlp_ratio), name="mlp", **kw)(layer_norm(1e-6, name="norm2", **kw)(x))


class PatchEmbed(nn.Module):
    """Conv(patch, stride patch): [B, H, W, 3] -> [B, H / patch, W / patch, D] (reference `patch_embed.proj`)."""

    embed_dim: int
    patch_size: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        p = self.patch_size
        return Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    param_dtype=self.param_dtype, name="proj")(x)


class ImageEncoderViT(nn.Module):
    """[B, img, img, 3] (normalized, padded) -> image embedding [B, img / patch, img / patch, out_chans].

    Defaults are SAM ViT-B's; `_build_sam` fixes img 1024, patch 16, window 14, out 256, mlp ratio 4.
    """

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_stages: bool = False) -> Array | tuple[Array, list]:
        """`return_stages`: also the token grids [B, g, g, D] entering each block and leaving the last one."""
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        grid = self.img_size // self.patch_size
        x = PatchEmbed(self.embed_dim, self.patch_size, name="patch_embed", **kw)(x)
        pos_embed = self.param("pos_embed", nn.initializers.zeros, (1, grid, grid, self.embed_dim), self.param_dtype)
        x = x + pos_embed.astype(x.dtype)
        stages = [x]
        for i in range(self.depth):
            window = 0 if i in tuple(self.global_attn_indexes) else self.window_size
            x = Block(self.embed_dim, self.num_heads, self.mlp_ratio, window, (grid, grid), name=f"blocks_{i}",
                      **kw)(x)
            stages.append(x)
        x = Conv(self.out_chans, (1, 1), use_bias=False, name="neck_0", **kw)(x)
        x = layer_norm(1e-6, name="neck_1", **kw)(x)
        x = Conv(self.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="neck_2", **kw)(x)
        x = layer_norm(1e-6, name="neck_3", **kw)(x)
        return (x, stages) if return_stages else x

