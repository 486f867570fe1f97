"""Promptable segmentation: fine-tune SAM's mask decoder on box prompts drawn from ground-truth instance masks.

Data: any source whose examples carry instance `masks` [N, H, W] and their `boxes` [N, 4] xyxy: the synthetic
shapes (`data.name="shapes"`), COCO-JSON with polygons or RLE (`data.name="coco_json"`, `data.masks=True`; crowd
annotations are not prompted), a mask folder (`data.name="mask_folder"`, `data.instances="components"` or
"ids"; `jaxcv.data.segmentation`). Each example gives up to `data.max_boxes` prompts: instances drawn at random in
training (in order in evaluation), their ground-truth boxes, jittered in training as SAM's training was
(noise of std `prompts.box_jitter` x the box's side per coordinate, clipped to `prompts.box_jitter_max` pixels).
In training a prompt is instead, with probability `prompts.point_prob`, one point drawn uniformly inside its mask
(SAM's training picks a point or a box with equal probability); boxes and points then both go in as two prompt
tokens (`PromptEncoder.embed_tokens`), so they batch in one shape. Evaluation prompts with the boxes.
Images are resized (longest side) to the model's `image_size`, normalized as SAM (ImageNet mean / std on 0-255)
and zero-padded, so `data.image_size` must be the model's.

Model (`PromptableSam`, a `Sam` with the same parameter paths): `model_inputs` gives it the batch's images (or
cached embeddings) and box prompts; the image encoder's gradient is stopped while it is frozen (`config.freeze`
names `image_encoder`), then each box goes through the prompt encoder and mask decoder (one mask, token 0, unless
`loss.multimask`). The positional-encoding matrix (a buffer in SAM, not a parameter) is a constant of the module:
taken from `model.converted` (a `jaxcv.convert --arch segment_anything` output, which also fixes the
architecture), or from `init_from` when that is one; otherwise drawn from a fixed seed.

Embedding cache (`config.embedding_cache`, on by default while the encoder is frozen): `prepare` computes every
item's image embedding once with the run's starting weights, jitted, into `WORKDIR/embeddings/{split}.npy`
(`jaxcv.sam.embedding_cache`; keyed by the encoder weights, architecture, dtype and data config, so a stale one is
rebuilt and a second run reuses it), and the batches carry embeddings instead of images. The training split with
`data.augment.hflip` is cached in both orientations, so flipping stays on and the run equals the uncached one.

Loss, as SAM's: `loss.focal_weight` (20) x sigmoid focal loss + `loss.dice_weight` (1) x dice loss on the masks
(logits upsampled bilinearly to the image size), plus `loss.iou_weight` (1) x MSE between the predicted IoU and
the IoU of the thresholded mask with the ground truth; with `loss.multimask`, three masks per prompt and only the
lowest mask loss counts (all three IoU predictions are trained). Metrics over the held-out prompts: `mIoU` (mean
IoU of the box-prompted masks), `IoU50` / `IoU75` (shares above), `iou_pred_mae` (IoU-head error).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxcv.data.base import normalize
from jaxcv.losses import sigmoid_focal_loss, upcast
from jaxcv.models.layers import Conv
from jaxcv.models.sam.image_encoder import ImageEncoderViT, layer_norm, linear_resize_matrix
from jaxcv.models.sam.mask_decoder import MaskDecoder
from jaxcv.models.sam.prompt_encoder import Embedding, PositionEmbeddingRandom, PromptEncoder
from jaxcv.models.sam.sam import SAM_CONFIGS, Sam
from jaxcv.tasks import TASKS
from jaxcv.tasks.base import EVALUATORS, Evaluator, Task

Array = jax.Array
ENCODER_FIELDS = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "encoder_global_attn_indexes")
ARCH_FIELDS = (*ENCODER_FIELDS, "image_size", "patch_size", "window_size", "prompt_embed_dim", "mask_in_chans")
PE_SEED = 0


# ---------------------------------------------------------------- model


class ConstantPositionEmbedding(PositionEmbeddingRandom):
    """`PositionEmbeddingRandom` with its gaussian matrix [2, F] as a constant field (no `buffers` variable)."""

    matrix: tuple[tuple[float, ...], ...] = ()

    def setup(self) -> None:
        pass

    def encode(self, coords: Array) -> Array:
        c = 2.0 * coords.astype(jnp.float32) - 1.0
        c = c @ jnp.asarray(self.matrix, jnp.float32)
        c = 2 * math.pi * c
        return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)


class ConstantPEPromptEncoder(PromptEncoder):
    """`PromptEncoder` with a `ConstantPositionEmbedding` (same parameters; setup as `PromptEncoder.setup`, flax
    not letting a subclass rebind a submodule name)."""

    pe_matrix: tuple[tuple[float, ...], ...] = ()

    def setup(self) -> None:
        d, kw = self.embed_dim, {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.pe_layer = ConstantPositionEmbedding(d // 2, matrix=self.pe_matrix)
        self.point_embeddings = [Embedding(1, d, self.param_dtype) for _ in range(4)]
        self.not_a_point_embed = Embedding(1, d, self.param_dtype)
        c = self.mask_in_chans
        self.mask_downscaling_0 = Conv(c // 4, (2, 2), strides=(2, 2), padding="VALID", **kw)
        self.mask_downscaling_1 = layer_norm(1e-6, **kw)
        self.mask_downscaling_3 = Conv(c, (2, 2), strides=(2, 2), padding="VALID", **kw)
        self.mask_downscaling_4 = layer_norm(1e-6, **kw)
        self.mask_downscaling_6 = Conv(d, (1, 1), **kw)
        self.no_mask_embed = Embedding(1, d, self.param_dtype)


def default_pe_matrix(prompt_embed_dim: int) -> tuple[tuple[float, ...], ...]:
    """A fixed N(0, 1) [2, D / 2] matrix (SAM draws its buffer with randn), for models not from a conversion."""
    m = np.random.default_rng(PE_SEED).standard_normal((2, prompt_embed_dim // 2)).astype(np.float32)
    return tuple(tuple(float(v) for v in row) for row in m)


class PromptableSam(Sam):
    """`Sam` for the trainer: `__call__(images or image_embeddings, boxes, train)` -> {"image_embeddings" [B, g, g,
    D], "low_res_logits" [B, K, C, 4g, 4g], "iou_predictions" [B, K, C]} (the decoder's outputs only with `boxes`).

    `images` [B, S, S, 3] go through the image encoder (its gradient stopped when `stop_encoder_gradient`);
    `image_embeddings` (e.g. from `jaxcv.sam.embedding_cache`) skip it. Each image's K boxes [B, K, 4] xyxy (input
    pixels) are decoded on its embedding: C = 3 masks (tokens 1:4) with `multimask_output`, else 1 (token 0)."""

    pe_matrix: tuple[tuple[float, ...], ...] = ()
    stop_encoder_gradient: bool = True
    multimask_output: bool = False

    def setup(self) -> None:  # as Sam.setup, with the constant-PE prompt encoder
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        g = self.embedding_size
        self.image_encoder = ImageEncoderViT(
            img_size=self.image_size, patch_size=self.patch_size, embed_dim=self.encoder_embed_dim,
            depth=self.encoder_depth, num_heads=self.encoder_num_heads, mlp_ratio=4.0,
            out_chans=self.prompt_embed_dim, window_size=self.window_size,
            global_attn_indexes=tuple(self.encoder_global_attn_indexes), **kw,
        )
        self.prompt_encoder = ConstantPEPromptEncoder(
            self.prompt_embed_dim, (g, g), (self.image_size, self.image_size), self.mask_in_chans, **kw,
            pe_matrix=self.pe_matrix or default_pe_matrix(self.prompt_embed_dim))
        self.mask_decoder = MaskDecoder(self.prompt_embed_dim, 3, 3, 256, **kw)

    def decode_boxes(self, image_embeddings: Array, boxes: Array, multimask_output: bool = False
                     ) -> tuple[Array, Array]:
        """embeddings [B, g, g, D], boxes [B, K, 4] xyxy input pixels -> logits [B, K, C, 4g, 4g], iou [B, K, C]."""
        b, k = boxes.shape[:2]
        emb = jnp.repeat(image_embeddings, k, axis=0)
        low, iou = self.predict_prompts(emb, boxes=boxes.reshape(b * k, 4), multimask_output=multimask_output)
        return low.reshape(b, k, *low.shape[1:]), iou.reshape(b, k, -1)

    def decode_tokens(self, image_embeddings: Array, points: Array, labels: Array, multimask_output: bool = False
                      ) -> tuple[Array, Array]:
        """embeddings [B, g, g, D], prompt tokens [B, K, 2, 2] (input pixels) with labels [B, K, 2]
        (`PromptEncoder.embed_tokens`: a box as corners 2/3, a point as 1 + padding -1) -> as `decode_boxes`."""
        b, k = points.shape[:2]
        emb = jnp.repeat(image_embeddings, k, axis=0)
        sparse = self.prompt_encoder.embed_tokens(points.reshape(b * k, -1, 2), labels.reshape(b * k, -1))
        _, dense = self.encode_prompts()  # no mask prompt: `no_mask_embed` everywhere
        dense = jnp.broadcast_to(dense, (b * k, *dense.shape[1:]))
        low, iou = self.decode(emb, sparse, dense, multimask_output)
        return low.reshape(b, k, *low.shape[1:]), iou.reshape(b, k, -1)

    def __call__(self, images: Array | None = None, boxes: Array | None = None, *,  # type: ignore[override]
                 image_embeddings: Array | None = None, prompt_points: Array | None = None,
                 prompt_labels: Array | None = None, train: bool = False) -> dict[str, Array]:
        if image_embeddings is None:
            if images is None:
                raise ValueError("PromptableSam needs `images` or `image_embeddings`")
            emb = self.embed_image(images)
            if self.stop_encoder_gradient:
                emb = jax.lax.stop_gradient(emb)
        else:  # the cache holds the encoder's outputs exactly (bfloat16 ones widened to float32)
            emb = image_embeddings.astype(self.dtype)
        out = {"image_embeddings": emb}
        if boxes is None and self.is_initializing():  # every prompt-encoder and decoder parameter
            self.decode_boxes(emb[:1], jnp.zeros((1, 1, 4), jnp.float32), True)
        if prompt_points is not None:  # mixed box / point prompts as tokens (`prompts.point_prob` > 0)
            out["low_res_logits"], out["iou_predictions"] = self.decode_tokens(emb, prompt_points, prompt_labels,
                                                                                self.multimask_output)
        elif boxes is not None:
            out["low_res_logits"], out["iou_predictions"] = self.decode_boxes(emb, boxes, self.multimask_output)
        return out


def read_converted_sam(directory: str | Path) -> tuple[dict[str, Any], tuple[tuple[float, ...], ...]]:
    """(architecture kwargs, positional-encoding matrix) of a `jaxcv.convert --arch segment_anything` output."""
    from jaxcv.convert import load_converted, read_model_json

    meta = read_model_json(directory)
    if meta.get("class") != f"{Sam.__module__}.Sam":
        raise ValueError(f"{directory} holds {meta.get('class') or meta.get('model')!r}, not a SAM conversion "
                         "(python -m jaxcv.convert --arch segment_anything)")
    kwargs = {k: v for k, v in meta["kwargs"].items() if k in ARCH_FIELDS}
    gaussian = load_converted(directory)["buffers"]["prompt_encoder"]["pe_layer"]["positional_encoding_gaussian_matrix"]
    return kwargs, tuple(tuple(float(v) for v in row) for row in np.asarray(gaussian, np.float32))


def export_sam(task: Any, params: Any, out: str | Path) -> Path:
    """Writes a fine-tuned `PromptableSam`'s parameters as a `jaxcv.convert --arch segment_anything` output
    (`model.json` naming `Sam` and its architecture; `variables/` with `params` and SAM's PE matrix as the
    `buffers` it keeps there), so `python -m jaxcv.sam --weights OUT`, `jaxcv.convert.converted_model` /
    `load_converted` + `jaxcv.sam.Predictor`, and a later `model.converted` / `init_from` take it."""
    import orbax.checkpoint as ocp

    from jaxcv.convert import MODEL_JSON, VARIABLES_DIR, module_spec

    model = task.model
    kwargs, _ = task.architecture()
    pe = np.asarray(model.pe_matrix or default_pe_matrix(model.prompt_embed_dim), np.float32)
    variables = {"params": jax.device_get(params),
                 "buffers": {"prompt_encoder": {"pe_layer": {"positional_encoding_gaussian_matrix": pe}}}}
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out / VARIABLES_DIR, variables, force=True)
        checkpointer.wait_until_finished()
    meta = {"arch": "segment_anything", **module_spec(Sam(**kwargs)),
            "weights": "fine-tuned (jaxcv promptable_segmentation)"}
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out


# ---------------------------------------------------------------- data


def sample_prompts(boxes: np.ndarray, num: int, size: tuple[int, int], rng: np.random.Generator, train: bool,
                   jitter: float, jitter_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Instance indices [num] (-1 = padding) and their box prompts [num, 4] xyxy (jittered in training, clipped to
    the image, at least one pixel wide)."""
    n = len(boxes)
    order = rng.permutation(n) if train else np.arange(n)
    idx = np.full((num,), -1, np.int64)
    idx[:min(n, num)] = order[:num]
    out = np.zeros((num, 4), np.float32)
    h, w = size
    for j, i in enumerate(idx):
        if i < 0:
            continue
        box = boxes[i].astype(np.float64)
        if train and jitter > 0:
            side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
            box = box + np.clip(rng.normal(0.0, 1.0, 4) * jitter * side, -jitter_max, jitter_max)
        x1, y1, x2, y2 = np.clip(box, 0, [w, h, w, h])
        x2, y2 = max(x2, min(x1 + 1, w)), max(y2, min(y1 + 1, h))
        out[j] = (min(x1, x2 - 1), min(y1, y2 - 1), x2, y2)
    return idx, out


def resize_example(ex: dict[str, Any], image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw instance example -> image uint8 [h, w, 3] (longest side resized to `image_size` as SAM's
    ResizeLongestSide), masks uint8 [N, h, w] (nearest), boxes float32 [N, 4] (scaled), labels int32 [N]; crowd
    annotations (`iscrowd`) left out."""
    from jaxcv.sam.predictor import preprocess_shape, resize_image

    image = np.asarray(ex["image"])
    h, w = image.shape[:2]
    masks = np.asarray(ex["masks"], np.uint8).reshape(-1, h, w)
    boxes = np.asarray(ex["boxes"], np.float32).reshape(-1, 4)
    labels = np.asarray(ex.get("labels", np.zeros(len(boxes))), np.int32).reshape(-1)
    if "iscrowd" in ex:  # a crowd region is no instance to prompt for (COCO-JSON sources)
        single = ~np.asarray(ex["iscrowd"], bool).reshape(-1)
        masks, boxes, labels = masks[single], boxes[single], labels[single]
    if (h, w) != (image_size, image_size):
        nh, nw = preprocess_shape(h, w, image_size)
        image = resize_image(image, image_size)
        masks = np.stack([np.asarray(Image.fromarray(m).resize((nw, nh), Image.NEAREST)) for m in masks]) \
            if len(masks) else np.zeros((0, nh, nw), np.uint8)
        boxes = boxes * np.array([nw / w, nh / h] * 2, np.float32)
    return image, masks, boxes, labels


def model_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resized uint8 [h, w, 3] -> the model's input float32 [S, S, 3]: normalized, zero-padded bottom/right."""
    h, w = image.shape[:2]
    padded = np.zeros((image_size, image_size, 3), np.float32)
    padded[:h, :w] = normalize(np.ascontiguousarray(image))
    return padded


def cache_image(ex: dict[str, Any], image_size: int, flip: bool) -> np.ndarray:
    """The model input of a raw example as the transform makes it, flipped or not (what the cache embeds)."""
    image = resize_example(ex, image_size)[0]
    return model_image(image[:, ::-1] if flip else image, image_size)


def point_tokens(boxes: np.ndarray, idx: np.ndarray, masks: np.ndarray, point_prob: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt tokens [K, 2, 2], their labels [K, 2] and `is_point` [K]: each real prompt is, with probability
    `point_prob`, one foreground point drawn uniformly from its instance's mask pixels (as SAM's training
    chooses a point or a box with equal probability), else its box (corners, labels 2 and 3)."""
    k = len(idx)
    points = boxes.reshape(k, 2, 2).astype(np.float32).copy()
    labels = np.tile(np.array([2, 3], np.int32), (k, 1))
    is_point = np.zeros((k,), bool)
    for j, i in enumerate(idx):
        if i < 0 or point_prob <= 0 or rng.random() >= point_prob:
            continue
        ys, xs = np.nonzero(masks[i])
        if not len(ys):
            continue
        r = rng.integers(len(ys))
        points[j] = ((xs[r], ys[r]), (0.0, 0.0))
        labels[j] = (1, -1)
        is_point[j] = True
    return points, labels, is_point


def make_prompt_transform(image_size: int, num_prompts: int, train: bool, hflip: bool = True,
                          jitter: float = 0.1, jitter_max: float = 20.0, point_prob: float | None = None):
    """Raw instance example -> `image` float32 [S, S, 3] (longest side resized to S, normalized, zero-padded),
    `boxes` [K, 4] box prompts (input pixels), `gt_masks` uint8 [K, S, S], `box_mask` bool [K] (real prompts),
    `labels` int32 [K], `image_id`. Training flips horizontally with probability 0.5 when `hflip`. An example that
    carries cached `image_embeddings` [F, g, g, D] (`EmbeddedSource`) also gives `image_embeddings` [g, g, D]:
    slot 1 (the flipped image's) when flipped. With `point_prob` set (not None) the example also gives the prompts
    as tokens, `prompt_points` [K, 2, 2] and `prompt_labels` [K, 2] (`point_tokens`; points only in training)."""
    s = image_size

    def transform(ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image, masks, boxes, labels = resize_example(ex, s)
        h, w = image.shape[:2]
        flipped = bool(train and hflip and rng.random() < 0.5)
        if flipped:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        idx, prompts = sample_prompts(boxes, num_prompts, (h, w), rng, train, jitter, jitter_max)
        gt = np.zeros((num_prompts, s, s), np.uint8)
        out_labels = np.zeros((num_prompts,), np.int32)
        for j, i in enumerate(idx):
            if i >= 0:
                gt[j, :h, :w] = masks[i]
                out_labels[j] = labels[i]
        out = {"image": model_image(image, s), "boxes": prompts, "gt_masks": gt, "box_mask": idx >= 0,
               "labels": out_labels, "image_id": int(ex.get("image_id", 0))}
        if point_prob is not None:
            out["prompt_points"], out["prompt_labels"], _ = point_tokens(
                prompts, idx, masks, float(point_prob) if train else 0.0, rng)
        if "image_embeddings" in ex:
            emb = ex["image_embeddings"]
            if flipped and len(emb) < 2:
                raise ValueError("the embedding cache holds no flipped embeddings but the transform flips: the "
                                 "split's cache was built without data.augment.hflip")
            out["image_embeddings"] = emb[1 if flipped else 0]
        return out

    return transform


class EmbeddedSource:
    """A source whose examples also carry `image_embeddings` [F, g, g, D] float32 from `cache` once it is set
    (`PromptableSegmentationTask.prepare`); every other attribute is the wrapped source's."""

    def __init__(self, source: Any):
        self.source = source
        self.cache: Any = None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.source[index]
        if self.cache is not None:
            ex = {**ex, "image_embeddings": self.cache.row(index)}
        return ex

    def __getattr__(self, name: str) -> Any:
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


# ---------------------------------------------------------------- losses


def dice_loss(logits: Array, targets: Array, smooth: float = 1.0) -> Array:
    """1 - (2 sum(p t) + 1) / (sum p + sum t + 1) over the last two axes (p = sigmoid)."""
    p = jax.nn.sigmoid(logits)
    inter = jnp.sum(p * targets, axis=(-2, -1))
    return 1.0 - (2.0 * inter + smooth) / (jnp.sum(p, axis=(-2, -1)) + jnp.sum(targets, axis=(-2, -1)) + smooth)


def mask_iou(pred: Array, targets: Array) -> Array:
    """IoU of bool masks over the last two axes; 1 where both are empty."""
    inter = jnp.sum(pred & targets, axis=(-2, -1)).astype(jnp.float32)
    union = jnp.sum(pred | targets, axis=(-2, -1)).astype(jnp.float32)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


# ---------------------------------------------------------------- task


@TASKS.register("promptable_segmentation")
class PromptableSegmentationTask(Task):
    name = "promptable_segmentation"
    picture_kind = "boxes"  # `jaxcv.show --what=batch` draws the prompt boxes

    def __init__(self, config: Any):
        super().__init__(config)
        self._arch: tuple[dict[str, Any], tuple] | None = None
        self._model: PromptableSam | None = None
        self._embedded: dict[str, EmbeddedSource] = {}
        self._cached = False  # set by `prepare` once every split's embeddings are on disk

    @property
    def device_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        tokens = ("prompt_points", "prompt_labels") if self.point_prob else ()
        return ("image_embeddings" if self._cached else "image", "boxes", "gt_masks", "box_mask", *tokens)

    @property
    def point_prob(self) -> float:
        """`prompts.point_prob`: the share of training prompts that are a point in the mask instead of its box."""
        return float(self.config.prompts.get("point_prob", 0.0))

    # ---- model
    def converted_dir(self) -> str:
        """`model.converted`, else `init_from` when it is a jaxcv.convert output, else ""."""
        d = self.config.model.get("converted", "") or ""
        if not d and self.config.init_from and (Path(self.config.init_from) / "model.json").exists():
            d = self.config.init_from
        return str(d)

    def architecture(self) -> tuple[dict[str, Any], tuple[tuple[float, ...], ...]]:
        """(Sam architecture kwargs, PE matrix): from the conversion if any (a differing `config.model` field is
        an error), else from `model.name` ("sam", "sam_vit_b/l/h") and the `config.model` fields."""
        if self._arch is None:
            m = {k: v for k, v in self.config.model.to_dict().items() if k not in ("name", "converted")}
            unknown = sorted(set(m) - set(ARCH_FIELDS))
            if unknown:
                raise ValueError(f"config.model has keys {unknown} that Sam does not take; known: "
                                 f"{', '.join(ARCH_FIELDS)}")
            m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}
            d = self.converted_dir()
            if d:
                kwargs, pe = read_converted_sam(d)
                kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
                clash = {k: (v, kwargs[k]) for k, v in m.items() if k in kwargs and kwargs[k] != v}
                if clash:
                    raise ValueError(f"config.model disagrees with the converted SAM {d}: "
                                     + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in clash.items()))
            else:
                name = self.config.model.name
                if name in SAM_CONFIGS:
                    kwargs = dict(zip(ENCODER_FIELDS, SAM_CONFIGS[name], strict=True))
                elif name == "sam":
                    kwargs = {}
                else:
                    raise ValueError(f"config.model.name={name!r}: expected 'sam' or one of {', '.join(SAM_CONFIGS)}")
                kwargs.update(m)
                pe = ()
            self._arch = (kwargs, pe)
        return self._arch

    def create_model(self) -> PromptableSam:
        kwargs, pe = self.architecture()
        return PromptableSam(**kwargs, pe_matrix=pe, dtype=jnp.dtype(self.config.dtype),
                             stop_encoder_gradient=self.encoder_frozen,
                             multimask_output=bool(self.config.loss.multimask))

    @property
    def model(self) -> PromptableSam:
        if self._model is None:
            self._model = self.create_model()
        return self._model

    @property
    def encoder_frozen(self) -> bool:
        return any(p.strip("/") == "image_encoder" for p in self.config.freeze or ())

    @property
    def use_cache(self) -> bool:
        """Image embeddings from the on-disk cache: the image encoder frozen and `config.embedding_cache` (on by
        default). The only pixel augmentation, `data.augment.hflip`, is cached too (both orientations)."""
        return self.encoder_frozen and bool(self.config.get("embedding_cache", True))

    @property
    def model_image_size(self) -> int:
        return int(self.architecture()[0].get("image_size", Sam.image_size))

    def validate(self) -> None:
        s = self.model_image_size
        if self.image_size != s:
            raise ValueError(f"data.image_size={self.image_size} must be the model's image_size ({s})")
        if s % int(self.architecture()[0].get("patch_size", Sam.patch_size)):
            raise ValueError(f"the model's image_size {s} must be a multiple of its patch_size")
        for key in ("focal_weight", "dice_weight", "iou_weight"):
            if self.config.loss[key] < 0:
                raise ValueError(f"config.loss.{key}={self.config.loss[key]!r} must be >= 0")
        if not 0.0 <= self.point_prob <= 1.0:
            raise ValueError(f"config.prompts.point_prob={self.point_prob!r} must be a probability in [0, 1]")
        if int(self.config.data.max_boxes) < 1:
            raise ValueError(f"config.data.max_boxes={self.config.data.max_boxes} (prompts per image) must be >= 1")
        ex = self.source("train")[0]
        if "masks" not in ex:
            raise ValueError(f"dataset {self.config.data.name!r} gives no instance `masks`: promptable segmentation "
                             "needs them (data.name='shapes'; coco_json with data.masks=True; mask_folder with "
                             "data.instances='components' or 'ids')")

    # ---- data
    def source(self, split: str) -> Any:
        """The dataset of `split`; wrapped in an `EmbeddedSource` when embeddings are cached."""
        src = super().source(split)
        if not self.use_cache:
            return src
        if split not in self._embedded:
            self._embedded[split] = EmbeddedSource(src)
        return self._embedded[split]

    def flips(self, split: str) -> int:
        """Cached orientations of `split`: 2 for the training split with `data.augment.hflip`, else 1."""
        from jaxcv.data.base import split_id

        return 2 if split_id(split) == 0 and bool(self.config.data.augment.hflip) else 1

    def cache_meta(self, split: str) -> dict[str, Any]:
        """What the embeddings of `split` depend on besides the encoder's weights (part of the cache key)."""
        data = {k: v for k, v in self.config.data.to_dict().items()
                if k not in ("num_threads", "max_boxes", "augment", "bad_input")}
        return {"arch": self.architecture()[0], "dtype": self.config.dtype, "conv_impl": self.config.conv_impl,
                "image_size": self.image_size, "split": split, "flips": self.flips(split),
                "num_items": len(self.source(split)), "data": data}

    def prepare(self, state: Any, workdir: Path) -> None:
        """With `use_cache`: the image embeddings of both splits, from `workdir/embeddings/{split}.npy` when its
        key (encoder weights, architecture, dtype, data) matches, else computed (jitted, `eval_batch_size` images
        a call) and written there; the batches then carry them instead of images (`device_keys`)."""
        if not self.use_cache:
            return
        from jaxcv.sam import embedding_cache

        encoder = {"image_encoder": state.params["image_encoder"]}
        model = self.model
        embed = jax.jit(lambda p, x: model.apply({"params": p}, x)["image_embeddings"])
        s, bs = self.image_size, int(self.config.eval_batch_size)
        for split in ("train", "validation"):
            src = self.source(split)
            key = embedding_cache.cache_key(encoder, meta := self.cache_meta(split))

            def load(i: int, flip: bool, src: EmbeddedSource = src) -> np.ndarray:
                return cache_image(src.source[i], s, flip)

            src.cache = embedding_cache.open_or_build(
                Path(workdir) / "embeddings", split, key, meta, len(src), self.flips(split), load,
                lambda x: embed(encoder, x), bs, int(self.config.data.num_threads))
            if jax.process_index() == 0:
                print(f"[jaxcv] embeddings: {'computed' if src.cache.built else 'reused'} {src.cache.path} "
                      f"{tuple(src.cache.array.shape)} {src.cache.dtype}", flush=True)
        self._cached = True

    def make_transform(self, train: bool):
        p = self.config.prompts
        return make_prompt_transform(self.image_size, int(self.config.data.max_boxes), train,
                                     hflip=bool(self.config.data.augment.hflip), jitter=float(p.box_jitter),
                                     jitter_max=float(p.box_jitter_max), point_prob=self.point_prob or None)

    # ---- jitted parts
    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The prompts (boxes, or tokens with `prompts.point_prob`) and the cached embeddings when the batch has
        them, else the images."""
        prompts = {"boxes": batch["boxes"]}
        if "prompt_points" in batch:
            prompts = {"prompt_points": batch["prompt_points"], "prompt_labels": batch["prompt_labels"]}
        if "image_embeddings" in batch:
            return {"image_embeddings": batch["image_embeddings"], **prompts}
        return {"images": batch["image"], **prompts}

    def _decode(self, outputs: dict[str, Any]) -> tuple[Array, Array]:
        """Logits upsampled to the image [B, K, C, S, S] and predicted IoUs [B, K, C]."""
        low = outputs["low_res_logits"]
        up = jnp.asarray(linear_resize_matrix(low.shape[-1], self.image_size), jnp.float32)
        logits = jnp.einsum("hi,...ij,wj->...hw", up, upcast(low), up, precision=jax.lax.Precision.HIGHEST)
        return logits, upcast(outputs["iou_predictions"])

    def loss(self, outputs, batch):
        lc = self.config.loss
        logits, iou_pred = self._decode(outputs)
        gt = batch["gt_masks"].astype(jnp.float32)[:, :, None]  # [B, K, 1, S, S]
        focal = jnp.mean(sigmoid_focal_loss(logits, jnp.broadcast_to(gt, logits.shape), lc.focal_alpha,
                                            lc.focal_gamma), axis=(-2, -1))
        dice = dice_loss(logits, gt)
        mask_loss = lc.focal_weight * focal + lc.dice_weight * dice  # [B, K, C]
        best = jnp.argmin(mask_loss, axis=-1)[..., None]  # C = 1 unless multimask: the lowest loss counts

        def pick(x: Array) -> Array:
            return jnp.take_along_axis(x, best, axis=-1)[..., 0]

        iou = jax.lax.stop_gradient(mask_iou(logits > 0, gt > 0.5))
        iou_mse = jnp.mean((iou_pred - iou) ** 2, axis=-1)
        valid = batch["box_mask"].astype(jnp.float32)
        n = jnp.maximum(valid.sum(), 1.0)

        def mean(x: Array) -> Array:
            return jnp.sum(x * valid) / n

        total = mean(pick(mask_loss)) + lc.iou_weight * mean(iou_mse)
        return total, {"focal_loss": mean(pick(focal)), "dice_loss": mean(pick(dice)),
                       "iou_mse_loss": mean(iou_mse), "mask_iou": mean(pick(iou))}

    def predict(self, outputs, batch):
        logits, iou_pred = self._decode(outputs)
        best = jnp.argmax(iou_pred, axis=-1)  # multimask: the mask the IoU head ranks first
        logits = jnp.take_along_axis(logits, best[..., None, None, None], axis=2)[:, :, 0]
        masks = logits > 0
        return {"masks": masks, "iou_pred": jnp.take_along_axis(iou_pred, best[..., None], axis=-1)[..., 0],
                "iou": mask_iou(masks, batch["gt_masks"] > 0)}


class PromptSegmentationEvaluator(Evaluator):
    """IoU of each real prompt's mask with its instance: mIoU, IoU50, IoU75, IoU-head error; sample pictures."""

    def __init__(self, class_names: list[str], num_samples: int = 8):
        self.names = class_names
        self.num_samples = num_samples
        self.ious: list[np.ndarray] = []
        self.preds: list[np.ndarray] = []
        self.samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._result: dict[str, float] = {}

    def update(self, batch, preds) -> None:
        real = np.asarray(batch["box_mask"], bool) & np.asarray(batch["valid"], bool)[:, None]
        self.ious.append(np.asarray(preds["iou"])[real])
        self.preds.append(np.asarray(preds["iou_pred"])[real])
        for b in np.flatnonzero(real.any(axis=1))[: max(0, self.num_samples - len(self.samples))]:
            k = real[b]
            self.samples.append((batch["image"][b], np.asarray(batch["boxes"][b])[k],
                                 np.asarray(batch["gt_masks"][b])[k], np.asarray(preds["masks"][b])[k]))

    def result(self) -> dict[str, float]:
        iou = np.concatenate(self.ious) if self.ious else np.zeros(0)
        pred = np.concatenate(self.preds) if self.preds else np.zeros(0)
        n = max(len(iou), 1)
        self._result = {"mIoU": float(iou.sum() / n), "IoU50": float((iou >= 0.5).sum() / n),
                        "IoU75": float((iou >= 0.75).sum() / n), "iou_pred_mae": float(np.abs(pred - iou).sum() / n),
                        "num_prompts": float(len(iou))}
        return dict(self._result)

    def save(self, directory: Path) -> None:
        from jaxcv.viz import draw_detections, grid, overlay_mask

        (directory / "promptable_segmentation.json").write_text(json.dumps(self._result, indent=2) + "\n")
        tiles = []
        for image, boxes, gt, pred in self.samples:
            ids = np.arange(1, len(gt) + 1)[:, None, None]
            for masks in (gt, pred):
                shown = np.asarray(overlay_mask(image, (masks.astype(np.int64) * ids).max(axis=0)))
                tiles.append(draw_detections(shown, boxes, [0] * len(boxes), None, [""], width=1))
        if tiles:
            grid(tiles, cols=4).save(directory / "promptable_segmentation.png")


@EVALUATORS.register("promptable_segmentation")
def _promptable_evaluator(task: PromptableSegmentationTask, split: str = "validation", num_samples: int = 8
                          ) -> PromptSegmentationEvaluator:
    return PromptSegmentationEvaluator(list(getattr(task.source(split), "class_names", [])), num_samples)
