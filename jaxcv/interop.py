"""Load torchvision state dicts (as numpy arrays, e.g. from safetensors) into jaxcv's linen models.

Every flax variable is mapped to exactly one torchvision key by renaming module paths
(`layer1_0/downsample_conv` <-> `layer1.0.downsample.0`,
`fpn/inner_blocks_0` <-> `backbone.fpn.inner_blocks.0.0`,
`head/classification_head/conv_0` <-> `...conv.0.0`, `norm_0` <-> `conv.0.1`) and leaf names
(`kernel`/`scale` <-> `weight`, `mean`/`var` <-> `running_mean`/`running_var`). Conv kernels go OIHW -> HWIO,
dense kernels are transposed, everything is cast to the model's param dtype (float16 storage -> float32).
Missing, unexpected or mis-shaped keys raise one ValueError listing all of them; only
`num_batches_tracked` is ignored. No pickle: inputs are plain mappings of numpy arrays.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxcv.models import create_model
from jaxcv.models.backbones import IMPORTERS
from jaxcv.models.resnet import RESNET_CONFIGS

RETINANET_ARCHS = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")
ARCHS = (*RESNET_CONFIGS, *RETINANET_ARCHS)

# Module-name renames, flax -> torch, applied to each path component (first match wins).
_MODULE_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(layer\d+)_(\d+)$"), r"\1.\2"),
    (re.compile(r"^downsample_conv$"), "downsample.0"),
    (re.compile(r"^downsample_bn$"), "downsample.1"),
    (re.compile(r"^(inner_blocks|layer_blocks)_(\d+)$"), r"\1.\2.0"),
    (re.compile(r"^(p6|p7)$"), r"extra_blocks.\1"),
    (re.compile(r"^conv_(\d+)$"), r"conv.\1.0"),
    (re.compile(r"^norm_(\d+)$"), r"conv.\1.1"),
]
# Top-level renames for the detection model (torchvision wraps body and FPN in `backbone`).
_RETINANET_TOP = {"backbone": "backbone.body", "fpn": "backbone.fpn", "head": "head"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a .safetensors file as {torch key: numpy array} (no pickle, no torch needed)."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def _rename_module(name: str) -> str:
    for pattern, repl in _MODULE_RULES:
        if pattern.match(name):
            return pattern.sub(repl, name)
    return name


def torch_key(path: tuple[str, ...], detection: bool) -> str:
    """Flax variable path (without the collection) -> torchvision state-dict key."""
    *modules, leaf = path
    if leaf not in _LEAF:
        raise ValueError(f"no torchvision name for flax variable {'/'.join(path)}")
    parts = [_rename_module(m) for m in modules]
    if detection and parts:
        parts[0] = _RETINANET_TOP.get(modules[0], parts[0])
    return ".".join([*parts, _LEAF[leaf]])


def _to_flax(a: np.ndarray) -> np.ndarray:
    """torch layout -> flax layout: conv OIHW -> HWIO, linear [out, in] -> [in, out]."""
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if a.ndim == 2:
        return a.T
    return a


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Inverse of `_to_flax` on shapes, for error messages."""
    if len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if len(flax_shape) == 2:
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def model_config(
    arch: str, state_dict: Mapping[str, np.ndarray], **kwargs: Any
) -> tuple[str, dict[str, Any]]:
    """(jaxcv model name, constructor kwargs) for a torchvision arch, read from the state dict's shapes.

    ResNets: `num_classes` from `fc.weight` (0, a headless backbone, when there are no fc keys).
    RetinaNet: `num_anchors` from `bbox_reg`, `num_classes` from `cls_logits` / num_anchors, `fpn_channels`
    from the laterals, `head_norm` from GroupNorm keys, `p6_from` from P6's input channels (torchvision's
    LastLevelP6P7 uses P5 iff in_channels == out_channels). Explicit kwargs override the inferred values.
    """
    if arch in RESNET_CONFIGS:
        fc = state_dict.get("fc.weight")
        inferred: dict[str, Any] = {"num_classes": int(fc.shape[0]) if fc is not None else 0}
        return arch, {**inferred, **kwargs}
    if arch in RETINANET_ARCHS:
        inferred = {"backbone": "resnet50"}
        reg = state_dict.get("head.regression_head.bbox_reg.weight")
        cls = state_dict.get("head.classification_head.cls_logits.weight")
        num_anchors = kwargs.get("num_anchors", int(reg.shape[0]) // 4 if reg is not None else 9)
        inferred["num_anchors"] = num_anchors
        if cls is not None:
            if cls.shape[0] % num_anchors:
                raise ValueError(
                    f"cls_logits has {cls.shape[0]} outputs, not a multiple of {num_anchors} anchors"
                )
            inferred["num_classes"] = int(cls.shape[0]) // num_anchors
        lateral = state_dict.get("backbone.fpn.inner_blocks.0.0.weight")
        fpn_channels = int(lateral.shape[0]) if lateral is not None else 256
        inferred["fpn_channels"] = fpn_channels
        p6 = state_dict.get("backbone.fpn.extra_blocks.p6.weight")
        if p6 is not None:
            inferred["p6_from"] = "p5" if p6.shape[1] == fpn_channels else "c5"
        inferred["head_norm"] = "head.classification_head.conv.0.1.weight" in state_dict
        return "retinanet", {**inferred, **kwargs}
    raise ValueError(f"unknown torchvision arch {arch!r}; supported: {', '.join(ARCHS)}")


def abstract_variables(module: nn.Module, image_size: int | tuple[int, int] = 64, channels: int = 3) -> dict[str, Any]:
    """Shapes/dtypes of the module's variables via `jax.eval_shape` (no compute, no memory)."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = jax.ShapeDtypeStruct((1, h, w, channels), jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def torch_to_flax(a: np.ndarray) -> np.ndarray:
    """torch layout -> flax layout: conv [O, I/groups, kh, kw] -> HWIO, linear [out, in] -> [in, out]."""
    return _to_flax(a)


def strict_load(
    abstract: Mapping[str, Any],
    state_dict: Mapping[str, np.ndarray],
    key_of: Callable[[tuple[str, ...]], str],
    transform: Callable[[np.ndarray], np.ndarray] = torch_to_flax,
    ignore: Callable[[str], bool] = lambda key: key.endswith("num_batches_tracked"),
    source: str = "state dict",
    target: str = "model",
    reference_shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Maps a reference state dict onto a module's variables, strictly.

    `abstract`: the module's variables (e.g. `abstract_variables(module)`); `key_of(path)` gives the reference
    key of a flax variable path (collection first, e.g. ("params", "conv1", "kernel")); `transform` turns the
    reference array into flax layout. Every variable must find its key with the right shape after `transform`,
    and every reference key (but those `ignore` accepts) must be used: otherwise one ValueError lists all
    missing, unexpected and mis-shaped keys, with shapes in the reference's layout (`reference_shape` of a
    flax shape; torch's by default). Values are cast to the variables' dtypes.
    """
    ref_shape = reference_shape or (_torch_shape if transform is torch_to_flax else tuple)
    flat = flatten_dict(dict(abstract))
    out: dict[tuple[str, ...], Any] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for path, spec in flat.items():
        key = key_of(path)
        if key not in state_dict:
            missing.append(f"{key} {ref_shape(tuple(spec.shape))}")
            continue
        used.add(key)
        value = transform(np.asarray(state_dict[key]))
        if value.shape != tuple(spec.shape):
            mismatched.append(f"{key}: got {tuple(np.shape(state_dict[key]))}, expected {ref_shape(tuple(spec.shape))}")
            continue
        out[path] = jnp.asarray(value.astype(spec.dtype))
    unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
    problems = [
        f"{title} ({len(keys)}): {', '.join(sorted(keys))}"
        for title, keys in (
            ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)
        )
        if keys
    ]
    if problems:
        raise ValueError(f"{source} does not match {target}: " + "; ".join(problems))
    return unflatten_dict(out)


def convert_state_dict(
    module: nn.Module, state_dict: Mapping[str, np.ndarray], detection: bool = False
) -> dict[str, Any]:
    """torchvision state dict -> flax `{'params', 'batch_stats'}` for `module`; strict (see module doc)."""
    return strict_load(
        abstract_variables(module), state_dict, lambda path: torch_key(path[1:], detection),
        target=type(module).__name__,
    )


def import_weights(key: str, *args: Any, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Runs the weights importer registered as `key` ("torchvision:vgg16_bn", "timm:vit_tiny_patch16_224",
    "keras:mini_xception", "darknet", "ultralytics:yolov8n", "segment_anything"; `IMPORTERS.names()` lists
    them): `(module, variables)`, strict about every key and shape."""
    import jaxcv.models  # noqa: F401  (every model family registers its importers on import)

    return IMPORTERS.get(key)(*args, **kwargs)


def from_torchvision(
    arch: str, state_dict: Mapping[str, np.ndarray], **kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Builds the jaxcv model for a torchvision arch and its variables `{'params', 'batch_stats'}`.

    `arch`: resnet18/34/50/101, retinanet_resnet50_fpn(_v2), or any other registered "torchvision:ARCH"
    importer (mobilenet_v3_small/large, vgg11..vgg19(_bn), alexnet). `kwargs` go to the model (e.g. `dtype`)
    and override inferred settings (see `model_config`). The class count is read from the weights; without
    classifier keys the model is headless (a backbone).
    """
    if arch not in ARCHS:
        return import_weights(f"torchvision:{arch}", state_dict, **kwargs)
    name, model_kwargs = model_config(arch, state_dict, **kwargs)
    module = create_model(name, **model_kwargs)
    return module, convert_state_dict(module, state_dict, detection=arch in RETINANET_ARCHS)


for _arch in ARCHS:
    if f"torchvision:{_arch}" not in IMPORTERS:
        IMPORTERS.register(f"torchvision:{_arch}", functools.partial(from_torchvision, _arch))


def from_timm(arch: str, state_dict: Mapping[str, np.ndarray], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A timm model (`vit_tiny_patch16_224`, `vit_small_patch16_224`, ...) from its state dict."""
    return import_weights(f"timm:{arch}", state_dict, **kwargs)


def from_keras(arch: str, weights: Mapping[str, np.ndarray], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A Keras model (`mini_xception`) from its weights keyed `layer/variable` (Keras 3 variable paths)."""
    return import_weights(f"keras:{arch}", weights, **kwargs)


def from_darknet(cfg_path: str | Path, weights_path: str | Path, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A darknet network from its `.cfg` and `.weights` files (YOLOv3, YOLOv3-tiny, ...)."""
    return import_weights("darknet", cfg_path, weights_path, **kwargs)


def from_ultralytics(arch: str, state_dict: Mapping[str, np.ndarray], num_classes: int | None = None,
                     **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """An ultralytics detector (`yolov8n`/`s`/`m`/`l`/`x`) from its state dict (saved as safetensors)."""
    return import_weights(f"ultralytics:{arch}", state_dict, num_classes=num_classes, **kwargs)


def from_segment_anything(state_dict: Mapping[str, np.ndarray], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Segment Anything from `segment_anything`'s state dict; kwargs as its `_build_sam` (default ViT-B)."""
    return import_weights("segment_anything", state_dict, **kwargs)
