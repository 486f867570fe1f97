"""SAM's prompt encoder: points, boxes and masks -> sparse tokens and a dense map, laid out like
`segment_anything.modeling.prompt_encoder.PromptEncoder` (NHWC).

Matches the reference: random-Fourier positional encoding (`pe_layer`: coordinates in [0, 1] -> 2c - 1 ->
@ gaussian [2, F] (row 0 = x) -> times 2 pi -> [sin | cos]); points are shifted to pixel centres (+0.5) and
normalized by the 1024x1024 input size; without a box a padding point (0, 0) with label -1 is appended;
label -1 tokens are zeroed and get `not_a_point_embed`, labels 0 / 1 add `point_embeddings[0 / 1]`, box
corners add `point_embeddings[2 / 3]`; sparse order: points (+ pad), then the two corners. Masks go through
Conv(1, c/4, 2, s2), LayerNorm2d, GELU, Conv(c/4, c, 2, s2), LayerNorm2d, GELU, Conv(c, D, 1); without a
mask the dense map is `no_mask_embed` everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models.layers import Conv
from jaxcv.models.sam.image_encoder import gelu, layer_norm

Array = jax.Array
Dtype = Any


class Embedding(nn.Module):
    """A learned table `weight` [num, dim] (torch `nn.Embedding`, read whole as the reference does)."""

    num: int
    dim: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> Array:
        return self.param("weight", nn.initializers.normal(1.0), (self.num, self.dim), self.param_dtype)


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding. The gaussian matrix [2, F] is a buffer in the reference (not trained),
    so it lives in the `buffers` collection: `buffers/.../positional_encoding_gaussian_matrix`."""

    num_pos_feats: int = 64
    scale: float = 1.0

    def setup(self) -> None:
        self.gaussian = self.variable(
            "buffers", "positional_encoding_gaussian_matrix",
            lambda: self.scale * jax.random.normal(self.make_rng("params"), (2, self.num_pos_feats), jnp.float32),
        )

    def encode(self, coords: Array) -> Array:
        """coords [..., 2] xy in [0, 1] -> [..., 2F] ([sin | cos])."""
        c = 2.0 * coords.astype(jnp.float32) - 1.0
        c = c @ self.gaussian.value
        c = 2 * math.pi * c
        return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)

    def dense(self, h: int, w: int) -> Array:
        """The encoding of the h x w cell centres ((j + 0.5) / w, (i + 0.5) / h): [h, w, 2F]."""
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
        return self.encode(grid)

    def with_coords(self, coords: Array, image_size: tuple[int, int]) -> Array:
        """coords [..., 2] xy in pixels of an image (h, w) -> [..., 2F]."""
        scale = jnp.asarray([image_size[1], image_size[0]], coords.dtype)
        return self.encode(coords / scale)

    def __call__(self, h: int, w: int) -> Array:
        return self.dense(h, w)


class PromptEncoder(nn.Module):
    """Prompts -> (sparse [B, N, D], dense [B, h, w, D]); h, w = `image_embedding_size`.

    `points` [B, P, 2] xy in input-image (1024) pixels, `labels` [B, P] (1 foreground, 0 background, -1 ignored),
    `boxes` [B, 4] xyxy, `masks` [B, 4h, 4w, 1] low-res mask logits. Any of them may be None.
    """

    embed_dim: int = 256
    image_embedding_size: tuple[int, int] = (64, 64)
    input_image_size: tuple[int, int] = (1024, 1024)
    mask_in_chans: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        d, kw = self.embed_dim, {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.pe_layer = PositionEmbeddingRandom(d // 2)
        self.point_embeddings = [Embedding(1, d, self.param_dtype) for _ in range(4)]
        self.not_a_point_embed = Embedding(1, d, self.param_dtype)
        c = self.mask_in_chans
        self.mask_downscaling_0 = Conv(c // 4, (2, 2), strides=(2, 2), padding="VALID", **kw)
        self.mask_downscaling_1 = layer_norm(1e-6, **kw)
        self.mask_downscaling_3 = Conv(c, (2, 2), strides=(2, 2), padding="VALID", **kw)
        self.mask_downscaling_4 = layer_norm(1e-6, **kw)
        self.mask_downscaling_6 = Conv(d, (1, 1), **kw)
        self.no_mask_embed = Embedding(1, d, self.param_dtype)

    def get_dense_pe(self) -> Array:
        """Positional encoding of the image embedding's cells: [h, w, D]."""
        return self.pe_layer(*self.image_embedding_size)

    def embed_points(self, points: Array, labels: Array, pad: bool) -> Array:
        """[B, P, 2], [B, P] -> [B, P (+1 padding point), D]."""
        points = points.astype(jnp.float32) + 0.5
        labels = jnp.asarray(labels)
        if pad:
            b = points.shape[0]
            points = jnp.concatenate([points, jnp.zeros((b, 1, 2), points.dtype)], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones((b, 1), labels.dtype)], axis=1)
        emb = self.pe_layer.with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = jnp.where(lab == -1, self.not_a_point_embed()[0], emb)
        emb = emb + jnp.where(lab == 0, self.point_embeddings[0]()[0], 0.0)
        return emb + jnp.where(lab == 1, self.point_embeddings[1]()[0], 0.0)

    def embed_tokens(self, points: Array, labels: Array) -> Array:
        """Prompt tokens [B, P, 2] with labels [B, P] -> [B, P, D]: SAM's point labels (-1 padding, 0 background,
        1 foreground) and box corners (2 top-left, 3 bottom-right, embedded as `embed_boxes` does). A box and a
        single point are then both two tokens (corners; point + padding, which is what SAM pads a lone point
        with), so box- and point-prompted items batch in one static shape (fine-tuning mixes them)."""
        emb = self.embed_points(points, labels, pad=False)
        lab = jnp.asarray(labels)[..., None]
        emb = emb + jnp.where(lab == 2, self.point_embeddings[2]()[0], 0.0)
        return emb + jnp.where(lab == 3, self.point_embeddings[3]()[0], 0.0)

    def embed_boxes(self, boxes: Array) -> Array:
        """[B, 4] xyxy -> [B, 2, D] (corner tokens)."""
        corners = (boxes.astype(jnp.float32) + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.with_coords(corners, self.input_image_size)
        return emb + jnp.stack([self.point_embeddings[2]()[0], self.point_embeddings[3]()[0]])

    def embed_masks(self, masks: Array) -> Array:
        """[B, 4h, 4w, 1] -> [B, h, w, D]."""
        x = gelu(self.mask_downscaling_1(self.mask_downscaling_0(masks)))
        x = gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
        return self.mask_downscaling_6(x)

    def __call__(self, points: Array | None = None, labels: Array | None = None, boxes: Array | None = None,
                 masks: Array | None = None) -> tuple[Array, Array]:
        if points is not None:
            b = points.shape[0]
        elif boxes is not None:
            b = boxes.shape[0]
        elif masks is not None:
            b = masks.shape[0]
        else:
            b = 1
        if self.is_initializing():  # create every parameter, whichever prompts the init call uses
            for emb in (*self.point_embeddings, self.not_a_point_embed, self.no_mask_embed):
                emb()
            if masks is None:
                h, w = self.image_embedding_size
                self.embed_masks(jnp.zeros((1, 4 * h, 4 * w, 1), jnp.float32))
        parts = []
        if points is not None:
            if labels is None:
                raise ValueError("points need labels")
            parts.append(self.embed_points(points, labels, pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        sparse = jnp.concatenate(parts, axis=1) if parts else jnp.zeros((b, 0, self.embed_dim), jnp.float32)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = jnp.broadcast_to(self.no_mask_embed()[0], (b, h, w, self.embed_dim))
        return sparse, dense
