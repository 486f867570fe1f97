"""Anchor-free YOLOv8 detector (NHWC, linen), laid out like ultralytics' `yolov8.yaml` so its weights load 1:1.

Architecture (Jocher et al., ultralytics YOLOv8; the same network ultralytics calls yolov8n/s/m/l/x):

- CSP-Darknet backbone (`CSPDarknet`, registered as backbones `csp_darknet_yolov8{n,s,m,l,x}`): model layers
  0..9 = Conv 3x3/2, Conv 3x3/2, C2f, Conv 3x3/2, C2f, Conv 3x3/2, C2f, Conv 3x3/2, C2f, SPPF. Every Conv is
  conv (no bias, symmetric padding k // 2 as torch, never 'SAME') + BatchNorm (eps 1e-3, torch momentum 0.03 =
  flax 0.97) + SiLU. C2f: 1x1 conv to 2c, split in halves, n bottlenecks (3x3 -> 3x3, residual in the
  backbone) each on the last chunk, 1x1 conv of all chunks concatenated. SPPF: 1x1 conv to c/2, three 5x5/1
  max pools in series, 1x1 conv of [x, y1, y2, y3]. Levels C1..C5 = layers 0, 2, 4, 6, 9 (strides 2..32).
- PAN neck (`PANNeck`, layers 10..21): nearest x2 upsample, concat (upsampled first), C2f without residual;
  then 3x3/2 convs back down; outputs P3, P4, P5 = layers 15, 18, 21.
- Decoupled head (`DetectHead`, layer 22): per level a box branch (Conv3x3, Conv3x3, 1x1 conv with bias to
  4 * reg_max distribution logits) and a class branch (the same to num_classes logits); DFL decode = softmax
  over the reg_max bins, expectation with 0..reg_max-1 -> (l, t, r, b) distances in grid units.
- Scales (depth, width, max_channels): n (0.33, 0.25, 1024), s (0.33, 0.5, 1024), m (0.67, 0.75, 768),
  l (1.0, 1.0, 512), x (1.0, 1.25, 512); channels = ceil(min(c, max_channels) * width / 8) * 8, repeats
  = max(round(n * depth), 1).

`YOLOv8(scale, num_classes).apply(variables, x, train=False)` takes x [B, H, W, 3] RGB in [0, 1] (H, W
multiples of 32) and returns float32:
  `raw_p3`, `raw_p4`, `raw_p5`  [B, h_i, w_i, 4 * reg_max + K]  head outputs per level (ultralytics'
                                 `cat(cv2[i](f), cv3[i](f), 1)` in NHWC: box logits (channel side*reg_max + bin,
                                 sides l, t, r, b), then class logits),
  `boxes` [B, A, 4 * reg_max], `scores` [B, A, K]   the levels flattened and concatenated (ultralytics' training
                                 dict `boxes`/`scores`, transposed to anchor-major),
  `decoded` [B, A, 4 + K]       ultralytics' eval output `y` transposed: (cx, cy, w, h) in input pixels, then
                                 sigmoid class probabilities,
with anchors level-major (P3, P4, P5) then row-major over (y, x), anchor point = cell centre (x + 0.5, y + 0.5).
The loss (`jaxcv.ops.yolov8_loss.yolov8_loss`) reads `boxes` and `scores`; `yolov8_nms` reads `decoded`.

Weights: `IMPORTERS["ultralytics:yolov8n"]` (and s/m/l/x) maps an ultralytics `DetectionModel` state dict
(`model.0.conv.weight`, `model.2.m.0.cv1.bn.running_mean`, `model.22.cv2.0.2.bias`, ...) strictly; the fixed DFL
projection `model.22.dfl.conv.weight` must be 0..reg_max-1 and is a constant here, not a variable. To export
a checkpoint where torch and ultralytics are installed (jaxcv itself never unpickles):

    from ultralytics import YOLO
    from safetensors.torch import save_file
    sd = YOLO("yolov8n.pt").model.float().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, "yolov8n.safetensors")

then `jaxcv.interop.load_safetensors("yolov8n.safetensors")` and `IMPORTERS.get("ultralytics:yolov8n")(sd)`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models import MODELS
from jaxcv.models.backbones import IMPORTERS, Level, register_backbone
from jaxcv.models.layers import BatchNorm, Conv, output_dtype
from jaxcv.ops.yolov8_loss import decode_outputs, make_anchors

Array = jax.Array
Dtype = Any

# scale -> (depth multiple, width multiple, max channels), as yolov8.yaml.
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}
STRIDES = (8, 16, 32)


def _scale(scale: str) -> tuple[float, float, int]:
    if scale not in SCALES:
        raise ValueError(f"unknown YOLOv8 scale {scale!r}; expected one of {', '.join(SCALES)}")
    return SCALES[scale]


def scaled_channels(c: int, width: float, max_channels: int) -> int:
    """Channels of a layer that yolov8.yaml gives `c`: ceil(min(c, max_channels) * width / 8) * 8."""
    return int(math.ceil(min(c, max_channels) * width / 8) * 8)


def scaled_repeats(n: int, depth: float) -> int:
    """Blocks of a C2f that yolov8.yaml gives `n`: max(round(n * depth), 1)."""
    return max(round(n * depth), 1) if n > 1 else n


class ConvBNSiLU(nn.Module):
    """ultralytics `Conv`: conv k x k / s (symmetric padding k // 2, no bias) -> BN (eps 1e-3) -> SiLU.
    Submodules `conv`, `bn` (state-dict `.conv.weight`, `.bn.*`)."""

    features: int
    kernel: int = 1
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        p = self.kernel // 2
        x = Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                 padding=((p, p), (p, p)), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=0.97, epsilon=1e-3, use_fast_variance=False,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x)
        return nn.silu(x)


class Bottleneck(nn.Module):
    """Two 3x3 ConvBNSiLU (`cv1`, `cv2`), + input when `shortcut` and the channels agree."""

    features: int
    shortcut: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        y = ConvBNSiLU(self.features, 3, **kw, name="cv1")(x, train)
        y = ConvBNSiLU(self.features, 3, **kw, name="cv2")(y, train)
        return x + y if self.shortcut and x.shape[-1] == self.features else y


class C2f(nn.Module):
    """CSP bottleneck with two convs: `cv1` 1x1 to 2c (c = features / 2), halves (a, b); `m_i` appends
    Bottleneck(last chunk); `cv2` 1x1 of concat(a, b, m_0, ..) to `features`."""

    features: int
    n: int = 1
    shortcut: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        c = int(self.features * 0.5)
        y = ConvBNSiLU(2 * c, 1, **kw, name="cv1")(x, train)
        chunks = [y[..., :c], y[..., c:]]
        for i in range(self.n):
            chunks.append(Bottleneck(c, self.shortcut, **kw, name=f"m_{i}")(chunks[-1], train))
        return ConvBNSiLU(self.features, 1, **kw, name="cv2")(jnp.concatenate(chunks, axis=-1), train)


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: `cv1` 1x1 to c_in / 2, three 5x5 stride-1 max pools (padding 2, padded
    values never win) in series, `cv2` 1x1 of [x, y1, y2, y3]."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = ConvBNSiLU(x.shape[-1] // 2, 1, **kw, name="cv1")(x, train)
        ys = [x]
        for _ in range(3):
            ys.append(nn.max_pool(ys[-1], (5, 5), strides=(1, 1), padding=((2, 2), (2, 2))))
        return ConvBNSiLU(self.features, 1, **kw, name="cv2")(jnp.concatenate(ys, axis=-1), train)


class CSPDarknet(nn.Module):
    """YOLOv8 backbone (model layers 0..9, submodules `layer0`..`layer9`), the contract of
    `jaxcv.models.backbones`: `__call__(x [B, H, W, C], train) -> {C1..C5}` (layers 0, 2, 4, 6, 9; strides
    2..32, sizes ceil(H / stride)); with `num_classes > 0` also `pre_logits` (C5 averaged) and `logits`
    (a dense layer `fc`; not an ultralytics layer)."""

    scale: str = "n"
    num_classes: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def widths(self) -> list[int]:
        _, width, max_ch = _scale(self.scale)
        return [scaled_channels(c, width, max_ch) for c in (64, 128, 256, 512, 1024)]

    @nn.nowrap
    def feature_info(self) -> dict[str, Level]:
        return {f"C{i + 1}": Level(c, 2 ** (i + 1)) for i, c in enumerate(self.widths())}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        depth = _scale(self.scale)[0]
        c1, c2, c3, c4, c5 = self.widths()
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = jnp.asarray(x, self.dtype)
        out: dict[str, Array] = {}
        out["C1"] = x = ConvBNSiLU(c1, 3, 2, **kw, name="layer0")(x, train)
        x = ConvBNSiLU(c2, 3, 2, **kw, name="layer1")(x, train)
        out["C2"] = x = C2f(c2, scaled_repeats(3, depth), True, **kw, name="layer2")(x, train)
        x = ConvBNSiLU(c3, 3, 2, **kw, name="layer3")(x, train)
        out["C3"] = x = C2f(c3, scaled_repeats(6, depth), True, **kw, name="layer4")(x, train)
        x = ConvBNSiLU(c4, 3, 2, **kw, name="layer5")(x, train)
        out["C4"] = x = C2f(c4, scaled_repeats(6, depth), True, **kw, name="layer6")(x, train)
        x = ConvBNSiLU(c5, 3, 2, **kw, name="layer7")(x, train)
        x = C2f(c5, scaled_repeats(3, depth), True, **kw, name="layer8")(x, train)
        out["C5"] = x = SPPF(c5, **kw, name="layer9")(x, train)
        if self.num_classes > 0:
            pooled = jnp.mean(x.astype(output_dtype(self.dtype)), axis=(1, 2))
            out["pre_logits"] = pooled
            out["logits"] = nn.Dense(self.num_classes, dtype=pooled.dtype, param_dtype=self.param_dtype,
                                     name="fc")(pooled)
        return out


def upsample2(x: Array) -> Array:
    """Nearest-neighbour x2 (torch `nn.Upsample(scale_factor=2, mode="nearest")`), NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class PANNeck(nn.Module):
    """YOLOv8 PAN (model layers 10..21): (C3, C4, C5) -> (P3, P4, P5), submodules named by layer index."""

    scale: str = "n"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c3: Array, c4: Array, c5: Array, train: bool = False) -> tuple[Array, Array, Array]:
        depth, width, max_ch = _scale(self.scale)
        ch = functools.partial(scaled_channels, width=width, max_channels=max_ch)
        n = scaled_repeats(3, depth)
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for name, a, b in (("C4", c4, c5), ("C3", c3, c4)):
            if a.shape[1:3] != (2 * b.shape[1], 2 * b.shape[2]):
                raise ValueError(f"YOLOv8 needs input sizes that are multiples of 32: {name} is {a.shape[1:3]}, "
                                 f"the level below {b.shape[1:3]}")
        x12 = C2f(ch(512), n, False, **kw, name="layer12")(jnp.concatenate([upsample2(c5), c4], -1), train)
        p3 = C2f(ch(256), n, False, **kw, name="layer15")(jnp.concatenate([upsample2(x12), c3], -1), train)
        x16 = ConvBNSiLU(ch(256), 3, 2, **kw, name="layer16")(p3, train)
        p4 = C2f(ch(512), n, False, **kw, name="layer18")(jnp.concatenate([x16, x12], -1), train)
        x19 = ConvBNSiLU(ch(512), 3, 2, **kw, name="layer19")(p4, train)
        p5 = C2f(ch(1024), n, False, **kw, name="layer21")(jnp.concatenate([x19, c5], -1), train)
        return p3, p4, p5


def head_bias_init(num_classes: int, stride: int) -> tuple[float, float]:
    """Initial biases of the last box and class convs at one level, as ultralytics' `Detect.bias_init`: box
    logits 1.0 (every DFL bin alike), class logits log(5 / K / (640 / stride)^2), a prior of about 5 objects
    over the K classes per 640 x 640 image spread over that level's anchor points (RetinaNet's prior-probability
    initialization); 640 is fixed there, whatever the training size."""
    return 1.0, math.log(5.0 / num_classes / (640.0 / stride) ** 2)


class DetectHead(nn.Module):
    """ultralytics `Detect` (legacy v8 form): per level i, box branch `cv2_i_0`, `cv2_i_1` (ConvBNSiLU 3x3,
    c2 = max(16, ch0 // 4, 4 * reg_max) channels), `cv2_i_2` (1x1 conv + bias -> 4 * reg_max); class branch
    `cv3_i_*` the same with c3 = max(ch0, min(K, 100)) channels -> K. Returns [B, h, w, 4 * reg_max + K] per
    level (float32). The last convs' biases start as `head_bias_init` (level i at stride `STRIDES[i]`), so a
    model trained from scratch starts as ultralytics'; loaded weights replace them."""

    num_classes: int = 80
    reg_max: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Array], train: bool = False) -> list[Array]:
        ch0 = feats[0].shape[-1]
        c2 = max(16, ch0 // 4, 4 * self.reg_max)
        c3 = max(ch0, min(self.num_classes, 100))
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        out_dtype = output_dtype(self.dtype)
        outs = []
        for i, f in enumerate(feats):
            branches = []
            biases = head_bias_init(self.num_classes, STRIDES[i])
            for (branch, width, n_out), bias in zip((("cv2", c2, 4 * self.reg_max), ("cv3", c3, self.num_classes)),
                                                    biases, strict=True):
                y = ConvBNSiLU(width, 3, **kw, name=f"{branch}_{i}_0")(f, train)
                y = ConvBNSiLU(width, 3, **kw, name=f"{branch}_{i}_1")(y, train)
                y = Conv(n_out, (1, 1), dtype=out_dtype, param_dtype=self.param_dtype,
                         bias_init=nn.initializers.constant(bias), name=f"{branch}_{i}_2")(y.astype(out_dtype))
                branches.append(y)
            outs.append(jnp.concatenate(branches, axis=-1))
        return outs


class YOLOv8(nn.Module):
    """YOLOv8 detector: `backbone` (CSPDarknet), `neck` (PANNeck), `head` (DetectHead); outputs in the
    module docstring. `train=True` normalizes with batch statistics (call with `mutable=["batch_stats"]`)."""

    scale: str = "n"
    num_classes: int = 80
    reg_max: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        levels = CSPDarknet(self.scale, **kw, name="backbone")(x, train)
        feats = PANNeck(self.scale, **kw, name="neck")(levels["C3"], levels["C4"], levels["C5"], train)
        raw = DetectHead(self.num_classes, self.reg_max, **kw, name="head")(feats, train)
        b = x.shape[0]
        flat = jnp.concatenate([r.reshape(b, -1, r.shape[-1]) for r in raw], axis=1)
        boxes, scores = flat[..., : 4 * self.reg_max], flat[..., 4 * self.reg_max:]
        points, strides = make_anchors([r.shape[1:3] for r in raw])
        out = {f"raw_p{i + 3}": r for i, r in enumerate(raw)}
        out.update(boxes=boxes, scores=scores, decoded=decode_outputs(boxes, scores, points, strides, self.reg_max))
        return out


def yolov8(scale: str = "n", num_classes: int = 80, **kwargs: Any) -> YOLOv8:
    return YOLOv8(scale=scale, num_classes=num_classes, **kwargs)


MODELS.register("yolov8", yolov8)
for _s in SCALES:
    register_backbone(f"csp_darknet_yolov8{_s}", functools.partial(CSPDarknet, _s))


# --- ultralytics weights ----------------------------------------------------------------------------------------

_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
         ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
_LAYER = re.compile(r"^layer(\d+)$")
DFL_KEY = "model.22.dfl.conv.weight"


def ultralytics_key(path: tuple[str, ...]) -> str:
    """Flax variable path (collection first) of a `YOLOv8` -> ultralytics state-dict key:
    ("params", "backbone", "layer2", "m_0", "cv1", "conv", "kernel") -> "model.2.m.0.cv1.conv.weight",
    ("batch_stats", "head", "cv2_0_0", "bn", "mean") -> "model.22.cv2.0.0.bn.running_mean"."""
    collection, top, *modules, leaf = path
    parts = ["model.22"] if top == "head" else []
    for m in modules:
        layer = _LAYER.match(m)
        parts.append(f"model.{layer.group(1)}" if layer else m.replace("_", "."))
    return ".".join([*parts, _LEAF[(collection, leaf)]])


def from_ultralytics_state_dict(state_dict: Mapping[str, np.ndarray], scale: str = "n",
                                num_classes: int | None = None, **kwargs: Any) -> tuple[YOLOv8, dict[str, Any]]:
    """ultralytics `DetectionModel` (yolov8{scale}.yaml) state dict -> (`YOLOv8`, {"params", "batch_stats"}).

    `num_classes` defaults to the class branch's output channels; `reg_max` is read from the box branch;
    `kwargs` go to `YOLOv8` (e.g. `dtype`). Strict: one ValueError names every missing, unexpected or
    mis-shaped key (`num_batches_tracked` ignored); the DFL projection must be [1, reg_max, 1, 1] = 0..reg_max-1.
    """
    from jaxcv.interop import abstract_variables, strict_load

    cls_w = state_dict.get("model.22.cv3.0.2.weight")
    if num_classes is None:
        if cls_w is None:
            raise ValueError("state dict has no model.22.cv3.0.2.weight to read num_classes from; pass num_classes")
        num_classes = int(cls_w.shape[0])
    box_w = state_dict.get("model.22.cv2.0.2.weight")
    reg_max = kwargs.pop("reg_max", int(box_w.shape[0]) // 4 if box_w is not None else 16)
    module = YOLOv8(scale=scale, num_classes=num_classes, reg_max=reg_max, **kwargs)
    problems = []
    dfl = state_dict.get(DFL_KEY)
    if dfl is None:
        problems.append(f"missing keys (1): {DFL_KEY} {(1, reg_max, 1, 1)}")
    elif tuple(np.shape(dfl)) != (1, reg_max, 1, 1):
        problems.append(f"shape mismatches (1): {DFL_KEY}: got {tuple(np.shape(dfl))}, expected {(1, reg_max, 1, 1)}")
    elif not np.array_equal(np.asarray(dfl, np.float64).ravel(), np.arange(reg_max)):
        problems.append(f"{DFL_KEY} is not the fixed projection 0..{reg_max - 1}")
    rest = {k: v for k, v in state_dict.items() if k != DFL_KEY}
    target = f"YOLOv8(scale={scale!r}, num_classes={num_classes})"
    try:
        variables = strict_load(abstract_variables(module, 64), rest, ultralytics_key,
                                source="ultralytics state dict", target=target)
    except ValueError as e:
        raise ValueError("; ".join([str(e), *problems])) from None
    if problems:
        raise ValueError(f"ultralytics state dict does not match {target}: " + "; ".join(problems))
    return module, variables


for _s in SCALES:
    IMPORTERS.register(f"ultralytics:yolov8{_s}", functools.partial(from_ultralytics_state_dict, scale=_s))
