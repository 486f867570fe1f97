"""Segment Anything (SAM v1): image encoder + prompt encoder + mask decoder, as `segment_anything`'s `Sam` built
by `build_sam._build_sam` (image 1024, patch 16, window 14, prompt dim 256, mask_in_chans 16, decoder depth 2,
8 heads, MLP 2048; only the encoder's width, depth, heads and global blocks vary).

Variants: `sam_vit_b` (768, 12, 12, [2, 5, 8, 11]), `sam_vit_l` (1024, 24, 16, [5, 11, 17, 23]), `sam_vit_h`
(1280, 32, 16, [7, 15, 23, 31]); `sam(encoder_embed_dim=..., ...)` builds any size. Weights:
`from_segment_anything(state_dict, ...)` (registered as importer "segment_anything"), strict about every key
and shape. Variables: `params` and `buffers` (the prompt encoder's fixed gaussian matrix).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.sam.image_encoder import ImageEncoderViT
from jaxcv.models.sam.mask_decoder import MaskDecoder
from jaxcv.models.sam.prompt_encoder import PromptEncoder

Array = jax.Array
Dtype = Any

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
MASK_THRESHOLD = 0.0

# name -> (encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes), as build_sam.
SAM_CONFIGS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "sam_vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


class Sam(nn.Module):
    """SAM. Images are NHWC, normalized (`(x - PIXEL_MEAN) / PIXEL_STD`) and zero-padded to `image_size`;
    prompts are in input-image pixels (after `ResizeLongestSide`); see `jaxcv.sam.Predictor` for raw images."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    pixel_mean = PIXEL_MEAN
    pixel_std = PIXEL_STD
    mask_threshold = MASK_THRESHOLD

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def setup(self) -> None:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        g = self.embedding_size
        self.image_encoder = ImageEncoderViT(
            img_size=self.image_size, patch_size=self.patch_size, embed_dim=self.encoder_embed_dim,
            depth=self.encoder_depth, num_heads=self.encoder_num_heads, mlp_ratio=4.0,
            out_chans=self.prompt_embed_dim, window_size=self.window_size,
            global_attn_indexes=tuple(self.encoder_global_attn_indexes), **kw,
        )
        self.prompt_encoder = PromptEncoder(self.prompt_embed_dim, (g, g), (self.image_size, self.image_size),
                                            self.mask_in_chans, **kw)
        self.mask_decoder = MaskDecoder(self.prompt_embed_dim, 3, 3, 256, **kw)

    def embed_image(self, images: Array) -> Array:
        """images [B, S, S, 3] normalized, padded -> image embeddings [B, S / 16, S / 16, prompt_embed_dim]."""
        return self.image_encoder(images)

    def encode_prompts(self, points: Array | None = None, labels: Array | None = None, boxes: Array | None = None,
                       masks: Array | None = None) -> tuple[Array, Array]:
        """-> sparse [B, N, D], dense [B, g, g, D] (see `PromptEncoder`)."""
        return self.prompt_encoder(points, labels, boxes, masks)

    def decode_all(self, image_embeddings: Array, sparse: Array, dense: Array) -> tuple[Array, Array]:
        """All four mask tokens: low-res logits [B, 4, 4g, 4g], iou [B, 4]."""
        return self.mask_decoder.predict_masks(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)

    def decode(self, image_embeddings: Array, sparse: Array, dense: Array, multimask_output: bool = True
               ) -> tuple[Array, Array]:
        """-> low-res logits [B, C, 4g, 4g], iou [B, C]; C = 3 (tokens 1:4) if multimask_output else 1 (token 0)."""
        return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                 multimask_output)

    def predict_prompts(self, image_embeddings: Array, points: Array | None = None, labels: Array | None = None,
                        boxes: Array | None = None, masks: Array | None = None, multimask_output: bool = True
                        ) -> tuple[Array, Array]:
        """Prompts on precomputed embeddings [1 or B, g, g, D] -> (low-res logits [B, C, 4g, 4g], iou [B, C])."""
        sparse, dense = self.encode_prompts(points, labels, boxes, masks)
        return self.decode(image_embeddings, sparse, dense, multimask_output)

    def __call__(self, images: Array, points: Array | None = None, labels: Array | None = None,
                 boxes: Array | None = None, masks: Array | None = None, multimask_output: bool = True,
                 train: bool = False) -> tuple[Array, Array]:
        """The whole model: images [B, S, S, 3] and one prompt set per image -> (low-res logits, iou)."""
        return self.predict_prompts(self.embed_image(images), points, labels, boxes, masks, multimask_output)


def sam(encoder_embed_dim: int = 768, encoder_depth: int = 12, encoder_num_heads: int = 12,
        encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11), **kwargs: Any) -> Sam:
    """Any encoder size from its dims (defaults: ViT-B), the rest as `_build_sam` hard-wires it."""
    return Sam(encoder_embed_dim=encoder_embed_dim, encoder_depth=encoder_depth, encoder_num_heads=encoder_num_heads,
               encoder_global_attn_indexes=tuple(encoder_global_attn_indexes), **kwargs)


def sam_vit_b(**kwargs: Any) -> Sam:
    return sam(*SAM_CONFIGS["sam_vit_b"], **kwargs)


def sam_vit_l(**kwargs: Any) -> Sam:
    return sam(*SAM_CONFIGS["sam_vit_l"], **kwargs)


def sam_vit_h(**kwargs: Any) -> Sam:
    return sam(*SAM_CONFIGS["sam_vit_h"], **kwargs)


# ---------------------------------------------------------------- segment_anything state dicts

# Reference parameters stored as is (no layout change): embeddings, position tables, the gaussian buffer.
_RAW_LEAVES = ("weight", "pos_embed", "rel_pos_h", "rel_pos_w", "positional_encoding_gaussian_matrix")
_LEAF = {"kernel": "weight", "scale": "weight"}
_INDEXED = re.compile(r"^(.*)_(\d+)$")


def segment_anything_key(path: tuple[str, ...]) -> str:
    """Flax variable path (collection first) -> segment_anything state-dict key:
    ('params', 'image_encoder', 'blocks_3', 'attn', 'qkv', 'kernel') -> 'image_encoder.blocks.3.attn.qkv.weight'."""
    *modules, leaf = path[1:]
    parts = [_INDEXED.sub(r"\1.\2", m) for m in modules]
    return ".".join([*parts, _LEAF.get(leaf, leaf)])


def _is_raw(path: tuple[str, ...]) -> bool:
    """Variables whose flax layout is the torch layout (embedding tables and the encoder's own parameters)."""
    return path[-1] in _RAW_LEAVES


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The reference layout's shape of a flax variable: conv / transposed-conv kernels [kh, kw, a, b] ->
    [b, a, kh, kw] (torch conv [out, in, kh, kw], ConvTranspose2d [in, out, kh, kw]), dense kernels transposed."""
    if _is_raw(path):
        return shape
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _to_flax(path: tuple[str, ...], a: np.ndarray) -> np.ndarray:
    """Inverse of `_torch_shape` on values: [b, a, kh, kw] -> [kh, kw, a, b]; linear [out, in] -> [in, out]."""
    if _is_raw(path):
        return a
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if a.ndim == 2:
        return a.T
    return a


def init_variables(module: Sam) -> dict[str, Any]:
    """The module's variables as shapes only (`jax.eval_shape`, no compute): every parameter is reached."""
    s, m = module.image_size, 4 * module.embedding_size

    def everything(mdl: Sam) -> Any:  # both dense paths: with a mask prompt and `no_mask_embed`
        mdl.encode_prompts(boxes=jnp.zeros((1, 4)))
        return mdl(jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 2)), jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 4)),
                   jnp.zeros((1, m, m, 1)))

    def init(key: Array) -> Any:
        return module.init(key, method=everything)

    return jax.eval_shape(init, jax.random.key(0))


def from_segment_anything(state_dict: Mapping[str, np.ndarray], encoder_embed_dim: int = 768, encoder_depth: int = 12,
                          encoder_num_heads: int = 12,
                          encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11), **kwargs: Any
                          ) -> tuple[Sam, dict[str, Any]]:
    """A segment_anything `Sam.state_dict()` (numpy arrays, torch names and layouts) -> (module, variables).

    The arguments are `build_sam._build_sam`'s (defaults: ViT-B); `kwargs` go to `Sam` (e.g. `dtype`). Strict
    (`jaxcv.interop.strict_load`): one ValueError lists every missing, unexpected and mis-shaped key, shapes in
    torch layout. `pixel_mean` / `pixel_std` (non-persistent buffers, absent from real state dicts) are ignored.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    from jaxcv.interop import strict_load

    module = sam(encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes, **kwargs)
    flat = flatten_dict(dict(init_variables(module)))
    torch_abstract = unflatten_dict({
        path: jax.ShapeDtypeStruct(_torch_shape(path, tuple(spec.shape)), spec.dtype) for path, spec in flat.items()
    })
    loaded = strict_load(torch_abstract, state_dict, segment_anything_key, transform=lambda a: a,
                         ignore=lambda key: key in ("pixel_mean", "pixel_std"), source="segment_anything state dict",
                         target=f"Sam(encoder {encoder_embed_dim}x{encoder_depth})", reference_shape=tuple)
    variables = {path: jnp.asarray(_to_flax(path, np.asarray(v))) for path, v in flatten_dict(loaded).items()}
    return module, unflatten_dict(variables)


def _register() -> None:
    from jaxcv.models import MODELS
    from jaxcv.models.backbones import IMPORTERS

    MODELS.register("sam", sam)
    for name, builder in (("sam_vit_b", sam_vit_b), ("sam_vit_l", sam_vit_l), ("sam_vit_h", sam_vit_h)):
        MODELS.register(name, builder)
    IMPORTERS.register("segment_anything", from_segment_anything)


_register()
