"""Segment Anything inference: `Predictor` (prompted masks on one image, as segment_anything's SamPredictor) and
`AutomaticMaskGenerator` (masks for a whole image from a point grid, as SamAutomaticMaskGenerator)."""

from jaxcv.sam.amg import AutomaticMaskGenerator
from jaxcv.sam.predictor import (
    Predictor,
    apply_boxes,
    apply_coords,
    postprocess_matrices,
    preprocess_shape,
    resize_image,
    upscale_logits,
)

__all__ = [
    "AutomaticMaskGenerator", "Predictor", "apply_boxes", "apply_coords", "postprocess_matrices", "preprocess_shape",
    "resize_image", "upscale_logits",
]
