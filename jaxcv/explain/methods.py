"""The explanations: stage activations, filter patterns by gradient ascent, Grad-CAM."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.data.base import IMAGENET_MEAN, IMAGENET_STD
from jaxcv.explain.layers import (
    PREDICTION_KEYS,
    ApplyFn,
    _apply_replacing,
    _arrays,
    _as_batch,
    _capture,
    _module_layer,
    _select,
    default_layer,
    format_layer,
    list_layers,
    parse_layer,
    resolve_layer,
    target_scores,
)

# ---- stage activations ------------------------------------------------------------------------


def stage_activations(apply_fn: ApplyFn, variables: Any, image: Any) -> dict[str, np.ndarray]:
    """Feature maps {name: [h, w, C]} of one image, coarse to fine in the order the model makes them.

    The spatial stages the model returns (a backbone's levels, `jaxcv.models.backbones`: ResNet `stem`,
    `C2`..`C5`; RetinaNet: `features/0..4`, i.e. P3..P7); a model that returns none (U-Nets return only
    `logits`) gets the spatial outputs of its direct submodules instead, captured with flax
    `capture_intermediates`.
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


def token_grid(a: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
    """A transformer block's tokens [B, T, D] -> the patch grid [B, h, w, D] (leading class/extra tokens
    dropped, h / w = the image's aspect ratio), as Grad-CAM for ViTs is computed (Chefer et al. 2021 and
    pytorch-grad-cam's `reshape_transform`); maps [B, h, w, C] pass through unchanged."""
    if a.ndim != 3:
        return a
    t = a.shape[1]
    ratio = image_hw[1] / image_hw[0]
    for extra in range(0, 9):
        n = t - extra
        h = int(round((n / ratio) ** 0.5)) if n > 0 else 0
        if h > 0 and n % h == 0 and abs(n // h / h - ratio) < 1e-6 * max(1, ratio) + 1e-9:
            return a[:, extra:].reshape(a.shape[0], h, n // h, a.shape[2])
    raise ValueError(f"cannot read {t} tokens as a patch grid of a {image_hw[0]}x{image_hw[1]} image")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grad_cam(apply_fn, layer, variables, x, class_index) -> tuple[jax.Array, jax.Array, jax.Array]:
    outputs, a = _capture(apply_fn, variables, x, layer)
    scores = target_scores(outputs)[0]
    c = jnp.where(class_index < 0, jnp.argmax(scores), class_index)
    grads = jax.grad(lambda v: target_scores(_apply_replacing(apply_fn, variables, x, layer, v))[0][c])(a)
    a, grads = token_grid(a, x.shape[1:3]), token_grid(grads, x.shape[1:3])
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
