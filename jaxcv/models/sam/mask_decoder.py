"""SAM's mask decoder: a two-way transformer between prompt tokens and the image embedding, transposed-conv
upscaling, hypernetwork MLPs and an IoU head, laid out like `segment_anything.modeling.mask_decoder.MaskDecoder`
and `transformer.TwoWayTransformer` (NHWC).

Matches the reference: tokens = [iou_token, 4 mask tokens, sparse prompts]; src = image embedding + dense
prompt; post-norm two-way blocks (nn.LayerNorm eps 1e-5): self-attention (layer 0 without PE and without
residual), token->image cross attention, ReLU MLP 256->2048->256, image->token cross attention (q = image + PE,
k = tokens + PE, v = tokens); the queries' PE is the initial tokens in every layer; cross attentions project to
dim / 2 (`attention_downsample_rate` 2); a final token->image attention and LayerNorm. Upscaling:
ConvT(2, s2), LayerNorm2d, GELU, ConvT(2, s2), GELU; masks = MLP_i(mask token i) . upscaled; IoU = MLP(token 0)
(no sigmoid). `multimask_output` selects tokens 1:4, otherwise 0:1.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models.sam.image_encoder import MLPBlock, gelu, layer_norm
from jaxcv.models.sam.prompt_encoder import Embedding

Array = jax.Array
Dtype = Any


class Attention(nn.Module):
    """Multi-head attention with q/k/v projected to `embedding_dim // downsample_rate` (reference
    `transformer.Attention`): q, k, v [B, N, D] -> [B, Nq, D]; logits (q . k) / sqrt(head_dim)."""

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q: Array, k: Array, v: Array) -> Array:
        internal = self.embedding_dim // self.downsample_rate
        if internal % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide {internal}")
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        heads, hd = self.num_heads, internal // self.num_heads
        q = nn.Dense(internal, name="q_proj", **kw)(q)
        k = nn.Dense(internal, name="k_proj", **kw)(k)
        v = nn.Dense(internal, name="v_proj", **kw)(v)
        q = q.reshape(*q.shape[:-1], heads, hd)
        k = k.reshape(*k.shape[:-1], heads, hd)
        v = v.reshape(*v.shape[:-1], heads, hd)
        attn = jnp.einsum("bqnc,bknc->bnqk", q, k) / jnp.sqrt(jnp.asarray(hd, q.dtype))
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bnqk,bknc->bqnc", attn, v).reshape(*q.shape[:-2], internal)
        return nn.Dense(self.embedding_dim, name="out_proj", **kw)(out)


class TwoWayAttentionBlock(nn.Module):
    """One two-way block: (queries [B, Nq, D], keys [B, Nk, D]) -> updated (queries, keys)."""

    embedding_dim: int
    num_heads: int
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: Array, keys: Array, query_pe: Array, key_pe: Array) -> tuple[Array, Array]:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        d, h, r = self.embedding_dim, self.num_heads, self.attention_downsample_rate
        self_attn = Attention(d, h, name="self_attn", **kw)
        if self.skip_first_layer_pe:
            queries = self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries)
        queries = layer_norm(1e-5, name="norm1", **kw)(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = queries + Attention(d, h, r, name="cross_attn_token_to_image", **kw)(q, k, keys)
        queries = layer_norm(1e-5, name="norm2", **kw)(queries)

        queries = queries + MLPBlock(self.mlp_dim, nn.relu, name="mlp", **kw)(queries)
        queries = layer_norm(1e-5, name="norm3", **kw)(queries)

        q, k = queries + query_pe, keys + key_pe
        keys = keys + Attention(d, h, r, name="cross_attn_image_to_token", **kw)(k, q, queries)
        keys = layer_norm(1e-5, name="norm4", **kw)(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """image [B, h, w, D], image_pe [B, h, w, D], tokens [B, N, D] -> (tokens [B, N, D], image [B, h*w, D])."""

    depth: int = 2
    embedding_dim: int = 256
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, image_pe: Array, tokens: Array) -> tuple[Array, Array]:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        b, h, w, c = image.shape
        keys = image.reshape(b, h * w, c)  # row-major cells, as torch's flatten(2) of NCHW
        key_pe = image_pe.reshape(b, h * w, c)
        queries = tokens
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                self.embedding_dim, self.num_heads, self.mlp_dim, self.attention_downsample_rate,
                skip_first_layer_pe=i == 0, name=f"layers_{i}", **kw,
            )(queries, keys, tokens, key_pe)
        attn = Attention(self.embedding_dim, self.num_heads, self.attention_downsample_rate,
                         name="final_attn_token_to_image", **kw)
        queries = queries + attn(queries + tokens, keys + key_pe, keys)
        return layer_norm(1e-5, name="norm_final_attn", **kw)(queries), keys


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (reference `mask_decoder.MLP`, `layers_i`)."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.output_dim if last else self.hidden_dim, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"layers_{i}")(x)
            if not last:
                x = nn.relu(x)
        return x


class ConvTranspose2x2(nn.Module):
    """torch ConvTranspose2d(k=2, s=2) as `nn.ConvTranspose(..., transpose_kernel=True)` computes it (the same
    `kernel` [kh, kw, out, in] and `bias` [out], so the torch weight [in, out, kh, kw] maps by a plain transpose):
    each input cell writes its own 2 x 2 output block, so the layer is one einsum and a reshape, [B, h, w, in] ->
    [B, 2h, 2w, out]. Same values as the convolution; written out because XLA:CPU's transposed convolution
    dominated a decoder training step (benchmarks/README.md, SAM)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, self.features, x.shape[-1]),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        y = jnp.einsum("nijc,abfc->niajbf", x.astype(self.dtype), kernel.astype(self.dtype))
        n, h, _, w, _, f = y.shape
        return y.reshape(n, 2 * h, 2 * w, f) + bias.astype(self.dtype)


def conv_transpose(features: int, name: str | None, dtype: Dtype, param_dtype: Dtype) -> ConvTranspose2x2:
    """The decoder's upscaling layer (torch ConvTranspose2d(k=2, s=2)), see `ConvTranspose2x2`."""
    return ConvTranspose2x2(features, dtype=dtype, param_dtype=param_dtype, name=name)


class MaskDecoder(nn.Module):
    """(image embedding [1 or B, h, w, D], image_pe [h, w, D], sparse [B, N, D], dense [B, h, w, D]) ->
    (masks [B, 4, 4h, 4w], iou [B, 4]) for all mask tokens (`predict_masks`) or the selected ones (`__call__`)."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_dim: int = 2048
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        d, kw = self.transformer_dim, {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.num_mask_tokens = self.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(self.transformer_depth, d, self.transformer_heads,
                                             self.transformer_mlp_dim, 2, **kw)
        self.iou_token = Embedding(1, d, self.param_dtype)
        self.mask_tokens = Embedding(self.num_mask_tokens, d, self.param_dtype)
        self.output_upscaling_0 = conv_transpose(d // 4, None, **kw)
        self.output_upscaling_1 = layer_norm(1e-6, **kw)
        self.output_upscaling_3 = conv_transpose(d // 8, None, **kw)
        self.output_hypernetworks_mlps = [MLP(d, d // 8, 3, **kw) for _ in range(self.num_mask_tokens)]
        self.iou_prediction_head = MLP(self.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth, **kw)

    def predict_masks(self, image_embeddings: Array, image_pe: Array, sparse: Array, dense: Array
                      ) -> tuple[Array, Array]:
        """All mask tokens: masks [B, 4, 4h, 4w] logits, iou [B, 4]."""
        b = sparse.shape[0]
        output_tokens = jnp.concatenate([self.iou_token(), self.mask_tokens()], axis=0).astype(sparse.dtype)
        tokens = jnp.concatenate([jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse], axis=1)
        src = jnp.broadcast_to(image_embeddings, (b, *image_embeddings.shape[1:])) + dense
        pos = jnp.broadcast_to(image_pe, src.shape)
        hs, src_tokens = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens]
        src = src_tokens.reshape(src.shape)
        up = gelu(self.output_upscaling_1(self.output_upscaling_0(src)))
        up = gelu(self.output_upscaling_3(up))  # [B, 4h, 4w, D / 8]
        hyper = jnp.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                          axis=1)  # [B, 4, D / 8]
        masks = jnp.einsum("bmc,byxc->bmyx", hyper, up)
        return masks, self.iou_prediction_head(iou_token_out)

    def __call__(self, image_embeddings: Array, image_pe: Array, sparse: Array, dense: Array,
                 multimask_output: bool = True) -> tuple[Array, Array]:
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse, dense)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]
