"""Galleries: what the model is fed (a training batch after augmentation) and what it predicts.

    python -m jaxcv.show --config=configs/NAME.py[:ARG] [--workdir=DIR] --what=batch|results \
        [--out=FILE.png] [--num=16] [--step=0] [--config.k=v]

`batch`: the training batch of step `--step` exactly as the trainer gets it (the task's source and
train transform through `jaxcv.data.loader.Loader`, same seed), drawn with boxes and class names
(detection, localization), image | mask pairs (segmentation) or class names (classification).
`results`: predictions next to the ground truth on the validation split, from the workdir's latest
checkpoint (restored through the Trainer and run with its jitted `jit_eval_step`); a checkpoint that
does not fit the config is an error, never a silently fresh model. Without `--config`, the
workdir's `config.json` is used. The PNG goes to `--out`, default `WORKDIR/show_<what>.png` (or
`show_<what>.png` without a workdir).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from jaxcv import viz

MIN_TILE = 128  # small images (32 px) are enlarged to at least this many pixels, pixels kept sharp
GOOD, BAD = (0, 130, 0), (200, 0, 0)


def _names(names: Sequence[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


def _enlarged(image: np.ndarray) -> tuple[Image.Image, float]:
    """The image as uint8 PIL, enlarged by an integer factor to at least MIN_TILE px; and the factor."""
    im = Image.fromarray(viz.to_uint8(image))
    factor = max(1, math.ceil(MIN_TILE / max(im.size)))
    return im.resize((im.width * factor, im.height * factor), Image.NEAREST), float(factor)


def _legend(image: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """The image with a strip below listing `entries` (text, colour), wrapped to the image's width."""
    draw = ImageDraw.Draw(image)
    lines: list[list[tuple[int, str, tuple[int, int, int]]]] = [[]]
    x = 2
    for text, c in entries:
        w = int(draw.textlength(text))
        if lines[-1] and x + w > image.width:
            lines.append([])
            x = 2
        lines[-1].append((x, text, c))
        x += w + 6
    out = Image.new("RGB", (image.width, image.height + 12 * len(lines) + 2), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        for x, text, c in line:
            draw.text((x, image.height + 1 + 12 * i), text, fill=c)
    return out


def _mask_tile(image: np.ndarray, mask: np.ndarray, names: Sequence[str], title: str = "") -> Image.Image:
    """A class-id mask [h, w] in solid palette colours (0 = background black, 255 = ignore white), the
    size of the enlarged image, with a legend of the classes present."""
    size = _enlarged(image)[0].size
    tile = viz.indexed_mask_png(np.asarray(mask).astype(np.uint8)).convert("RGB").resize(size, Image.NEAREST)
    present = [int(c) for c in np.unique(mask) if 0 < c < 255]
    entries = ([(title, (0, 0, 0))] if title else []) + [(_names(names, c), viz.color(c - 1)) for c in present]
    return _legend(tile, entries)


def _image_tile(image: np.ndarray, title: str = "") -> Image.Image:
    return viz.caption(_enlarged(image)[0], title)


def _box_tile(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None,
              names: Sequence[str], title: str) -> Image.Image:
    """Boxes [N, 4] xyxy in the image's pixels drawn with class (and score) captions."""
    im, factor = _enlarged(image)
    drawn = viz.draw_detections(np.asarray(im), np.asarray(boxes, np.float32).reshape(-1, 4) * factor,
                                [int(v) for v in labels], None if scores is None else list(scores), names)
    return viz.caption(drawn, title)


def _class_tile(image: np.ndarray, text: str, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    return viz.caption(_enlarged(image)[0], text, fill)


def batch_tiles(batch: dict[str, np.ndarray], names: Sequence[str], num: int, kind: str,
                normalize: str = "imagenet") -> list[Image.Image]:
    """Pictures of a transformed batch, drawn as the task says (`Task.picture_kind`): one per example (boxes
    or class names), two for segmentation (image | mask). `normalize`: how the float images were normalized
    (the config's `preprocess.normalize`, see `viz.to_uint8`)."""
    tiles = []
    for b in range(min(num, len(batch["image"]))):
        image = viz.to_uint8(batch["image"][b], normalize)
        if kind == "boxes":  # detection: boxes padded to max_boxes
            keep = np.asarray(batch["box_mask"][b], bool)
            n = int(keep.sum())
            tiles.append(_box_tile(image, batch["boxes"][b][keep], batch["labels"][b][keep], None, names,
                                   f"{n} object{'' if n == 1 else 's'}"))
        elif kind == "box":  # localization: one relative box
            s = image.shape[0]
            boxes = batch["box"][b][None] * s if batch["has_box"][b] else np.zeros((0, 4))
            tiles.append(_box_tile(image, boxes, [int(batch["label"][b])] * len(boxes), None, names, "largest"))
        elif kind == "mask":
            tiles += [_image_tile(image), _mask_tile(image, batch["mask"][b], names)]
        elif kind == "labels":  # multi-label, multi-hot
            present = np.flatnonzero(np.asarray(batch["labels"][b]) > 0.5)
            tiles.append(_class_tile(image, ", ".join(_names(names, int(c)) for c in present) or "(none)"))
        else:
            tiles.append(_class_tile(image, _names(names, int(batch["label"][b]))))
    return tiles


def result_tiles(batch: dict[str, np.ndarray], preds: dict[str, np.ndarray], names: Sequence[str],
                 num: int, score_thresh: float, kind: str, normalize: str = "imagenet") -> list[Image.Image]:
    """Prediction and ground truth per valid example of an eval batch: one captioned picture
    (classification), truth | prediction (boxes), image | truth | prediction (segmentation). `normalize` as
    `batch_tiles`'."""
    tiles = []
    for b in np.flatnonzero(np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool)), bool))[:num]:
        image = viz.to_uint8(batch["image"][b], normalize)
        if kind == "boxes":
            keep = np.asarray(batch["box_mask"][b], bool)
            tiles.append(_box_tile(image, batch["boxes"][b][keep], batch["labels"][b][keep], None, names,
                                   "ground truth"))
            det = np.asarray(preds["valid"][b], bool) & (np.asarray(preds["scores"][b]) >= score_thresh)
            tiles.append(_box_tile(image, preds["boxes"][b][det], preds["labels"][b][det], preds["scores"][b][det],
                                   names, f"predicted (score >= {score_thresh:g})"))
        elif kind == "box":
            s = image.shape[0]
            gt = batch["box"][b][None] * s if batch["has_box"][b] else np.zeros((0, 4))
            tiles.append(_box_tile(image, gt, [int(batch["label"][b])] * len(gt), None, names, "ground truth"))
            tiles.append(_box_tile(image, preds["boxes"][b][None] * s, [int(preds["labels"][b])],
                                   [float(preds["scores"][b])], names, "predicted"))
        elif kind == "mask":
            tiles += [_image_tile(image, "image"), _mask_tile(image, batch["mask"][b], names, "truth:"),
                      _mask_tile(image, preds["pred"][b], names, "predicted:")]
        elif kind == "labels":
            probs = 1 / (1 + np.exp(-np.asarray(preds["logits"][b], np.float64)))
            gt = {int(c) for c in np.flatnonzero(np.asarray(batch["labels"][b]) > 0.5)}
            pred = {int(c) for c in np.flatnonzero(probs >= 0.5)}
            text = ("pred: " + (", ".join(_names(names, c) for c in sorted(pred)) or "(none)") + "\ntrue: "
                    + (", ".join(_names(names, c) for c in sorted(gt)) or "(none)"))
            tiles.append(_class_tile(image, text, GOOD if pred == gt else BAD))
        else:
            logits = np.asarray(preds["logits"][b], np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            p, t = int(np.argmax(probs)), int(batch["label"][b])
            text = f"pred: {_names(names, p)} {probs[p]:.2f}\ntrue: {_names(names, t)}"
            tiles.append(_class_tile(image, text, GOOD if p == t else BAD))
    return tiles


def _per_example(kind: str, results: bool) -> int:
    """How many pictures `batch_tiles` / `result_tiles` draw per example."""
    if kind in ("boxes", "box"):
        return 2 if results else 1
    if kind == "mask":
        return 3 if results else 2
    return 1


def _eval_pairs(trainer: Any, state: Any) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    from jaxcv.train import _to_global, _to_host

    task = trainer.task
    for batch in trainer.loader("validation", train=False).eval_batches():
        preds = trainer.jit_eval_step(state, _to_global(batch, task.device_keys, trainer.data_sharding))
        yield batch, _to_host(preds)


def input_normalization(config: ml_collections.ConfigDict) -> str:
    """How the config's model inputs are normalized (`preprocess.normalize`, "imagenet" where it has none), to
    draw them in their own colours."""
    return (config.get("preprocess") or {}).get("normalize", "imagenet")


def class_names(task: Any) -> list[str]:
    """Names of label ids (for segmentation, of mask ids: the source's names include background)."""
    return list(getattr(task.source("train"), "class_names", []))


def show(config: ml_collections.ConfigDict | None, what: str, workdir: str | Path | None = None,
         out: str | Path | None = None, num: int = 16, step: int = 0) -> Path:
    """What the command line does; returns the written PNG's path. Without `config`, the workdir's
    `config.json` (the run's own config) is used."""
    from jaxcv.train import Trainer

    if config is None:
        if workdir is None:
            raise ValueError("pass --config, or --workdir of a run (its config.json is used)")
        from jaxcv.explain import run_config

        config = run_config(workdir)

    if what not in ("batch", "results"):
        raise ValueError(f"--what={what!r}; expected batch or results")
    out = Path(out) if out else (Path(workdir) if workdir else Path(".")) / f"show_{what}.png"
    trainer = Trainer(config, workdir or ".")
    names = class_names(trainer.task)
    kind = trainer.task.picture_kind
    normalize = input_normalization(config)
    tiles: list[Image.Image] = []
    if what == "batch":
        batches = trainer.loader("train", train=True).train_batches(step)
        shown, per_example = 0, 1
        while shown < num:
            batch = next(batches)
            per_example = _per_example(kind, results=False)
            new = batch_tiles(batch, names, num - shown, kind, normalize)
            tiles += new
            shown += len(new) // per_example
    else:
        from jaxcv.explain import restore_state

        if workdir is None:
            raise ValueError("--what=results needs --workdir (a run with checkpoints)")
        state = restore_state(trainer, workdir)
        thresh = float(config.predict.score_thresh)
        shown = 0
        per_example = 1
        for batch, preds in _eval_pairs(trainer, state):
            per_example = _per_example(kind, results=True)
            new = result_tiles(batch, preds, names, num - shown, thresh, kind, normalize)
            tiles += new
            shown += len(new) // per_example
            if shown >= num:
                break
    if not tiles:
        raise ValueError("nothing to show: the split is empty")
    cols = per_example * min(num, max(1, 8 // per_example))  # an example's pictures stay on one row
    out.parent.mkdir(parents=True, exist_ok=True)
    viz.grid(_same_size(tiles), cols=cols).save(out)
    return out


def _same_size(tiles: list[Image.Image]) -> list[Image.Image]:
    """Pads tiles to one size (captions can differ in height) for `viz.grid`."""
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    out = []
    for t in tiles:
        if t.size != (w, h):
            canvas = Image.new("RGB", (w, h), (255, 255, 255))
            canvas.paste(t, (0, 0))
            t = canvas
        out.append(t)
    return out


def _main(argv: list[str]) -> None:
    from absl import flags

    from jaxcv.runtime import start_cli

    start_cli(argv)
    f = flags.FLAGS
    path = show(f.config, f.what, f.workdir, f.out, f.num, f.step)
    print(f"[jaxcv] wrote {path}", flush=True)


def _define_flags() -> None:
    """Flags are defined only when run as a program, so importing this module never clashes with
    `jaxcv.main`'s or `jaxcv.explain`'s flags."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/NAME.py[:ARG]); default: WORKDIR/config.json.", lock_config=True)
    flags.DEFINE_string("workdir", None, "A run's directory (needed for --what=results).")
    flags.DEFINE_enum("what", "batch", ["batch", "results"], "A training batch, or predictions vs truth.")
    flags.DEFINE_string("out", None, "Output PNG (default: WORKDIR/show_WHAT.png).")
    flags.DEFINE_integer("num", 16, "How many examples.")
    flags.DEFINE_integer("step", 0, "batch: which training step's batch.")


def run() -> None:
    """The command line (`python -m jaxcv.show`, the `jaxcv-show` script); `--config=NAME` may name a shipped config."""
    import sys

    from absl import app

    from jaxcv.config import resolve_config_argv

    _define_flags()
    sys.argv = resolve_config_argv(sys.argv)
    app.run(_main)


if __name__ == "__main__":
    run()
