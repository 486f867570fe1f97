"""Darknet networks (YOLOv3, YOLOv3-tiny, ...) from a `.cfg` and a `.weights` file, as OpenCV DNN reads them.

`parse_cfg` reads a cfg the way OpenCV's `darknet_io.cpp` does (whitespace removed from every line, `#`/`;`
comments, `[net]` then one section per layer numbered from 0, OpenCV's defaults), validates it and returns
typed `Section`s; `Darknet` is the linen module of those sections; `from_darknet(cfg, weights)` reads the weights
binary and returns `(module, variables)` (registered as `IMPORTERS["darknet"]`).

Layer semantics (pjreddie/darknet `parser.c`, OpenCV `darknet_io.cpp`):
- `[convolutional]`: out = (H + 2p - k) // s + 1, p = size // 2 if `pad=1` else `padding`; OIHW weights; with
  `batch_normalize=1` no conv bias, then y = scale * (x - mean) / sqrt(var + 1e-6) + bias (OpenCV's epsilon;
  darknet divides by sqrt(var) + 1e-6). OpenCV's default activation is linear (darknet's is logistic).
- `[maxpool]`: `padding` defaults to size - 1, `padding // 2` of it on the top/left and the rest on the
  bottom/right; padded values never win; out = (H + padding - size) // stride + 1.
- `[route]`: `layers` negative = relative to the route, positive = absolute, concatenated on channels in the
  listed order (`groups`/`group_id`: that channel chunk of each input, as in yolov4-tiny).
- `[shortcut]`: `from` (relative or absolute), alpha * previous + from, channels of the previous layer
  (OpenCV's `input_0_truncate`), then the section's activation.
- `[upsample]`: nearest, factor `stride`.
- `[yolo]`: OpenCV's Region layer rows (see `Darknet`); a later layer that reads a `[yolo]` section gets
  darknet's activated map (sigmoid on x, y, objectness and classes), not OpenCV's rows.
- Activations: linear, leaky (0.1), logistic, mish, swish (OpenCV's set) and relu (darknet's).

Weights binary (darknet `save_weights_upto`, little-endian): int32 major, minor, revision; `seen` as uint64 if
major * 10 + minor >= 2 (and major, minor < 1000) else int32; then per `[convolutional]` in cfg order float32
biases[filters] (the BN shift for BN convs), for BN convs scales, rolling_mean, rolling_variance, then the
weights [filters, c_in / groups, size, size]; nothing after the last conv.

Variables: `params/conv_<i>/kernel` (HWIO) and, without BN, `params/conv_<i>/bias`; with BN
`params/bn_<i>/{scale, bias}` and `batch_stats/bn_<i>/{mean, var}`; `<i>` is the section number (OpenCV's
`conv_12`, `bn_12`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.backbones import IMPORTERS
from jaxcv.models.layers import BatchNorm, Conv, output_dtype

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda x: x,
    "leaky": lambda x: jnp.where(x > 0, x, 0.1 * x),
    "relu": nn.relu,
    "logistic": nn.sigmoid,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "swish": nn.swish,
}
LAYER_TYPES = ("convolutional", "maxpool", "shortcut", "route", "upsample", "yolo")
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class NetSpec:
    width: int = 416
    height: int = 416
    channels: int = 3


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    filters: int
    size: int
    stride: int
    padding: int
    groups: int
    batch_normalize: bool
    activation: str
    in_channels: int

    def weight_floats(self) -> tuple[int, int]:
        """(floats this layer stores in a .weights file, learnable parameters among them)."""
        weights = self.filters * (self.in_channels // self.groups) * self.size * self.size
        vectors = 4 if self.batch_normalize else 1
        return weights + vectors * self.filters, weights + (2 if self.batch_normalize else 1) * self.filters


@dataclasses.dataclass(frozen=True)
class MaxPoolSpec:
    size: int
    stride: int
    padding: int
    activation: str = "linear"


@dataclasses.dataclass(frozen=True)
class ShortcutSpec:
    source: int  # absolute layer index
    alpha: float
    activation: str


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    sources: tuple[int, ...]  # absolute layer indices, in concatenation order
    groups: int = 1
    group_id: int = 0
    activation: str = "linear"


@dataclasses.dataclass(frozen=True)
class UpsampleSpec:
    stride: int
    activation: str = "linear"


@dataclasses.dataclass(frozen=True)
class YoloSpec:
    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]  # all `num` anchors (w, h) in input pixels
    classes: int
    thresh: float = 0.2  # OpenCV: class scores <= thresh are zeroed in the layer
    nms_threshold: float = 0.0  # OpenCV 4.14: per-class NMS in the layer only when > 0
    scale_x_y: float = 1.0
    ignore_thresh: float = 0.5  # darknet training keys (OpenCV ignores them)
    truth_thresh: float = 1.0

    @property
    def masked_anchors(self) -> tuple[tuple[float, float], ...]:
        return tuple(self.anchors[m] for m in self.mask)


LayerSpec = ConvSpec | MaxPoolSpec | ShortcutSpec | RouteSpec | UpsampleSpec | YoloSpec


@dataclasses.dataclass(frozen=True)
class Section:
    """One cfg section: `kind` ("net" or a layer type), `index` (layer number, -1 for [net]), `line` (1-based
    line of its header), `options` ((key, value string) pairs as written, whitespace removed), `spec` (typed
    settings), `channels` (output channels; input channels for [net])."""

    kind: str
    index: int
    line: int
    options: tuple[tuple[str, str], ...]
    spec: Any
    channels: int


class _Options:
    """A section's key/value strings with typed getters whose errors name the file, section, line and key."""

    def __init__(self, where: str, options: dict[str, tuple[str, int]]):
        self.where, self.options = where, options

    def error(self, key: str | None, message: str) -> ValueError:
        if key is not None and key in self.options:
            value, line = self.options[key]
            return ValueError(f"{self.where}, key {key!r} = {value!r} (line {line}): {message}")
        return ValueError(f"{self.where}{f', key {key!r}' if key else ''}: {message}")

    def _get(self, key: str, default: Any, convert: Callable[[str], Any], what: str) -> Any:
        if key not in self.options:
            if default is _REQUIRED:
                raise self.error(key, "missing required key")
            return default
        try:
            return convert(self.options[key][0])
        except ValueError:
            raise self.error(key, f"bad value: expected {what}") from None

    def int(self, key: str, default: Any = _REQUIRED, minimum: int | None = None) -> int:
        value = self._get(key, default, int, "an integer")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}")
        return value

    def float(self, key: str, default: Any = _REQUIRED) -> float:
        return self._get(key, default, float, "a number")

    def ints(self, key: str, default: Any = _REQUIRED) -> tuple[int, ...]:
        return self._get(key, default, lambda s: tuple(int(v) for v in s.split(",") if v), "integers a,b,...")

    def floats(self, key: str, default: Any = _REQUIRED) -> tuple[float, ...]:
        return self._get(key, default, lambda s: tuple(float(v) for v in s.split(",") if v), "numbers a,b,...")

    def activation(self) -> str:
        name = self.options.get("activation", ("linear",))[0]
        if name not in ACTIVATIONS:
            raise self.error("activation", f"unsupported activation; supported: {', '.join(ACTIVATIONS)}")
        return name


def _read_source(source: str | Path) -> tuple[str, str]:
    """(text, name for messages) of a cfg path or cfg text."""
    if isinstance(source, Path) or ("\n" not in source and not source.lstrip().startswith("[")):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"darknet cfg file {str(path)!r} does not exist")
        return path.read_text(errors="replace"), str(path)
    return source, "<cfg text>"


def _split_sections(text: str, name: str) -> list[tuple[str, int, dict[str, tuple[str, int]]]]:
    """[(type, header line, {key: (value, line)})]: OpenCV's line reading (every character outside (' ', 'z']
    removed, so all whitespace; blank, `#` and `;` lines skipped)."""
    sections: list[tuple[str, int, dict[str, tuple[str, int]]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = "".join(ch for ch in raw if " " < ch <= "z")
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ValueError(f"{name}: line {lineno}: malformed section header {raw.strip()!r}")
            sections.append((line[1:-1], lineno, {}))
            continue
        if not sections:
            raise ValueError(f"{name}: line {lineno}: {raw.strip()!r} comes before any [section]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise ValueError(f"{name}: line {lineno}: expected key=value, got {raw.strip()!r}")
        options = sections[-1][2]
        if key in options:
            raise ValueError(f"{name}: line {lineno}: key {key!r} given twice in this section")
        if value:  # OpenCV skips empty values
            options[key] = (value, lineno)
    return sections


def parse_cfg(source: str | Path) -> list[Section]:
    """A darknet cfg (path or text) -> its sections, [net] first, validated: known layer types, required keys,
    values, route/shortcut indices, channel counts (input channels of convs, yolo heads' conv widths)."""
    text, name = _read_source(source)
    raw = _split_sections(text, name)
    if not raw or raw[0][0] != "net":
        raise ValueError(f"{name}: the first section must be [net], got {f'[{raw[0][0]}]' if raw else 'none'}")
    kind, line, opts = raw[0]
    o = _Options(f"{name}: section [net] (line {line})", opts)
    net = NetSpec(o.int("width", 416, 1), o.int("height", 416, 1), o.int("channels", 3, 1))
    sections = [Section("net", -1, line, tuple((k, v) for k, (v, _) in opts.items()), net, net.channels)]
    channels: list[int] = []
    for index, (kind, line, opts) in enumerate(raw[1:]):
        o = _Options(f"{name}: section {index} [{kind}] (line {line})", opts)
        if kind not in LAYER_TYPES:
            raise o.error(None, f"unknown section type; supported: [net], {', '.join(f'[{t}]' for t in LAYER_TYPES)}")
        c_in = channels[-1] if channels else net.channels

        def layer(offset: int, key: str, o: _Options = o, index: int = index) -> int:
            src = offset if offset >= 0 else index + offset
            if not 0 <= src < index:
                raise o.error(key, f"layer {offset} resolves to {src}, outside the {index} layers before this one")
            return src

        spec: LayerSpec
        if kind == "convolutional":
            if o.int("flipped", 0):
                raise o.error("flipped", "transposed convolution weights are not supported (as in OpenCV)")
            size, filters = o.int("size", minimum=1), o.int("filters", minimum=1)
            groups = o.int("groups", 1, 1)
            padding = size // 2 if o.int("pad", 0) else o.int("padding", 0, 0)
            if c_in % groups or filters % groups:
                raise o.error("groups", f"{groups} groups do not divide {c_in} input / {filters} output channels")
            spec = ConvSpec(filters, size, o.int("stride", 1, 1), padding, groups,
                            o.int("batch_normalize", 0) == 1, o.activation(), c_in)
            c_out = filters
        elif kind == "maxpool":
            size = o.int("size", 2, 1)
            spec = MaxPoolSpec(size, o.int("stride", 2, 1), o.int("padding", size - 1, 0), o.activation())
            c_out = c_in
        elif kind == "shortcut":
            src = layer(o.int("from"), "from")
            if o.float("beta", 0.0) != 0:
                raise o.error("beta", "non-zero beta is not supported (as in OpenCV)")
            spec = ShortcutSpec(src, o.float("alpha", 1.0), o.activation())
            c_out = c_in
        elif kind == "route":
            srcs = tuple(layer(v, "layers") for v in o.ints("layers"))
            if not srcs:
                raise o.error("layers", "needs at least one layer")
            groups = o.int("groups", 1, 1)
            group_id = o.int("group_id", 0, 0)
            if group_id >= groups or any(channels[s] % groups for s in srcs):
                raise o.error("groups", f"group_id {group_id} of {groups} groups does not split the inputs' "
                                        f"channels {[channels[s] for s in srcs]}")
            spec = RouteSpec(srcs, groups, group_id, o.activation())
            c_out = sum(channels[s] // groups for s in srcs)
        elif kind == "upsample":
            spec = UpsampleSpec(o.int("stride", 1, 1), o.activation())
            c_out = c_in
        else:  # yolo
            classes, num = o.int("classes", minimum=1), o.int("num", minimum=1)
            values = o.floats("anchors")
            if len(values) != 2 * num:
                raise o.error("anchors", f"{len(values)} numbers, expected 2 * num = {2 * num}")
            mask = o.ints("mask")
            if not mask or any(not 0 <= m < num for m in mask):
                raise o.error("mask", f"needs indices in 0..{num - 1}")
            spec = YoloSpec(mask, tuple(zip(values[::2], values[1::2], strict=True)), classes,
                            o.float("thresh", 0.2), o.float("nms_threshold", 0.0), o.float("scale_x_y", 1.0),
                            o.float("ignore_thresh", 0.5), o.float("truth_thresh", 1.0))
            if c_in != len(mask) * (classes + 5):
                raise o.error(None, f"the layer before has {c_in} channels, but {len(mask)} anchors x "
                                    f"(5 + {classes} classes) = {len(mask) * (classes + 5)} are needed")
            c_out = c_in
        channels.append(c_out)
        sections.append(Section(kind, index, line, tuple((k, v) for k, (v, _) in opts.items()), spec, c_out))
    if not channels:
        raise ValueError(f"{name}: no layers after [net]")
    return sections


def weights_size(sections: list[Section]) -> tuple[int, int]:
    """(float32 values a .weights file holds after its header, learnable parameters) for a parsed cfg."""
    counts = [s.spec.weight_floats() for s in sections if s.kind == "convolutional"]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


class Darknet(nn.Module):
    """A darknet network (NHWC) built from `parse_cfg` sections.

    `__call__(x: [B, H, W, C], train) -> {"yolo": [...], "raw": [...]}`, one entry per `[yolo]` section in cfg
    order. `raw[k]`: [B, rows, cols, A, 5 + classes], the conv output before the yolo layer (channel
    a * (5 + C) + k at (y, x)). `yolo[k]`: [B, rows * cols * A, 5 + C] in OpenCV's Region-layer row layout, row
    (y * cols + x) * A + a: cx = (x + sigmoid(t_x)) / cols, cy = (y + sigmoid(t_y)) / rows, w = exp(t_w) *
    anchor_w / W, h = exp(t_h) * anchor_h / H (W, H: this input's size), objectness sigmoid(t_o), class scores
    objectness * sigmoid(t_c), with no threshold (`jaxcv.ops.darknet_post.opencv_yolo_rows` applies the
    section's thresh / nms_threshold as OpenCV does). H and W must be multiples of `size_multiple()`.
    """

    sections: tuple[Section, ...]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.99  # darknet: rolling = .99 * rolling + .01 * batch
    bn_epsilon: float = 1e-6  # OpenCV's

    @nn.nowrap
    def layers(self) -> tuple[Section, ...]:
        return tuple(s for s in self.sections if s.kind != "net")

    @nn.nowrap
    def yolo_specs(self) -> tuple[YoloSpec, ...]:
        return tuple(s.spec for s in self.layers() if s.kind == "yolo")

    @nn.nowrap
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the lcm of every layer's cumulative down-sampling)."""
        scale: list[Any] = []
        for s in self.layers():
            prev = scale[-1] if scale else 1
            spec = s.spec
            if s.kind in ("convolutional", "maxpool"):
                scale.append(prev * spec.stride)
            elif s.kind == "upsample":
                scale.append(prev / spec.stride)
            elif s.kind == "route":
                scale.append(scale[spec.sources[0]])
            else:
                scale.append(prev)
        return math.lcm(*(max(1, round(v)) for v in scale))

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, list[Array]]:
        net = self.sections[0].spec
        if x.ndim != 4 or x.shape[-1] != net.channels:
            raise ValueError(f"Darknet expects [B, H, W, {net.channels}] input, got shape {tuple(x.shape)}")
        in_h, in_w = x.shape[1:3]
        m = self.size_multiple()
        if in_h % m or in_w % m:
            raise ValueError(f"Darknet input {in_h}x{in_w}: height and width must be multiples of {m}")
        outputs: list[Array] = []
        yolo, raw = [], []
        h = x.astype(self.dtype)
        for s in self.layers():
            spec, i = s.spec, s.index
            if s.kind == "convolutional":
                p = spec.padding
                h = Conv(spec.filters, (spec.size, spec.size), strides=(spec.stride, spec.stride),
                         padding=((p, p), (p, p)), feature_group_count=spec.groups,
                         use_bias=not spec.batch_normalize, dtype=self.dtype, param_dtype=self.param_dtype,
                         kernel_init=nn.initializers.variance_scaling(2.0 / 3.0, "fan_in", "uniform"),
                         name=f"conv_{i}")(h)
                if spec.batch_normalize:
                    h = BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                  dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn_{i}")(h)
            elif s.kind == "maxpool":
                lo = spec.padding // 2
                h = nn.max_pool(h, (spec.size, spec.size), (spec.stride, spec.stride),
                                padding=((lo, spec.padding - lo), (lo, spec.padding - lo)))
            elif s.kind == "shortcut":
                other = outputs[spec.source]
                if other.shape[1:3] != h.shape[1:3]:
                    raise ValueError(f"shortcut {i}: layer {spec.source} is {other.shape[1:3]}, the layer before "
                                     f"{h.shape[1:3]}; a shortcut needs equal spatial sizes")
                c = min(h.shape[-1], other.shape[-1])
                h = spec.alpha * h if spec.alpha != 1 else h
                h = h.at[..., :c].add(other[..., :c]) if c < h.shape[-1] else h + other[..., :c]
            elif s.kind == "route":
                parts = []
                for src in spec.sources:
                    part = outputs[src]
                    step = part.shape[-1] // spec.groups
                    parts.append(part[..., spec.group_id * step:(spec.group_id + 1) * step])
                if any(p.shape[1:3] != parts[0].shape[1:3] for p in parts):
                    raise ValueError(f"route {i}: layers {spec.sources} have spatial sizes "
                                     f"{[p.shape[1:3] for p in parts]}; a route needs equal sizes")
                h = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
            elif s.kind == "upsample":
                h = jnp.repeat(jnp.repeat(h, spec.stride, axis=1), spec.stride, axis=2)
            else:
                rows, decoded, h = _yolo(h, spec, in_h, in_w)
                raw.append(rows)
                yolo.append(decoded)
            if s.kind != "yolo":
                h = ACTIVATIONS[spec.activation](h)
            outputs.append(h)
        return {"yolo": yolo, "raw": raw}


def _yolo(t: Array, spec: YoloSpec, in_h: int, in_w: int) -> tuple[Array, Array, Array]:
    """One [yolo] section on conv output t [B, rows, cols, A * (5 + C)] -> (raw [B, rows, cols, A, 5 + C],
    OpenCV's rows [B, rows * cols * A, 5 + C], darknet's activated map [B, rows, cols, A * (5 + C)])."""
    b, rows, cols, _ = t.shape
    a, c = len(spec.mask), spec.classes
    raw = t.reshape(b, rows, cols, a, 5 + c)
    f = raw.astype(output_dtype(t.dtype))
    sig = nn.sigmoid(f)
    sxy = sig[..., :2] if spec.scale_x_y == 1 else (sig[..., :2] - 0.5) * spec.scale_x_y + 0.5
    anchors = jnp.asarray(spec.masked_anchors, f.dtype)  # [A, 2] (w, h)
    gx = jnp.arange(cols, dtype=f.dtype)[None, None, :, None]
    gy = jnp.arange(rows, dtype=f.dtype)[None, :, None, None]
    cx = (gx + sxy[..., 0]) / cols
    cy = (gy + sxy[..., 1]) / rows
    w = jnp.exp(f[..., 2]) * anchors[:, 0] / in_w
    h = jnp.exp(f[..., 3]) * anchors[:, 1] / in_h
    obj = sig[..., 4]
    decoded = jnp.concatenate([jnp.stack([cx, cy, w, h, obj], -1), obj[..., None] * sig[..., 5:]], -1)
    activated = jnp.concatenate([sxy.astype(t.dtype), raw[..., 2:4], sig[..., 4:].astype(t.dtype)], -1)
    return raw, decoded.reshape(b, rows * cols * a, 5 + c), activated.reshape(t.shape)


def read_darknet_weights(path: str | Path, sections: list[Section],
                         cfg_name: str = "the cfg") -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """A darknet .weights file -> (header {major, minor, revision, seen}, {"conv_<i>.<name>": array}) with
    names biases, scales, rolling_mean, rolling_variance [filters] and weights [O, I / groups, kh, kw].
    Raises ValueError naming the file when it is shorter or longer than the cfg needs, or does not fit it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"darknet weights file {str(path)!r} does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 16:
        raise ValueError(f"{path}: {data.size} bytes, too short for a darknet weights header (16 or 20 bytes)")
    major, minor, revision = (int(v) for v in data[:12].view("<i4"))
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    header_bytes = 20 if wide else 16
    if data.size < header_bytes:
        raise ValueError(f"{path}: {data.size} bytes, too short for its {header_bytes}-byte header "
                         f"(version {major}.{minor}.{revision})")
    seen = int(data[12:header_bytes].view("<u8" if wide else "<i4")[0])
    header = {"major": major, "minor": minor, "revision": revision, "seen": seen}
    body = data.size - header_bytes
    expected, _ = weights_size(sections)
    found = body // 4
    if body % 4 or found != expected:
        kind = "short" if found < expected else "long"
        extra = f" and {body % 4} stray bytes" if body % 4 else ""
        raise ValueError(f"{path}: {kind} for {cfg_name}: after the {header_bytes}-byte header (version "
                         f"{major}.{minor}.{revision}) it holds {found} float32 values{extra}, but the cfg's "
                         f"{sum(s.kind == 'convolutional' for s in sections)} convolutional layers need {expected}")
    floats = data[header_bytes:].view("<f4")
    state: dict[str, np.ndarray] = {}
    offset = 0
    for s in sections:
        if s.kind != "convolutional":
            continue
        spec: ConvSpec = s.spec
        names = ["biases", *(["scales", "rolling_mean", "rolling_variance"] if spec.batch_normalize else [])]
        for n in names:
            state[f"conv_{s.index}.{n}"] = floats[offset:offset + spec.filters].astype(np.float32)
            offset += spec.filters
        shape = (spec.filters, spec.in_channels // spec.groups, spec.size, spec.size)
        state[f"conv_{s.index}.weights"] = floats[offset:offset + math.prod(shape)].reshape(shape).astype(np.float32)
        offset += math.prod(shape)
        var = state.get(f"conv_{s.index}.rolling_variance")
        if var is not None and not (np.all(np.isfinite(var)) and np.all(var >= 0)):
            raise ValueError(f"{path}: conv layer {s.index} (cfg line {s.line}) reads negative or non-finite "
                             f"rolling variances: the file does not fit {cfg_name} (another cfg's weights?)")
    return header, state


def _darknet_key(path: tuple[str, ...]) -> str:
    """Flax variable path (collection first) -> `read_darknet_weights` key."""
    collection, module, leaf = path
    index = module.split("_")[1]
    if module.startswith("conv_"):
        return f"conv_{index}.{'weights' if leaf == 'kernel' else 'biases'}"
    return f"conv_{index}." + {"scale": "scales", "bias": "biases", "mean": "rolling_mean",
                               "var": "rolling_variance"}[leaf]


def from_darknet(cfg_path: str | Path, weights_path: str | Path, **kwargs: Any) -> tuple[Darknet, dict[str, Any]]:
    """(Darknet module, variables {'params', 'batch_stats'}) from a darknet cfg and .weights file; `kwargs` go to
    `Darknet` (dtype, param_dtype, ...). Strict: the file must hold exactly the floats the cfg needs."""
    from jaxcv.interop import abstract_variables, strict_load, torch_to_flax

    sections = parse_cfg(cfg_path)
    cfg_name = str(cfg_path) if isinstance(cfg_path, Path) or "\n" not in str(cfg_path) else "<cfg text>"
    module = Darknet(tuple(sections), **kwargs)
    _, state = read_darknet_weights(weights_path, sections, cfg_name)
    m = module.size_multiple()
    net = sections[0].spec
    size = (-(-net.height // m) * m, -(-net.width // m) * m)
    abstract = abstract_variables(module, size, net.channels)
    variables = strict_load(abstract, state, _darknet_key, transform=torch_to_flax, source=str(weights_path),
                            target=cfg_name)
    return module, variables


if "darknet" not in IMPORTERS:
    IMPORTERS.register("darknet", from_darknet)
