"""Looking inside a trained model: stage activations, filter patterns by gradient ascent, Grad-CAM.

    python -m jaxcv.explain --workdir=DIR --image=FILE --what=activations|filters|gradcam \
        [--layer=NAME] [--channel=N] [--class_index=N] [--out=FILE.png]

The config comes from `DIR/config.json`, the weights from `DIR`'s latest checkpoint (restored through
the Trainer, like `--mode=eval`). Without `--image`, the first image of the validation split is used.

Layer names (`--layer`, the `layer` arguments): `path/to/module` is that submodule's `__call__`
output (e.g. `block2_conv1` of small_cnn, `layer4_1` of a ResNet, `backbone/layer3_0` of a U-Net);
`path:key` selects an entry of a dict/list output (`backbone:C4`); a bare key of the model's own
output dict also works (`C5`, `stem`, `features`, `logits`). `list_layers` lists them all. Images
are what the model consumes: float32 [H, W, 3] standardized with the ImageNet mean/std
(`jaxcv.data.base.normalize`), as the eval transform produces them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.data.base import IMAGENET_MEAN, IMAGENET_STD

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
    small_cnn: its last conv; RetinaNet and ResNet U-Nets: `backbone:C5`."""
    outputs = jax.eval_shape(lambda v, x: apply_fn(v, x, train=False), variables, _as_batch(image))
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


# ---- stage activations ------------------------------------------------------------------------


def stage_activations(apply_fn: ApplyFn, variables: Any, image: Any) -> dict[str, np.ndarray]:
    """Feature maps {name: [h, w, C]} of one image, coarse to fine in the order the model makes them.

    The spatial stages the model returns (ResNet: `stem`, `C2`..`C5`; RetinaNet: `features/0..4`,
    i.e. P3..P7); a model that returns none (small_cnn returns only pooled `features`, U-Nets only
    `logits`) gets the spatial outputs of its direct submodules instead, captured with flax
    `capture_intermediates` (small_cnn: its convs' outputs, before the ReLU).
    """
    x = _as_batch(image)[:1]
    outputs, state = jax.jit(
        lambda v, x: apply_fn(v, x, train=False, mutable=["intermediates"],
                              capture_intermediates=lambda m, method: method == "__call__" and len(m.path) == 1)
    )(variables, x)
    stages = {"/".join(k): np.asarray(a[0], np.float32) for k, a in _arrays(outputs)
              if a.ndim == 4 and k[0] not in PREDICTION_KEYS}
    if stages:
        return stages
    out = {}
    for n, shape in list_layers(apply_fn, variables, x):
        path, keys = parse_layer(n)
        if len(shape) == 4 and len(path) == 1:
            out[n] = np.asarray(_select(state["intermediates"][path[0]]["__call__"][0], keys)[0], np.float32)
    return out


# ---- filter patterns --------------------------------------------------------------------------


def _channel_mean(a: jax.Array, channel: jax.Array) -> jax.Array:
    """Mean activation of `channel` (last axis) over every other axis of a [1, ..., C] value."""
    return jnp.take(a.astype(jnp.float32), channel, axis=-1).mean()


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _ascend(apply_fn, layer, variables, channels, image_size, steps, lr, key) -> jax.Array:
    lo = jnp.asarray((0.0 - IMAGENET_MEAN) / IMAGENET_STD)
    hi = jnp.asarray((1.0 - IMAGENET_MEAN) / IMAGENET_STD)
    # Chollet's start: a grey image with a little uniform noise, 0.5 +- 0.125 in pixel space.
    noise = jax.random.uniform(key, (image_size, image_size, 3), minval=-0.125, maxval=0.125)
    x0 = (0.5 + noise - IMAGENET_MEAN) / IMAGENET_STD

    def one(channel):
        def objective(x):
            return _channel_mean(_capture(apply_fn, variables, x[None], layer)[1], channel)

        def step(_, x):
            g = jax.grad(objective)(x)
            g = g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-8)  # RMS-normalized ascent step
            return jnp.clip(x + lr * g, lo, hi)

        return jax.lax.fori_loop(0, steps, step, x0)

    return jax.vmap(one)(channels)


def filter_pattern(
    apply_fn: ApplyFn,
    variables: Any,
    layer: str,
    channel: int,
    image_size: int,
    steps: int = 100,
    lr: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """The input that maximizes the mean activation of `channel` of `layer`: float32 [S, S, 3] in
    model-input space (view it with `pattern_to_uint8`).

    Gradient ascent on the input from a grey image with a little noise, each step the gradient
    divided by its RMS (Chollet, "How convolutional neural networks see the world", 2016, and
    "Deep Learning with Python", ch. 9) and the image kept inside the valid pixel range [0, 1]. The
    loop is one `jax.lax.fori_loop` under jit. `steps=0` returns the starting image.
    """
    return filter_patterns(apply_fn, variables, layer, [channel], image_size, steps, lr, seed)[0]


def filter_patterns(
    apply_fn: ApplyFn,
    variables: Any,
    layer: str,
    channels: Sequence[int],
    image_size: int,
    steps: int = 100,
    lr: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """`filter_pattern` for several channels at once (vmapped): [N, S, S, 3]."""
    probe = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    resolved = resolve_layer(apply_fn, variables, probe, layer)
    num = dict(list_layers(apply_fn, variables, probe))[format_layer(resolved)][-1]
    bad = [c for c in channels if not 0 <= int(c) < num]
    if bad:
        raise ValueError(f"channels {bad} out of range: layer {layer!r} has {num} channels")
    out = _ascend(apply_fn, resolved, variables, jnp.asarray(channels, jnp.int32), int(image_size),
                  jnp.int32(steps), jnp.float32(lr), jax.random.key(seed))
    return np.asarray(out)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _activation(apply_fn, layer, variables, x, channel) -> jax.Array:
    return _channel_mean(_capture(apply_fn, variables, x, layer)[1], channel)


def layer_activation(apply_fn: ApplyFn, variables: Any, image: Any, layer: str, channel: int) -> float:
    """Mean activation of `channel` of `layer` for one image (what `filter_pattern` maximizes)."""
    x = _as_batch(image)
    resolved = resolve_layer(apply_fn, variables, x, layer)
    return float(_activation(apply_fn, resolved, variables, x, jnp.int32(channel)))


def pattern_to_uint8(pattern: np.ndarray) -> np.ndarray:
    """A filter pattern (model-input space) -> uint8 [S, S, 3] with Chollet's contrast stretch: centre,
    scale to std 0.15 around 0.5, clip."""
    x = np.asarray(pattern, np.float32) * IMAGENET_STD + IMAGENET_MEAN
    x = (x - x.mean()) / (x.std() + 1e-5) * 0.15 + 0.5
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


# ---- Grad-CAM ---------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grad_cam(apply_fn, layer, variables, x, class_index) -> tuple[jax.Array, jax.Array, jax.Array]:
    outputs, a = _capture(apply_fn, variables, x, layer)
    scores = target_scores(outputs)[0]
    c = jnp.where(class_index < 0, jnp.argmax(scores), class_index)
    grads = jax.grad(lambda v: target_scores(_apply_replacing(apply_fn, variables, x, layer, v))[0][c])(a)
    weights = grads[0].astype(jnp.float32).mean(axis=(0, 1))  # [C]: alpha_k = spatial mean of dy_c/dA_k
    cam = jax.nn.relu(jnp.einsum("hwc,c->hw", a[0].astype(jnp.float32), weights))
    cam = jax.image.resize(cam, x.shape[1:3], method="bilinear")
    peak = cam.max()
    cam = jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)
    return jnp.clip(cam, 0.0, 1.0), c, scores


def grad_cam_details(
    apply_fn: ApplyFn, variables: Any, image: Any, layer: str | None = None, class_index: int | None = None
) -> tuple[np.ndarray, int, np.ndarray]:
    """`grad_cam`, also returning the explained class and the per-class scores [K]."""
    x = _as_batch(image)[:1]
    layer = layer or default_layer(apply_fn, variables, x)
    resolved = _module_layer(apply_fn, variables, x, resolve_layer(apply_fn, variables, x, layer))
    cls = -1 if class_index is None else int(class_index)
    cam, c, scores = _grad_cam(apply_fn, resolved, variables, x, jnp.int32(cls))
    if not 0 <= int(c) < scores.shape[-1]:
        raise ValueError(f"class_index={class_index} out of range: the model has {scores.shape[-1]} classes")
    return np.asarray(cam), int(c), np.asarray(scores)


def grad_cam(
    apply_fn: ApplyFn, variables: Any, image: Any, layer: str | None = None, class_index: int | None = None
) -> np.ndarray:
    """Grad-CAM heatmap [H, W] in [0, 1] of `class_index` (default: the top-scoring class) for one
    image [H, W, 3] (Selvaraju et al. 2017).

    With A = `layer`'s maps [h, w, C] and y_c the class score (`target_scores`): weights
    alpha_k = mean over (i, j) of dy_c/dA_ijk, map = ReLU(sum_k alpha_k A_k), bilinearly upsampled to
    [H, W] and divided by its maximum (all zeros if nothing speaks for the class). `layer` defaults
    to `default_layer` (the last spatial feature map).
    """
    return grad_cam_details(apply_fn, variables, image, layer, class_index)[0]


# ---- command line -----------------------------------------------------------------------------


def run_config(workdir: str | Path) -> Any:
    """The config a run was trained with, from `workdir/config.json`."""
    import ml_collections

    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --workdir must be a training run's directory")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str | Path) -> tuple[Any, Any, Any, Any]:
    """(config, trainer, apply_fn, variables) of a workdir: the config from `config.json`, the state
    from its latest checkpoint."""
    from jaxcv.train import Trainer

    config = run_config(workdir)
    trainer = Trainer(config, workdir)
    state = restore_state(trainer, workdir)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return config, trainer, state.apply_fn, variables


def restore_state(trainer: Any, workdir: str | Path) -> Any:
    """The trainer's state restored from `workdir`'s latest checkpoint; an error (never a silently
    fresh model) when there is none or it does not fit the config's model."""
    from jaxcv import checkpoint as ckpt

    checkpoints = ckpt.Checkpoints(workdir)
    try:
        if not checkpoints.latest.all_steps():
            raise FileNotFoundError(f"{workdir} has no checkpoint under checkpoints/")
        state, how = trainer.initial_state(checkpoints)
    finally:
        checkpoints.close()
    if not how.startswith("resumed"):
        raise ValueError(f"no checkpoint of {workdir} could be restored into this config's model ({how}); "
                         "does the config match the run's config.json?")
    return state


def model_input(trainer: Any, image_file: str | None) -> tuple[np.ndarray, str]:
    """One image as the model sees it (eval transform): from a file, else the first validation image."""
    from jaxcv.data.base import load_image

    task = trainer.task
    if image_file:
        image = load_image(image_file)
        title = Path(image_file).name
    else:
        image = task.source("validation")[0]["image"]
        title = "validation[0]"
    h, w = image.shape[:2]
    example = {"image": image, "label": 0, "labels": np.zeros((0,), np.int32), "image_id": 0,
               "boxes": np.zeros((0, 4), np.float32), "mask": np.zeros((h, w), np.uint8)}
    return np.asarray(task.make_transform(train=False)(example, np.random.default_rng(0))["image"]), title


def explain(
    workdir: str | Path,
    what: str,
    out: str | Path | None = None,
    image_file: str | None = None,
    layer: str | None = None,
    channel: int | None = None,
    class_index: int | None = None,
    num: int = 16,
    steps: int = 100,
    lr: float = 0.1,
) -> Path:
    """What the command line does; returns the PNG's path (default `workdir/explain/<what>.png`)."""
    from jaxcv import viz

    config, trainer, apply_fn, variables = load_run(workdir)
    out = Path(out) if out else Path(workdir) / "explain" / f"{what}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    x, title = model_input(trainer, image_file)
    if what == "activations":
        stages = stage_activations(apply_fn, variables, x)
        if layer:
            names = {layer, ":" + layer}
            stages = {k: v for k, v in stages.items() if k in names} or {
                layer: np.asarray(_capture(apply_fn, variables, _as_batch(x),
                                           resolve_layer(apply_fn, variables, x, layer))[1][0])}
        picture = viz.activations_figure(x, stages, title=title)
    elif what == "filters":
        layer = layer or default_layer(apply_fn, variables, x)
        num_channels = dict(list_layers(apply_fn, variables, x))[format_layer(resolve_layer(
            apply_fn, variables, x, layer))][-1]
        channels = [channel] if channel is not None else list(range(min(num, num_channels)))
        patterns = filter_patterns(apply_fn, variables, layer, channels, x.shape[0], steps, lr)
        tiles = [viz.caption(viz.upscale(pattern_to_uint8(p), 96), f"{layer} #{c}")
                 for p, c in zip(patterns, channels, strict=True)]
        picture = viz.grid(tiles, cols=min(8, len(tiles)))
    elif what == "gradcam":
        layer = layer or default_layer(apply_fn, variables, x)
        cam, c, scores = grad_cam_details(apply_fn, variables, x, layer, class_index)
        names = _class_names(trainer)
        name = names[c] if c < len(names) else str(c)
        picture = viz.grid([
            viz.caption(viz.upscale(viz.to_uint8(x), 192), f"{title}\n "),
            viz.caption(viz.heatmap_overlay(viz.upscale(viz.to_uint8(x), 192), cam),
                        f"Grad-CAM: {name} ({_score_text(config, scores, c)})\nlayer {layer}"),
        ], cols=2)
    else:
        raise ValueError(f"--what={what!r}; expected activations, filters or gradcam")
    picture.save(out)
    return out


def _score_text(config: Any, scores: np.ndarray, c: int) -> str:
    """The explained class's score as a probability where the task defines one."""
    if config.task == "classification" and not config.get("multilabel", False):
        p = np.exp(scores - scores.max())
        return f"p={p[c] / p.sum():.2f}"
    if config.task in ("detection", "classification"):  # sigmoid scores (RetinaNet: best anchor)
        return f"p={1 / (1 + np.exp(-scores[c])):.2f}"
    return f"score={scores[c]:.2f}"


def _class_names(trainer: Any) -> list[str]:
    try:
        return list(trainer.task.source("train").class_names)
    except Exception:  # noqa: BLE001 - names are only captions
        return []


def _main(argv: list[str]) -> None:
    import sys

    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not any(a.startswith(("-v", "--v", "--verbosity")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)  # orbax INFO lines would drown the output
    from jaxcv.runtime import use_compilation_cache

    use_compilation_cache()
    f = flags.FLAGS
    path = explain(f.workdir, f.what, f.out, f.image, f.layer, None if f.channel < 0 else f.channel,
                   None if f.class_index < 0 else f.class_index, f.num, f.steps, f.lr)
    print(f"[jaxcv] wrote {path}", flush=True)


def _define_flags() -> None:
    """Flags are defined only when run as a program, so importing this module never clashes with
    `jaxcv.main`'s or `jaxcv.show`'s flags."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "A training run's directory (config.json + checkpoints).")
    flags.DEFINE_enum("what", "gradcam", ["activations", "filters", "gradcam"], "What to show.")
    flags.DEFINE_string("image", None, "Image file (default: the first validation image).")
    flags.DEFINE_string("layer", None, "Layer name (default: the last spatial feature map).")
    flags.DEFINE_integer("channel", -1, "filters: one channel (default: a grid of the first --num).")
    flags.DEFINE_integer("class_index", -1, "gradcam: the class to explain (default: the predicted one).")
    flags.DEFINE_string("out", None, "Output PNG (default: WORKDIR/explain/WHAT.png).")
    flags.DEFINE_integer("num", 16, "filters: how many channels in the grid.")
    flags.DEFINE_integer("steps", 100, "filters: gradient ascent steps.")
    flags.DEFINE_float("lr", 0.1, "filters: ascent step (RMS-normalized gradient, model-input units).")
    flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app

    _define_flags()
    app.run(_main)
