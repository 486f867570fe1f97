"""Vision Transformer (NHWC input, linen) laid out exactly like timm's `VisionTransformer`.

Matches timm (`timm.models.vision_transformer`, default settings) in eval mode: a p x p stride-p conv patch
embedding (`patch_embed/proj`, patches flattened row-major over (h, w)), the class token first
(`cat(cls_token, patches) + pos_embed`, the position table covering the class token too), pre-norm blocks
(`x + attn(norm1(x))`, then `x + mlp(norm2(x))`), LayerNorm eps 1e-6, qkv with bias split as (3, heads,
head_dim), attention scale head_dim**-0.5, exact erf GELU (`nn.gelu(approximate=False)`; flax's default is the
tanh form), MLP ratio 4, final `norm`, then `head`. Parameter names follow timm's state dict (`cls_token`,
`pos_embed`, `blocks_3/attn/qkv`, `blocks_3/mlp/fc1`, `norm`, `head`), so a key is the flax path with `_<i>` ->
`.<i>`; the trainer can exclude `pos_embed` and `cls_token` from weight decay by name (timm's `no_weight_decay`).

Pooling (`pool`): "token" (timm `global_pool='token'`): `pre_logits` = token 0 after `norm`; "avg": the mean of
the patch tokens, then `fc_norm` (timm moves the final norm after the pool when `global_pool='avg'`, so `norm` is
then the identity and the parameters are named `fc_norm`).

Outputs (`__call__(x: [B, H, W, C], train) -> dict`):
- the patch-token map [B, H // p, W // p, D] under the level name of its stride (`level_name(p)`: `C4` for 16,
  `C2` for 4): the output of the final `norm` on the patch tokens (with `pool="avg"`, where `norm` is the
  identity, the last block's patch tokens). Sizes floor like the stride-p conv (no padding);
- `tokens` [B, 1 + N, D]: all final tokens (after `norm`), class token first (e.g. for Grad-CAM on the last block);
- with `num_classes > 0`: `pre_logits` [B, D] and float32 `logits` [B, num_classes].
Sown into `intermediates` (read with `mutable=["intermediates"]`): `embed` [B, 1 + N, D], the input of
`blocks_0` (timm's patch_embed -> _pos_embed -> pos_drop -> patch_drop -> norm_pre). Block outputs are the
`blocks_<i>` module outputs (`capture_intermediates`).

Position embeddings at other image sizes: the `pos_embed` parameter [1, 1 + gh * gw, D] keeps the grid of
`img_size`; when the input's patch grid differs, its grid part is resized in `__call__` (the class token entry is
kept) with `resample_abs_pos_embed`, torch-exact bicubic (`F.interpolate(mode="bicubic", align_corners=False)`);
the importer uses the same function when asked for another `img_size`. `pos_embed_antialias=True` (timm's default
in `resample_abs_pos_embed`) is torch's antialiased bicubic, Keys a = -0.5 with the taps renormalized at the borders,
which is the kernel of `jax.image.resize(method="bicubic")` (antialias on) as well; `False` is torch's plain
bicubic (a = -0.75, clamped border indices), which `jax.image.resize` does not provide (tests/test_vit.py measures
the differences). Weights are static numpy matrices built from the shapes.

From-scratch init as timm's default (`weight_init=''`): Linear weights trunc_normal(std 0.02, cut at +-2) with
zero bias, `pos_embed` trunc_normal(0.02), `cls_token` N(0, 1e-6), LayerNorm 1 / 0, the patch conv torch's
default (U(+-1/sqrt(fan_in)) weights and bias).

Weights: `IMPORTERS["timm:vit_tiny_patch16_224"]` (and small, base, large) maps a timm state dict of numpy
arrays: `num_classes` from `head.weight` (headless when absent), `img_size` defaults to the stored grid, and
`pos_embed` is resized at import when another `img_size` is asked for. Strict: every key used, every shape right.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.backbones import IMPORTERS, Level, level_name, register_backbone
from jaxcv.models.layers import Conv, output_dtype
from jaxcv.models.resnet import torch_linear_bias_init, torch_linear_kernel_init

Array = jax.Array
Dtype = Any

# name -> (patch, embed_dim, depth, heads); image size 224.
VIT_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "vit_tiny_patch16_224": (16, 192, 12, 3),
    "vit_small_patch16_224": (16, 384, 12, 6),
    "vit_base_patch16_224": (16, 768, 12, 12),
    "vit_large_patch16_224": (16, 1024, 24, 16),
}

# timm trunc_normal_(std=.02): cut at +-2 absolute (= +-100 standard deviations).
trunc_normal_02 = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# --- torch-exact bicubic resampling ---------------------------------------------------------------------------


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Cubic convolution kernel (Keys) with parameter `a` at distances x."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = True) -> np.ndarray:
    """[n_out, n_in] float64 weights of torch `F.interpolate(mode="bicubic", align_corners=False)` on one axis
    (size given, no scale factor, so scale = n_in / n_out).

    antialias=True (torch's `_upsample_bicubic2d_aa`, PIL-compatible): taps at |k - c| < support around
    c = scale * (i + 0.5) - 0.5, support = 2 * max(scale, 1), kernel Keys a = -0.5 stretched by max(scale, 1),
    weights renormalized over the taps inside the input. antialias=False (`upsample_bicubic2d`): 4 taps around
    floor(c), a = -0.75, indices clamped to the border (no renormalization)."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        if antialias:
            center = scale * (i + 0.5)
            support = 2.0 * scale if scale >= 1 else 2.0
            invscale = 1.0 / scale if scale >= 1 else 1.0
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), n_in)
            k = np.arange(xmin, xmax)
            w = _cubic((k - center + 0.5) * invscale, -0.5)
            if w.sum() != 0:
                m[i, xmin:xmax] = w / w.sum()
        else:
            src = scale * (i + 0.5) - 0.5  # cubic: not clamped at 0
            base = math.floor(src)
            t = min(max(src - base, 0.0), 1.0)
            w = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for j in range(4):
                m[i, min(max(base - 1 + j, 0), n_in - 1)] += w[j]
    return m


def resample_abs_pos_embed(pos_embed: Any, new_grid: tuple[int, int], old_grid: tuple[int, int],
                           num_prefix_tokens: int = 1, antialias: bool = True) -> Any:
    """timm's `resample_abs_pos_embed`: [1, prefix + gh * gw, D] -> [1, prefix + new_h * new_w, D], the grid
    part (row-major) resized with torch-exact bicubic, the prefix (class) tokens kept. Works on numpy arrays
    (import time, float64 weights) and jax arrays (in `__call__`, weights in the array's dtype)."""
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    xp = np if isinstance(pos_embed, np.ndarray) else jnp
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    d = grid.shape[-1]
    grid = grid.reshape(old_grid[0], old_grid[1], d)
    mh = bicubic_matrix(old_grid[0], new_grid[0], antialias)
    mw = bicubic_matrix(old_grid[1], new_grid[1], antialias)
    if xp is jnp:
        mh, mw = jnp.asarray(mh, grid.dtype), jnp.asarray(mw, grid.dtype)
        out = jnp.einsum("ih,hwd,jw->ijd", mh, grid, mw)
    else:
        out = np.einsum("ih,hwd,jw->ijd", mh, grid.astype(np.float64), mw).astype(pos_embed.dtype)
    return xp.concatenate([prefix, out.reshape(1, new_grid[0] * new_grid[1], d)], axis=1)


# --- modules -------------------------------------------------------------------------------------------------------


def _dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
    return nn.Dense(features, kernel_init=trunc_normal_02, bias_init=nn.initializers.zeros, dtype=dtype,
                    param_dtype=param_dtype, name=name)


def _layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


class PatchEmbed(nn.Module):
    """timm PatchEmbed: x [B, H, W, C] -> [B, H // p, W // p, D] (stride-p conv `proj`, no padding)."""

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        p = self.patch_size
        fan_in = x.shape[-1] * p * p
        return Conv(self.embed_dim, (p, p), strides=(p, p), padding=((0, 0), (0, 0)),
                    kernel_init=torch_linear_kernel_init, bias_init=torch_linear_bias_init(fan_in),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)


class Attention(nn.Module):
    """timm Attention: qkv (one Linear, output split (3, heads, head_dim)), softmax(q k^T * head_dim**-0.5) v,
    proj. x [B, N, D] -> [B, N, D]; the softmax runs in float32."""

    num_heads: int
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        b, n, d = x.shape
        hd = d // self.num_heads
        qkv = _dense(3 * d, "qkv", self.dtype, self.param_dtype)(x).reshape(b, n, 3, self.num_heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, hd]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(hd**-0.5, q.dtype), k)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        attn = nn.Dropout(self.attn_drop, deterministic=not train)(attn)
        y = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, d)
        y = _dense(d, "proj", self.dtype, self.param_dtype)(y)
        return nn.Dropout(self.proj_drop, deterministic=not train)(y)


class Mlp(nn.Module):
    """timm Mlp: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

    hidden: int
    drop: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = nn.gelu(_dense(self.hidden, "fc1", self.dtype, self.param_dtype)(x), approximate=False)
        y = nn.Dropout(self.drop, deterministic=not train)(y)
        y = _dense(x.shape[-1], "fc2", self.dtype, self.param_dtype)(y)
        return nn.Dropout(self.drop, deterministic=not train)(y)


def drop_path(x: Array, rate: float, train: bool, module: nn.Module) -> Array:
    """timm DropPath (stochastic depth): zero whole samples with probability `rate`, scale the rest by
    1 / (1 - rate); identity when not training or rate == 0. Uses the "dropout" rng."""
    if not train or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Block(nn.Module):
    """timm pre-norm Block: x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))). x [B, N, D]."""

    num_heads: int
    mlp_ratio: float = 4.0
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        d = x.shape[-1]
        y = _layer_norm("norm1", self.dtype, self.param_dtype)(x)
        y = Attention(self.num_heads, self.attn_drop, self.proj_drop, self.dtype, self.param_dtype, name="attn")(
            y, train)
        x = x + drop_path(y, self.drop_path, train, self)
        y = _layer_norm("norm2", self.dtype, self.param_dtype)(x)
        y = Mlp(int(d * self.mlp_ratio), self.proj_drop, self.dtype, self.param_dtype, name="mlp")(y, train)
        return x + drop_path(y, self.drop_path, train, self)


class VisionTransformer(nn.Module):
    """timm VisionTransformer on NHWC inputs (see the module docstring for outputs, pooling and resizing).

    `img_size` fixes the grid of the `pos_embed` parameter (inputs of other sizes get it resized);
    `drop_path_rate` grows linearly over the blocks as timm's; `drop_rate` is the dropout before `head`."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 0
    pool: str = "token"  # "token" | "avg"
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    pos_embed_antialias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid of `img_size`: the grid `pos_embed` is stored at."""
        h, w = _pair(self.img_size)
        return h // self.patch_size, w // self.patch_size

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        """The patch-token map at stride `patch_size` (`C4` for 16); no level when the patch size is not a power
        of two in 2..32 (then the model still returns `tokens` and the classifier outputs)."""
        try:
            return {level_name(self.patch_size): Level(self.embed_dim, self.patch_size)}
        except ValueError:
            return {}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if self.pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' or 'avg', got {self.pool!r}")
        d = self.embed_dim
        x = PatchEmbed(self.patch_size, d, self.dtype, self.param_dtype, name="patch_embed")(jnp.asarray(x, self.dtype))
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d)  # row-major (h, w), as torch's flatten(2).transpose(1, 2)
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), self.param_dtype)
        stored = self.grid_size
        pos_embed = self.param("pos_embed", trunc_normal_02, (1, 1 + stored[0] * stored[1], d), self.param_dtype)
        pos_embed = resample_abs_pos_embed(pos_embed, (gh, gw), stored, 1, self.pos_embed_antialias)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, d)).astype(x.dtype), x], axis=1)
        x = x + pos_embed.astype(x.dtype)
        self.sow("intermediates", "embed", x)
        rates = np.linspace(0.0, self.drop_path_rate, self.depth) if self.depth > 1 else [self.drop_path_rate]
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, self.proj_drop_rate, self.attn_drop_rate, float(rates[i]),
                      self.dtype, self.param_dtype, name=f"blocks_{i}")(x, train)
        if self.pool == "token":
            x = _layer_norm("norm", self.dtype, self.param_dtype)(x)
        out: dict[str, Array] = {"tokens": x}
        level = self.feature_info()
        if level:
            out[next(iter(level))] = x[:, 1:].reshape(b, gh, gw, d)
        if self.pool == "token":
            pre = x[:, 0]
        else:  # fc_norm exists with or without a head, as timm's
            pre = _layer_norm("fc_norm", self.dtype, self.param_dtype)(jnp.mean(x[:, 1:], axis=1))
        if self.num_classes > 0:
            out["pre_logits"] = pre
            pre = nn.Dropout(self.drop_rate, deterministic=not train)(pre.astype(output_dtype(self.dtype)))
            out["logits"] = nn.Dense(self.num_classes, kernel_init=trunc_normal_02, bias_init=nn.initializers.zeros,
                                     dtype=pre.dtype, param_dtype=self.param_dtype, name="head")(pre)
        return out


# --- timm weights --------------------------------------------------------------------------------------------------

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def timm_key(path: tuple[str, ...]) -> str:
    """Flax variable path (collection first) -> timm key: ("params", "blocks_3", "attn", "qkv", "kernel") ->
    "blocks.3.attn.qkv.weight", ("params", "pos_embed") -> "pos_embed"."""
    _, *modules, leaf = path
    if not modules:
        return leaf  # cls_token, pos_embed
    return ".".join([*(_INDEXED.sub(r"\1.\2", m) for m in modules), _LEAF[leaf]])


def from_timm_vit(state_dict: Mapping[str, np.ndarray], arch: str = "vit_tiny_patch16_224",
                  img_size: int | tuple[int, int] | None = None,
                  **kwargs: Any) -> tuple[VisionTransformer, dict[str, Any]]:
    """timm `vit_*` state dict -> (`VisionTransformer`, {"params"}).

    Width, depth, heads and patch size are the arch's; `num_classes` is read from `head.weight` (0 without it);
    `img_size` defaults to the stored (square, as timm assumes) position grid times the patch size; another
    `img_size` resizes `pos_embed` here (`resample_abs_pos_embed`). `kwargs` (e.g. `dtype`, `pool`,
    `num_classes`) go to the module."""
    from jaxcv.interop import abstract_variables, strict_load

    patch, dim, depth, heads = VIT_CONFIGS[arch]
    head = state_dict.get("head.weight")
    kwargs = {"num_classes": int(np.shape(head)[0]) if head is not None else 0, **kwargs}
    sd = dict(state_dict)
    pos = sd.get("pos_embed")
    old_grid = None
    if pos is not None and np.ndim(pos) == 3:
        side = math.isqrt(int(np.shape(pos)[1]) - 1)
        if side * side == np.shape(pos)[1] - 1:
            old_grid = (side, side)
    if img_size is None:
        img_size = old_grid[0] * patch if old_grid else 224
    module = VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                               **kwargs)
    if old_grid is not None and old_grid != module.grid_size:
        sd["pos_embed"] = resample_abs_pos_embed(np.asarray(pos, np.float32), module.grid_size, old_grid, 1,
                                                 module.pos_embed_antialias)
    h, w = _pair(img_size)
    variables = strict_load(abstract_variables(module, (h, w)), sd, timm_key, source=f"timm {arch} state dict",
                            target=f"VisionTransformer({arch})")
    return module, variables


def _make_vit(arch: str, /, **kwargs: Any) -> VisionTransformer:
    patch, dim, depth, heads = VIT_CONFIGS[arch]
    defaults = {"img_size": 224, "patch_size": patch, "embed_dim": dim, "depth": depth, "num_heads": heads}
    return VisionTransformer(**{**defaults, **kwargs})


for _arch in VIT_CONFIGS:
    register_backbone(_arch, functools.partial(_make_vit, _arch))
    IMPORTERS.register(f"timm:{_arch}", functools.partial(from_timm_vit, arch=_arch))
