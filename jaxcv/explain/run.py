"""A training run explained: its config and checkpoint loaded, one image prepared, the picture drawn (what
`python -m jaxcv.explain` does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxcv.explain.layers import _as_batch, _capture, default_layer, format_layer, list_layers, resolve_layer
from jaxcv.explain.methods import filter_patterns, grad_cam_details, pattern_to_uint8, stage_activations


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
    variables = state.eval_variables()
    return config, trainer, state.apply_fn, variables


def restore_state(trainer: Any, workdir: str | Path) -> Any:
    """The trainer's state restored from `workdir`'s latest checkpoint; an error (never a silently
    fresh model) when there is none or it does not fit the config's model."""
    from jaxcv import checkpoint as ckpt

    checkpoints = ckpt.Checkpoints(workdir)
    try:
        if not checkpoints.latest.all_steps():
            raise FileNotFoundError(f"{workdir} has no checkpoint under checkpoints/")
        start = trainer.initial_state(checkpoints)
    finally:
        checkpoints.close()
    if start.origin != "checkpoint":
        raise ValueError(f"no checkpoint of {workdir} could be restored into this config's model "
                         f"({start.detail}); "
                         "does the config match the run's config.json?")
    return start.state


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
    if config.task == "classification" and not config.multilabel:
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
