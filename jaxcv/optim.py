"""Optimizers and learning-rate schedules from the config (optax).

`config.optimizer`: name ("sgd" | "adamw" | "adam"), learning_rate (peak), momentum, nesterov,
b1/b2, weight_decay (decoupled for adamw, L2-style added to gradients for sgd as torch does),
clip_grad_norm (global norm; 0/None = off).
`config.schedule`: name ("constant" | "warmup_cosine" | "step" | "onecycle"), warmup_steps,
warmup_init (fraction of the peak at step 0), boundaries + decay_factor (step decay, e.g. the
RetinaNet 1x recipe: x0.1 at 60k and 80k), end_factor (cosine floor).
`config.freeze`: parameter-path prefixes that get no update (e.g. ["backbone"]).
`config.lr_multipliers`: {prefix: factor}, e.g. {"backbone": 0.1} for fine-tuning with a lower
backbone rate. The longest matching prefix wins.

Weight decay by parameter role (`decay_mask`): only weights that multiply activations decay, i.e. conv
and dense kernels and embedding tables; norm scales and offsets, biases, position embeddings and class /
mask tokens do not (Goyal et al. 2017 and detectron2 for norms and biases; timm's `no_weight_decay`
for `pos_embed` and `cls_token`, BEiT / SAM for relative-position tables), whatever their rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "adamw", "adam")
# Leaf names of the parameters that decay: linen's Conv/Dense `kernel` and Embed `embedding`.
DECAYED = frozenset({"kernel", "embedding"})
SCHEDULES = ("constant", "warmup_cosine", "step", "onecycle")


def create_schedule(cfg: ml_collections.ConfigDict, peak: float, total_steps: int) -> optax.Schedule:
    """A learning-rate schedule (a function of the step)."""
    name = cfg.name
    warmup = int(cfg.warmup_steps)
    init = peak * float(cfg.warmup_init)
    if name == "constant":
        main = optax.constant_schedule(peak)
    elif name == "warmup_cosine":
        main = optax.cosine_decay_schedule(
            peak, max(1, total_steps - warmup), alpha=float(cfg.end_factor)
        )
    elif name == "step":
        factor = float(cfg.decay_factor)
        bounds = {int(b) - warmup: factor for b in cfg.boundaries if int(b) > warmup}
        main = optax.piecewise_constant_schedule(peak, bounds)
    elif name == "onecycle":
        return optax.cosine_onecycle_schedule(
            total_steps,
            peak,
            pct_start=float(cfg.pct_start),
            div_factor=float(cfg.div_factor),
            final_div_factor=float(cfg.final_div_factor),
        )
    else:
        raise ValueError(f"unknown schedule.name {name!r}; known: {', '.join(SCHEDULES)}")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(init, peak, warmup), main], [warmup])


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _longest_prefix(path: str, prefixes: list[str]) -> str | None:
    hits = [p for p in prefixes if path == p or path.startswith(p.rstrip("/") + "/")]
    return max(hits, key=len) if hits else None


def param_labels(params: Any, freeze: list[str], multipliers: Mapping[str, float]) -> Any:
    """Labels each parameter 'frozen', 'mult:<prefix>' or 'default' by its path."""

    def label(path: tuple[Any, ...], _: Any) -> str:
        p = _path_str(path)
        if _longest_prefix(p, list(freeze)):
            return "frozen"
        m = _longest_prefix(p, list(multipliers))
        return f"mult:{m}" if m else "default"

    return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params: Any) -> Any:
    """True for each parameter that weight decay applies to (see the module docstring): by its name, so a
    ViT's 2-D `pos_embed` or a `cls_token` is excluded although it has more than one dimension."""

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        return str(getattr(path[-1], "key", path[-1])) in DECAYED

    return jax.tree_util.tree_map_with_path(decays, params)


def _base_optimizer(cfg: ml_collections.ConfigDict, lr: optax.Schedule, mask: Any):
    name = cfg.name
    wd = float(cfg.weight_decay)
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(wd, mask=mask) if wd else optax.identity(),
            optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        )
    if name in ("adamw", "adam"):
        return optax.adamw(
            lr,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=wd if name == "adamw" else 0.0,
            mask=mask,
        )
    raise ValueError(f"unknown optimizer.name {name!r}; known: {', '.join(OPTIMIZERS)}")


def create_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
    """The optimizer for `params`, with schedule, decay mask, clipping, freezing and multipliers."""
    ocfg = config.optimizer
    schedule = create_schedule(config.schedule, float(ocfg.learning_rate), int(config.num_train_steps))
    mask = decay_mask(params)
    multipliers = dict(config.lr_multipliers or {})
    freeze = list(config.freeze or ())
    labels = param_labels(params, freeze, multipliers)
    used = set(jax.tree_util.tree_leaves(labels))
    for prefix in freeze + list(multipliers):
        if not any(lab in (f"mult:{prefix}", "frozen") for lab in used):
            raise ValueError(f"freeze/lr_multipliers prefix {prefix!r} matches no parameter path")
    transforms: dict[str, optax.GradientTransformation] = {
        "frozen": optax.set_to_zero(),
        "default": _base_optimizer(ocfg, schedule, mask),
    }
    for prefix, factor in multipliers.items():
        transforms[f"mult:{prefix}"] = _base_optimizer(
            ocfg, lambda step, f=float(factor): f * schedule(step), mask
        )
    clip = float(ocfg.clip_grad_norm or 0.0)
    return optax.chain(
        optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(),
        optax.multi_transform(transforms, labels),
    )
