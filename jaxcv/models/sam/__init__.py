"""Segment Anything (SAM v1) in linen: `Sam`, the named variants and the segment_anything weights importer."""

from jaxcv.models.sam.image_encoder import ImageEncoderViT
from jaxcv.models.sam.mask_decoder import MaskDecoder, TwoWayTransformer
from jaxcv.models.sam.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from jaxcv.models.sam.sam import (
    MASK_THRESHOLD,
    PIXEL_MEAN,
    PIXEL_STD,
    SAM_CONFIGS,
    Sam,
    from_segment_anything,
    sam,
    sam_vit_b,
    sam_vit_h,
    sam_vit_l,
    segment_anything_key,
)

__all__ = [
    "MASK_THRESHOLD", "PIXEL_MEAN", "PIXEL_STD", "SAM_CONFIGS", "ImageEncoderViT", "MaskDecoder",
    "PositionEmbeddingRandom", "PromptEncoder", "Sam", "TwoWayTransformer", "from_segment_anything", "sam",
    "sam_vit_b", "sam_vit_h", "sam_vit_l", "segment_anything_key",
]
