"""Layer names and tracing: which submodule output a name means, capturing it, replacing it (for
gradients with respect to it), and the scores an explanation targets."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

ApplyFn = Callable[..., Any]
Layer = tuple[tuple[str, ...], tuple[str, ...]]  # (module path, keys into its output)
PREDICTION_KEYS = ("logits", "cls_logits", "bbox_regression")


# ---- layers -----------------------------------------------------------------------------------


def parse_layer(layer: str) -> Layer:
    """`"a/b:k/0"` -> (("a", "b"), ("k", "0")): module path and keys into its output."""
    path, _, key = layer.partition(":")
    return tuple(p for p in path.split("/") if p), tuple(k for k in key.split("/") if k)


def format_layer(layer: Layer) -> str:
    path, keys = layer
    return "/".join(path) + (":" + "/".join(keys) if keys else "")


def _select(out: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        out = out[int(k)] if isinstance(out, (list, tuple)) else out[k]
    return out


def _replace(out: Any, keys: Sequence[str], value: Any) -> Any:
    """A copy of the (nested dict/list) `out` with the entry at `keys` replaced by `value`."""
    if not keys:
        return value
    k, rest = keys[0], keys[1:]
    if isinstance(out, (list, tuple)):
        items = list(out)
        items[int(k)] = _replace(items[int(k)], rest, value)
        return type(out)(items) if isinstance(out, tuple) else items
    new = dict(out)
    new[k] = _replace(out[k], rest, value)
    return new


def _arrays(out: Any, keys: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(keys, leaf) of every array in a nested dict/list/tuple output, in order."""
    if isinstance(out, dict):
        return [item for k, v in out.items() for item in _arrays(v, keys + (str(k),))]
    if isinstance(out, (list, tuple)):
        return [item for i, v in enumerate(out) for item in _arrays(v, keys + (str(i),))]
    return [(keys, out)] if hasattr(out, "shape") else []


def _as_batch(image: Any) -> jax.Array:
    image = jnp.asarray(image, jnp.float32)
    return image[None] if image.ndim == 3 else image


class _Trace(NamedTuple):
    layers: list[tuple[str, tuple[int, ...]]]  # (name, shape) in the order the calls finish
    producers: dict[str, str]  # root output entry (":C5") -> the submodule layer that computed it


_TRACES: dict[tuple[Any, ...], _Trace] = {}


def _trace(apply_fn: ApplyFn, variables: Any, image: Any) -> _Trace:
    """One abstract (`jax.eval_shape`) pass recording every submodule output; remembered per model and
    input shape. A root output entry is linked to the submodule output that is the same traced value."""
    x = _as_batch(image)[:1]
    cache_key = (apply_fn, x.shape, jax.tree_util.tree_structure(variables))
    if cache_key in _TRACES:
        return _TRACES[cache_key]
    found: list[tuple[str, tuple[int, ...], Any]] = []
    producers: dict[str, str] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            for keys, leaf in _arrays(out):
                found.append((format_layer((tuple(context.module.path), keys)), tuple(leaf.shape), leaf))
        return out

    def run(v, x):
        with nn.intercept_methods(record):
            out = apply_fn(v, x, train=False)
        for keys, leaf in _arrays(out):
            same = [n for n, _, value in found if value is leaf and parse_layer(n)[0]]
            if same:
                producers[format_layer(((), keys))] = same[0]
        return out

    jax.eval_shape(run, variables, x)
    seen: set[str] = set()
    layers = [(n, s) for n, s, _ in found if not (n in seen or seen.add(n))]
    _TRACES[cache_key] = _Trace(layers, producers)
    return _TRACES[cache_key]


def list_layers(apply_fn: ApplyFn, variables: Any, image: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Every layer name with its output shape (batch of one), in the order the calls finish.

    Traced abstractly (`jax.eval_shape`), so nothing is computed.
    """
    return list(_trace(apply_fn, variables, image).layers)


def resolve_layer(apply_fn: ApplyFn, variables: Any, image: Any, layer: str) -> Layer:
    """Checks `layer` against the model and turns a bare output key (`C5`) into `:C5`."""
    names = dict(list_layers(apply_fn, variables, image))
    if layer in names:
        return parse_layer(layer)
    if ":" not in layer and ":" + layer in names:
        return parse_layer(":" + layer)
    spatial = [n for n, s in names.items() if len(s) == 4 and n]
    raise KeyError(f"unknown layer {layer!r}; layers with spatial outputs: {', '.join(spatial)}")


def _module_layer(apply_fn: ApplyFn, variables: Any, image: Any, layer: Layer) -> Layer:
    """A layer whose value can be replaced inside the model (needed for gradients w.r.t. it).

    An entry of the model's own output dict (e.g. ResNet's `C5`) is mapped to the submodule whose
    output it is (`C5` is `layer4_1`'s output); `stem` (a max pool, not a module) has none.
    """
    if layer[0]:
        return layer
    producer = _trace(apply_fn, variables, image).producers.get(format_layer(layer))
    if producer is None:
        raise KeyError(
            f"layer {format_layer(layer)!r} is not the output of a submodule, so it cannot be differentiated "
            "against; pass a module path (see jaxcv.explain.list_layers)"
        )
    return parse_layer(producer)


def default_layer(apply_fn: ApplyFn, variables: Any, image: Any) -> str:
    """Where Grad-CAM and filter patterns look by default: the last spatial ([1, h, w, C]) submodule
    output that is not a prediction, preferring the model's `backbone` when it has one (a detection
    head's box branch or a decoder may not feed the explained score). ResNet: `layer4_<last>` (C5);
    small_cnn: its last conv; RetinaNet and ResNet U-Nets: `backbone:C5`; a ViT: the last block's `norm1` (tokens
    [1, 1 + N, D], read as the patch grid by Grad-CAM, pytorch-grad-cam's choice)."""
    outputs = jax.eval_shape(lambda v, x: apply_fn(v, x, train=False), variables, _as_batch(image))
    if isinstance(outputs, dict) and "tokens" in outputs:  # a ViT: the last block's input norm (its patch tokens
        # reach the class token through attention; the last block's own patch outputs do not reach the logits)
        norms = [n for n, _ in list_layers(apply_fn, variables, image) if re.search(r"blocks_\d+/norm1$", n)]
        if norms:
            return norms[-1]
    final_shapes = {tuple(a.shape) for k, a in _arrays(outputs) if k and k[0] in PREDICTION_KEYS}
    spatial = [n for n, s in list_layers(apply_fn, variables, image)
               if len(s) == 4 and parse_layer(n)[0] and s not in final_shapes]
    if not spatial:
        raise ValueError("the model has no submodule with a spatial [1, h, w, C] output")
    backbone = [n for n in spatial if parse_layer(n)[0][0] == "backbone"]
    return (backbone or spatial)[-1]


def _capture(apply_fn: ApplyFn, variables: Any, x: jax.Array, layer: Layer) -> tuple[Any, jax.Array]:
    """Model outputs and the value of `layer` for the batch `x` (differentiable w.r.t. `x`)."""
    path, keys = layer
    outputs, state = apply_fn(
        variables, x, train=False, mutable=["intermediates"],
        capture_intermediates=lambda m, method: method == "__call__" and tuple(m.path) == path,
    )
    node = state["intermediates"]
    for p in path:
        node = node[p]
    return outputs, _select(node["__call__"][0], keys)


def _apply_replacing(apply_fn: ApplyFn, variables: Any, x: jax.Array, layer: Layer, value: jax.Array) -> Any:
    """Model outputs with `layer`'s value forced to `value` (the rest of the model is then a
    function of `value`, which is how gradients w.r.t. an inner activation are taken)."""
    path, keys = layer

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == path:
            return _replace(out, keys, value)
        return out

    with nn.intercept_methods(interceptor):
        return apply_fn(variables, x, train=False)


def target_scores(outputs: dict[str, Any]) -> jax.Array:
    """Per-class scores [B, K] that Grad-CAM explains: classification logits; for segmentation the
    logits averaged over pixels (Seg-Grad-CAM's whole-image region, Vinogradova et al. 2020); for
    RetinaNet the highest class logit over anchors."""
    if "logits" in outputs:
        logits = outputs["logits"].astype(jnp.float32)
        return logits if logits.ndim == 2 else logits.mean(axis=tuple(range(1, logits.ndim - 1)))
    if "cls_logits" in outputs:
        return outputs["cls_logits"].astype(jnp.float32).max(axis=1)
    raise KeyError(f"no 'logits' or 'cls_logits' among the model outputs {sorted(outputs)}")
