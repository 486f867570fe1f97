"""YOLOv3 (Redmon & Farhadi 2018) on darknet cfgs: the `darknet` model builder and the `yolov3` head in one file.

Model (`model.name = "darknet"`): `jaxcv.models.darknet.Darknet` from `model.cfg` (a cfg file path, or a built-in
name: "yolov3-tiny", the public pjreddie/darknet cfg shipped here as text), adapted to the run: every `[yolo]` gets
`classes` = the dataset's class count and the head's anchors (`anchors`, `num`) and masks (`mask`), the conv before
each `[yolo]` `filters = (classes + 5) * len(mask)`; `model.width` scales the filters of every other conv (1 = the
cfg as written). Variables are named as `jaxcv.models.darknet.from_darknet` gives them (`conv_<i>`, `bn_<i>`).

Head (`head = "yolov3"`): `config.anchors.sizes` ((w, h) pixels of the network input, all anchors) and
`config.anchors.masks` (the anchor indices of each `[yolo]`, in cfg order), both `()` = the cfg's own; the loss is
`jaxcv.losses_yolov3.yolov3_loss` (darknet's assignment and terms) with `config.loss`; decoding is darknet's
(`yolo_layer.c` get_yolo_detections): box centre (x + sigmoid(t_x)) * stride, size exp(t_w) * anchor, class score
objectness * sigmoid(t_c), then scores > `postprocess.score_thresh`, the best `topk_candidates` (box, class) pairs,
class-wise NMS (`jaxcv.ops.nms.batched_nms`) and the best `detections_per_img`. Defaults are darknet's
`validate_detector` (score 0.005, `do_nms_sort` IoU 0.45) and the public cfgs' `ignore_thresh` (0.7).

Inputs are the detection task's images, normalized and padded bottom/right as `config.preprocess` says
(`normalize`, `pad_value`; `jaxcv.data.detection.to_model_input` and `pad_color`). darknet's own weights expect RGB
in [0, 1] with a grey 127.5 (0.5) letterbox: configs/darknet_yolov3_predict.py sets `normalize="unit"`,
`pad_value=127.5`; the detection default (the shapes and coco_json yolov3_tiny configs) is ImageNet mean/std with
mean-colour padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from jaxcv.detectors import HEADS, DetectionHead
from jaxcv.losses_yolov3 import MAX_LOG_SIZE, yolov3_loss
from jaxcv.models import MODELS
from jaxcv.models.darknet import Darknet, Section, YoloSpec, parse_cfg
from jaxcv.ops.boxes import clip_boxes
from jaxcv.ops.nms import batched_nms

Array = jax.Array
Anchors = tuple[tuple[float, float], ...]
Masks = tuple[tuple[int, ...], ...]
BOX_LOSSES = ("mse", "giou")
XY_LOSSES = ("mse", "bce")


def _fail(key: str, value: object, problem: str) -> None:
    raise ValueError(f"config.{key}={value!r}: {problem}")


def cfg_text(cfg: str | Path) -> tuple[str, str]:
    """A built-in cfg name ("yolov3-tiny") or a cfg file path -> (cfg text, name for messages)."""
    if str(cfg) in BUILTIN_CFGS:
        return BUILTIN_CFGS[str(cfg)], str(cfg)
    path = Path(cfg)
    if not path.is_file():
        raise ValueError(f"darknet cfg {str(cfg)!r} is neither a file nor a built-in cfg "
                         f"({', '.join(sorted(BUILTIN_CFGS))})")
    return path.read_text(errors="replace"), str(path)


def as_anchors(values: Any) -> Anchors:
    """[(w, h), ...] or a flat [w, h, w, h, ...] -> ((w, h), ...) floats."""
    flat = [float(v) for pair in values for v in (pair if isinstance(pair, Sequence) else (pair,))]
    if len(flat) % 2:
        raise ValueError(f"anchors {tuple(values)!r}: an odd count of numbers; give (w, h) pairs")
    return tuple(zip(flat[::2], flat[1::2], strict=True))


def darknet_sections(cfg: str | Path, num_classes: int = 0, anchors: Any = (), masks: Any = (),
                     width: float = 1.0) -> list[Section]:
    """`parse_cfg` of `cfg` (name or path) adapted to `num_classes` (0 = as written), `anchors` ((w, h) pixels,
    () = as written) and `masks` (one index tuple per [yolo], () = as written): those keys of every [yolo], the
    `filters` of the conv before it, and every other conv's filters times `width` (rounded, at least its groups)."""
    text, name = cfg_text(cfg)
    sections = parse_cfg(text)
    anchors, masks = as_anchors(anchors), tuple(tuple(int(i) for i in m) for m in masks)
    blocks = [(s.kind, dict(s.options)) for s in sections]
    yolo = [i for i, (kind, _) in enumerate(blocks) if kind == "yolo"]
    if masks and len(masks) != len(yolo):
        raise ValueError(f"{name}: {len(yolo)} [yolo] sections but {len(masks)} anchor masks {masks}")
    for n, i in enumerate(yolo):
        options = blocks[i][1]
        if num_classes:
            options["classes"] = str(int(num_classes))
        if anchors:
            options["anchors"] = ",".join(f"{v:g}" for pair in anchors for v in pair)
            options["num"] = str(len(anchors))
        if masks:
            options["mask"] = ",".join(str(m) for m in masks[n])
        kind, conv = blocks[i - 1]
        if kind != "convolutional":
            raise ValueError(f"{name}: section {sections[i].index} [yolo] (line {sections[i].line}) follows a "
                             f"[{kind}], not the [convolutional] whose filters it needs")
        spec: YoloSpec = sections[i].spec
        classes = int(num_classes) or spec.classes
        conv["filters"] = str((classes + 5) * len(masks[n] if masks else spec.mask))
    heads = {i - 1 for i in yolo}
    if width != 1.0:
        if width <= 0:
            raise ValueError(f"darknet width multiplier must be > 0, got {width}")
        for i, (kind, options) in enumerate(blocks):
            if kind == "convolutional" and i not in heads:
                groups = int(options.get("groups", 1))
                options["filters"] = str(max(1, round(int(options["filters"]) * width / groups)) * groups)
    if not num_classes and not anchors and not masks and width == 1.0:
        return sections
    adapted = "".join(f"[{kind}]\n" + "".join(f"{k}={v}\n" for k, v in options.items()) for kind, options in blocks)
    try:
        return parse_cfg(adapted)
    except ValueError as e:
        raise ValueError(f"{name} adapted to {num_classes or 'its'} classes, anchors {anchors or 'as written'}, "
                         f"masks {masks or 'as written'}, width {width}: {e}") from None


def darknet(cfg: str = "yolov3-tiny", num_classes: int = 0, anchors: Any = (), masks: Any = (), width: float = 1.0,
            **kwargs: Any) -> Darknet:
    """`Darknet` of `darknet_sections(cfg, num_classes, anchors, masks, width)`; `kwargs` go to `Darknet` (dtype,
    param_dtype, bn_momentum, bn_epsilon)."""
    return Darknet(tuple(darknet_sections(cfg, num_classes, anchors, masks, float(width))), **kwargs)


if "darknet" not in MODELS:
    MODELS.register("darknet", darknet)


def yolo_boxes(raw: Sequence[Array], anchors: Anchors, masks: Masks, image_hw: tuple[int, int]
               ) -> tuple[Array, Array]:
    """Darknet's decoding of the raw head maps (`Darknet` outputs["raw"], [B, rows, cols, A, 5 + C] each) ->
    (boxes [B, N, 4] xyxy input pixels, class scores [B, N, C] = objectness * sigmoid(t_c)), N = sum of rows *
    cols * A in cfg order, rows (y * cols + x) * A + a as OpenCV's yolo rows."""
    in_h, in_w = image_hw
    boxes, scores = [], []
    for t, mask in zip(raw, masks, strict=True):
        t = t.astype(jnp.float32)
        b, rows, cols, a, _ = t.shape
        sig = jax.nn.sigmoid(t)
        anc = jnp.asarray([anchors[m] for m in mask], jnp.float32)  # [A, 2]
        gx = jnp.arange(cols, dtype=jnp.float32)[None, None, :, None]
        gy = jnp.arange(rows, dtype=jnp.float32)[None, :, None, None]
        cx, cy = (gx + sig[..., 0]) / cols * in_w, (gy + sig[..., 1]) / rows * in_h
        w = jnp.exp(jnp.minimum(t[..., 2], MAX_LOG_SIZE)) * anc[:, 0]
        h = jnp.exp(jnp.minimum(t[..., 3], MAX_LOG_SIZE)) * anc[:, 1]
        xyxy = jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        boxes.append(xyxy.reshape(b, rows * cols * a, 4))
        scores.append((sig[..., 4:5] * sig[..., 5:]).reshape(b, rows * cols * a, -1))
    return jnp.concatenate(boxes, 1), jnp.concatenate(scores, 1)


def select_detections(boxes: Array, scores: Array, image_hw: tuple[int, int], score_thresh: float,
                      topk_candidates: int, nms_thresh: float, detections_per_img: int) -> dict[str, Array]:
    """boxes [B, N, 4] xyxy pixels, scores [B, N, C] -> fixed-shape detections {boxes [B, D, 4] (clipped to the
    image), scores [B, D], labels [B, D] int32, valid [B, D]}, D = detections_per_img, best first, invalid slots
    zero: (box, class) pairs with score > score_thresh, the best topk_candidates, class-wise NMS."""
    num_classes = scores.shape[-1]
    k = min(int(topk_candidates), scores.shape[1] * num_classes)

    def one(bx: Array, sc: Array) -> dict[str, Array]:
        flat = sc.reshape(-1)  # box-major: index = box * C + class
        top, idx = lax.top_k(jnp.where(flat > score_thresh, flat, -jnp.inf), k)
        valid = top > score_thresh
        labels = (idx % num_classes).astype(jnp.int32)
        cand = clip_boxes(bx[idx // num_classes], image_hw[0], image_hw[1])
        keep, kept = batched_nms(cand, top, labels, nms_thresh, detections_per_img, valid)
        return {"boxes": jnp.where(kept[:, None], cand[keep], 0.0), "scores": jnp.where(kept, top[keep], 0.0),
                "labels": jnp.where(kept, labels[keep], 0), "valid": kept}

    return jax.vmap(one)(boxes.astype(jnp.float32), scores.astype(jnp.float32))


@HEADS.register("yolov3")
class YOLOv3Head(DetectionHead):
    """YOLOv3's assignment, loss and decoding over the `[yolo]` maps of a darknet model (module docstring).

    `self.anchors` ((w, h) pixels), `self.masks` (indices per [yolo]): `config.anchors`, or the cfg's where
    empty; `self.sections`: the adapted cfg when `config.model.name == "darknet"`, else None (then the model
    must give `outputs["raw"]` as `Darknet` does, and `config.anchors` must be set).
    """

    name = "yolov3"

    @classmethod
    def default_config(cls, preset: str = "") -> dict[str, ml_collections.ConfigDict]:
        """Darknet's settings (no presets: `preset` is ignored, as the detection config passes its default)."""
        return {
            "model": ml_collections.ConfigDict({"name": "darknet", "cfg": "yolov3-tiny", "width": 1.0,
                                                "bn_momentum": 0.99}),
            "anchors": ml_collections.ConfigDict({"sizes": (), "masks": ()}),  # () = the cfg's [yolo] values
            "loss": ml_collections.ConfigDict({
                "ignore_thresh": 0.7,  # a non-assigned prediction with IoU > this with a gt is no negative
                "box_loss": "mse",  # mse (darknet's x, y, w, h terms) | giou
                "xy_loss": "mse",  # mse (squared error on sigmoid offsets) | bce (darknet's gradient)
                "box_weight": 1.0, "obj_weight": 1.0, "noobj_weight": 1.0, "cls_weight": 1.0,
            }),
            "postprocess": ml_collections.ConfigDict(
                {"score_thresh": 0.005, "topk_candidates": 1000, "nms_thresh": 0.45, "detections_per_img": 100}
            ),
        }

    def __init__(self, config: ml_collections.ConfigDict, image_hw: tuple[int, int], num_classes: int):
        super().__init__(config, image_hw, num_classes)
        a, model = config.anchors, config.model
        try:
            anchors = as_anchors(a.sizes)
        except (TypeError, ValueError):
            _fail("anchors.sizes", a.sizes, "must be (w, h) pairs of input pixels, e.g. ((10, 14), (23, 27))")
        try:
            masks = tuple(tuple(int(i) for i in m) for m in a.masks)
        except (TypeError, ValueError):
            _fail("anchors.masks", a.masks, "must be one index tuple per [yolo], e.g. ((3, 4, 5), (0, 1, 2))")
        self.sections: list[Section] | None = None
        if model.name == "darknet":
            cfg = model.get("cfg", "yolov3-tiny")
            try:
                written = [s.spec for s in parse_cfg(cfg_text(cfg)[0]) if s.kind == "yolo"]
            except ValueError as e:
                _fail("model.cfg", cfg, str(e))
            if not written:
                _fail("model.cfg", cfg, "has no [yolo] sections")
            if not anchors and any(s.anchors != written[0].anchors for s in written):
                _fail("model.cfg", cfg, "its [yolo] sections have different anchors; set config.anchors.sizes")
            anchors = anchors or tuple((float(w), float(h)) for w, h in written[0].anchors)
            masks = masks or tuple(s.mask for s in written)
            if len(masks) != len(written):
                _fail("anchors.masks", masks, f"needs one mask per [yolo] section of {cfg!r} ({len(written)})")
            if any(s.scale_x_y != 1.0 for s in written):
                _fail("model.cfg", cfg, "scale_x_y != 1 in a [yolo] section: the YOLOv3 loss does not model it")
        elif not anchors or not masks:
            _fail("anchors.sizes" if not anchors else "anchors.masks", a.sizes if not anchors else a.masks,
                  f"must be given: model {model.name!r} is no darknet cfg to take them from")
        self.anchors: Anchors = anchors
        self.masks: Masks = masks
        self._check_anchors()
        if model.name == "darknet":
            try:
                self.sections = darknet_sections(model.get("cfg", "yolov3-tiny"), self.num_classes, anchors, masks,
                                                 float(model.get("width", 1.0)))
            except ValueError as e:
                _fail("model.cfg", model.get("cfg"), str(e))

    def _check_anchors(self) -> None:
        if any(w <= 0 or h <= 0 for w, h in self.anchors):
            _fail("anchors.sizes", self.config.anchors.sizes, "anchor widths and heights must be > 0")
        used = [i for m in self.masks for i in m]
        if not self.masks or any(not m for m in self.masks):
            _fail("anchors.masks", self.masks, "every [yolo] needs at least one anchor index")
        if any(not 0 <= i < len(self.anchors) for i in used):
            _fail("anchors.masks", self.masks, f"indices must be in 0..{len(self.anchors) - 1} "
                                               f"({len(self.anchors)} anchors in anchors.sizes)")
        if len(set(used)) != len(used):
            _fail("anchors.masks", self.masks, "an anchor index appears twice; each anchor belongs to one [yolo]")

    def validate(self) -> None:
        lc, pc = self.config.loss, self.config.postprocess
        if self.sections is not None:
            stride = Darknet(tuple(self.sections)).size_multiple()
            if any(s % stride for s in self.image_hw):
                _fail("data.image_size", self.config.data.image_size,
                      f"must be a multiple of {stride}, the stride of darknet cfg {self.config.model.cfg!r}")
        if lc.box_loss not in BOX_LOSSES:
            _fail("loss.box_loss", lc.box_loss, f"unknown; known: {', '.join(BOX_LOSSES)}")
        if lc.xy_loss not in XY_LOSSES:
            _fail("loss.xy_loss", lc.xy_loss, f"unknown; known: {', '.join(XY_LOSSES)}")
        if not 0.0 <= lc.ignore_thresh <= 1.0:
            _fail("loss.ignore_thresh", lc.ignore_thresh, "must be in [0, 1]")
        for key in ("box_weight", "obj_weight", "noobj_weight", "cls_weight"):
            if lc[key] < 0:
                _fail(f"loss.{key}", lc[key], "must be >= 0")
        if not 0.0 <= pc.score_thresh < 1.0:
            _fail("postprocess.score_thresh", pc.score_thresh, "must be in [0, 1)")
        if not 0.0 <= pc.nms_thresh <= 1.0:
            _fail("postprocess.nms_thresh", pc.nms_thresh, "must be in [0, 1]")
        for key in ("topk_candidates", "detections_per_img"):
            if int(pc[key]) < 1:
                _fail(f"postprocess.{key}", pc[key], "must be >= 1")

    def model_kwargs(self) -> dict[str, Any]:
        return {"anchors": self.anchors, "masks": self.masks} if self.sections is not None else {}

    def _raw(self, outputs: dict[str, Any]) -> list[Array]:
        """outputs["raw"], checked against the anchors' masks and the class count (trace time)."""
        raw = list(outputs["raw"])
        shapes = [tuple(t.shape[-2:]) for t in raw]
        expected = [(len(m), 5 + self.num_classes) for m in self.masks]
        if shapes != expected:
            raise ValueError(f"model {self.config.model.name!r} gives [yolo] maps of (anchors, 5 + classes) "
                             f"{shapes}, but head {self.name!r} expects {expected} (anchors.masks={self.masks}, "
                             f"{self.num_classes} classes)")
        return raw

    def loss(self, outputs, boxes, labels, mask):
        lc = self.config.loss
        terms = yolov3_loss(self._raw(outputs), boxes, labels, mask, anchors=self.anchors, masks=self.masks,
                            image_size=self.image_hw, ignore_thresh=float(lc.ignore_thresh), box_loss=lc.box_loss,
                            xy_loss=lc.xy_loss, box_weight=lc.box_weight, obj_weight=lc.obj_weight,
                            noobj_weight=lc.noobj_weight, cls_weight=lc.cls_weight)
        total = terms.pop("loss")
        return total, {f"{k}_loss": v for k, v in terms.items()}

    def decode(self, outputs):
        pc = self.config.postprocess
        boxes, scores = yolo_boxes(self._raw(outputs), self.anchors, self.masks, self.image_hw)
        return select_detections(boxes, scores, self.image_hw, float(pc.score_thresh), int(pc.topk_candidates),
                                 float(pc.nms_thresh), int(pc.detections_per_img))


# pjreddie/darknet master (f6afaabc) cfg/yolov3-tiny.cfg, verbatim (darknet is public domain); its git blob id:
YOLOV3_TINY_GIT_BLOB = "cfca3cfa6415b7b61eae238aa71107dedbe5d607"
YOLOV3_TINY_CFG = """\
[net]
# Testing
batch=1
subdivisions=1
# Training
# batch=64
# subdivisions=2
width=416
height=416
channels=3
momentum=0.9
decay=0.0005
angle=0
saturation = 1.5
exposure = 1.5
hue=.1

learning_rate=0.001
burn_in=1000
max_batches = 500200
policy=steps
steps=400000,450000
scales=.1,.1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=1024
size=3
stride=1
pad=1
activation=leaky

###########

[convolutional]
batch_normalize=1
filters=256
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear



[yolo]
mask = 3,4,5
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
num=6
jitter=.3
ignore_thresh = .7
truth_thresh = 1
random=1

[route]
layers = -4

[convolutional]
batch_normalize=1
filters=128
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 8

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
num=6
jitter=.3
ignore_thresh = .7
truth_thresh = 1
random=1
"""
BUILTIN_CFGS = {"yolov3-tiny": YOLOV3_TINY_CFG}
