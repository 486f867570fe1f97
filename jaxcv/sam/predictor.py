"""Prompted segmentation on one image at a time, as `segment_anything.SamPredictor`.

`set_image(uint8 [H, W, 3])` preprocesses like the reference and computes the image embedding once (one jitted
encoder call); `predict(...)` then decodes prompts on it, `predict_batch(...)` many prompt sets in one jitted call.

Reference behaviour matched:
- ResizeLongestSide: scale = S / max(h, w), new side `int(side * scale + 0.5)`; the image is resized with
  Pillow's bilinear filter on the uint8 RGB image (torchvision `resize` of a PIL image: `Image.resize(...,
  BILINEAR)`, antialiased when shrinking, uint8 out), normalized `(x - mean) / std` in float32, zero-padded
  bottom/right to S x S after normalization.
- Prompts in original-image pixels: x * (new_w / w), y * (new_h / h) in float64 (`apply_coords`, boxes as two
  corners), then float32.
- Postprocessing (`Sam.postprocess_masks`): low-res logits -> bilinear (align_corners=False, no antialias) to
  S x S -> crop to the resized size -> bilinear to the original size -> `> 0.0`. Both resizes are separable
  linear maps, applied here as one [H, 4g] and one [W, 4g] matrix (`postprocess_matrices`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxcv.models.sam.image_encoder import linear_resize_matrix
from jaxcv.models.sam.sam import Sam

Array = jax.Array


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """ResizeLongestSide.get_preprocess_shape: (new_h, new_w), rounded half up."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [new_h, new_w, 3] with Pillow's bilinear filter (ResizeLongestSide.apply_image)."""
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """[..., 2] xy in original pixels -> input-image pixels, float64 (ResizeLongestSide.apply_coords)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """[..., 4] xyxy in original pixels -> input-image pixels (ResizeLongestSide.apply_boxes)."""
    boxes = np.asarray(boxes, np.float64)
    return apply_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size, long_side).reshape(boxes.shape)


def postprocess_matrices(low_res: int, image_size: int, input_size: tuple[int, int],
                         original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """float32 ([H, low_res], [W, low_res]): upscale to image_size, crop to input_size, resize to original_size
    (each a torch bilinear resize, align_corners=False), composed per axis in float64."""
    up = linear_resize_matrix(low_res, image_size)
    mats = [linear_resize_matrix(n, o) @ up[:n] for n, o in zip(input_size, original_size, strict=True)]
    return mats[0].astype(np.float32), mats[1].astype(np.float32)


def upscale_logits(low_res: Array, mat_h: Array, mat_w: Array) -> Array:
    """[..., l, l] low-res logits -> [..., H, W] with the `postprocess_matrices` maps."""
    x = jnp.einsum("...ij,wj->...iw", low_res, mat_w, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("hi,...iw->...hw", mat_h, x, precision=jax.lax.Precision.HIGHEST)


def _run(module: Sam, variables: Any, features: Array, points: Array | None, labels: Array | None,
         boxes: Array | None, masks: Array | None, mat_h: Array, mat_w: Array, *, multimask_output: bool,
         return_logits: bool, details: bool) -> dict[str, Array]:
    """Prompt encoder, decoder and postprocessing for B prompt sets on one embedding [1, g, g, D]."""
    sparse, dense = module.apply(variables, points, labels, boxes, masks, method=Sam.encode_prompts)
    masks_all, iou_all = module.apply(variables, features, sparse, dense, method=Sam.decode_all)
    sl = slice(1, None) if multimask_output else slice(0, 1)
    low_res, iou = masks_all[:, sl], iou_all[:, sl]
    logits = upscale_logits(low_res, mat_h, mat_w)
    out = {"masks": logits if return_logits else logits > module.mask_threshold, "iou_predictions": iou,
           "low_res_logits": low_res}
    if details:
        out.update(sparse_embeddings=sparse, dense_embeddings=dense, masks_all=masks_all, iou_all=iou_all,
                   logits=logits)
    return out


class Predictor:
    """SamPredictor for a jaxcv `Sam` and its variables (e.g. from `from_segment_anything`).

    `encoder_compiler_options`: XLA options of the encoder's jit; by default full backend optimization, so the
    encoder runs at full speed even where XLA_FLAGS lowers it (the test suite compiles at -O0).
    """

    def __init__(self, module: Sam, variables: Any, encoder_compiler_options: dict[str, Any] | None = None) -> None:
        self.module = module
        self.variables = variables
        opts = {"xla_backend_optimization_level": 3} if encoder_compiler_options is None else encoder_compiler_options
        self._embed = jax.jit(lambda v, x: module.apply(v, x, method=Sam.embed_image), compiler_options=opts)
        self._decode = jax.jit(partial(_run, module),
                               static_argnames=("multimask_output", "return_logits", "details"))
        self.pixel_mean = np.asarray(module.pixel_mean, np.float32)
        self.pixel_std = np.asarray(module.pixel_std, np.float32)
        self.reset_image()

    @property
    def image_size(self) -> int:
        return self.module.image_size

    def reset_image(self) -> None:
        self.features: Array | None = None
        self.input_image: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        # (mat_h [H, l], mat_w [W, l]) of the current image: low-res logits -> original size (`upscale_logits`).
        self.postprocess_maps: tuple[Array, Array] | None = None

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] RGB -> float32 [1, S, S, 3]: resized, normalized, zero-padded (the encoder's input)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
        resized = resize_image(image, self.image_size)
        x = (resized.astype(np.float32) - self.pixel_mean) / self.pixel_std
        out = np.zeros((1, self.image_size, self.image_size, 3), np.float32)
        out[0, :x.shape[0], :x.shape[1]] = x
        return out

    def set_image(self, image: np.ndarray) -> None:
        """Computes and keeps the image embedding of a uint8 RGB image [H, W, 3]."""
        self.reset_image()
        self.input_image = self.preprocess(image)
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.input_size = preprocess_shape(*self.original_size, self.image_size)
        self.features = self._embed(self.variables, jnp.asarray(self.input_image))
        low_res = 4 * self.module.embedding_size
        self.postprocess_maps = tuple(jnp.asarray(m) for m in postprocess_matrices(
            low_res, self.image_size, self.input_size, self.original_size))

    def _prompts(self, point_coords: Any, point_labels: Any, boxes: Any, mask_input: Any
                 ) -> tuple[Array | None, Array | None, Array | None, Array | None]:
        """Batched prompts in original pixels -> model inputs: points [B, N, 2], labels [B, N], boxes [B, 4],
        masks [B, l, l, 1] (from mask_input [B, 1, l, l] low-res logits, as the reference takes them)."""
        if self.features is None:
            raise RuntimeError("call set_image before predicting")
        points = labels = box = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            points = jnp.asarray(apply_coords(point_coords, self.original_size, self.image_size), jnp.float32)
            labels = jnp.asarray(np.asarray(point_labels), jnp.int32)
        if boxes is not None:
            box = jnp.asarray(apply_boxes(boxes, self.original_size, self.image_size), jnp.float32)
        if mask_input is not None:
            m = np.asarray(mask_input, np.float32)
            if m.ndim != 4 or m.shape[1] != 1:
                raise ValueError(f"mask_input must be [B, 1, l, l] low-res logits, got {m.shape}")
            masks = jnp.asarray(m[:, 0, :, :, None])
        return points, labels, box, masks

    def predict_batch(self, point_coords: Any = None, point_labels: Any = None, boxes: Any = None,
                      mask_input: Any = None, multimask_output: bool = True, return_logits: bool = False,
                      details: bool = False) -> tuple[Array, Array, Array] | tuple[Array, Array, Array, dict]:
        """B prompt sets on the current image in one jitted call (same structure and point count for all):
        point_coords [B, N, 2] xy and point_labels [B, N] in original pixels, boxes [B, 4] xyxy, mask_input
        [B, 1, l, l] low-res logits. -> (masks [B, C, H, W] bool (float logits if return_logits),
        iou_predictions [B, C], low_res_logits [B, C, l, l]) as device arrays; C = 3 if multimask_output else 1.
        `details`: also a dict of the intermediates (sparse / dense embeddings, all-token masks and IoUs,
        full-resolution logits)."""
        points, labels, box, masks = self._prompts(point_coords, point_labels, boxes, mask_input)
        out = self._decode(self.variables, self.features, points, labels, box, masks, *self.postprocess_maps,
                           multimask_output=multimask_output, return_logits=return_logits, details=details)
        result = (out.pop("masks"), out.pop("iou_predictions"), out.pop("low_res_logits"))
        return (*result, out) if details else result

    def predict(self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None, multimask_output: bool = True,
                return_logits: bool = False, details: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """One prompt set, as SamPredictor.predict: point_coords [N, 2] xy, point_labels [N], box [4] xyxy (original
        pixels), mask_input [1, l, l] low-res logits from an earlier call. -> (masks [C, H, W] bool (logits if
        return_logits), iou_predictions [C], low_res_logits [C, l, l]) as numpy; C = 3 if multimask_output else 1.
        `details`: also the intermediates (see `predict_batch`), batch axis kept."""
        res = self.predict_batch(
            None if point_coords is None else np.asarray(point_coords)[None],
            None if point_labels is None else np.asarray(point_labels)[None],
            None if box is None else np.asarray(box).reshape(1, 4),
            None if mask_input is None else np.asarray(mask_input)[None],
            multimask_output, return_logits, details,
        )
        main = tuple(np.asarray(a)[0] for a in res[:3])
        return (*main, {k: np.asarray(v) for k, v in res[3].items()}) if details else main
