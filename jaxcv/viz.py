"""Pictures: detections and masks drawn on images, galleries, and training curves (Pillow, matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jaxcv.data.detection import from_model_input

# A fixed, distinguishable palette (tab10 followed by tab20's lighter tones), RGB uint8.
PALETTE = np.array(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
        [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
        [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
    ],
    np.uint8,
)


def color(i: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[int(i) % len(PALETTE)])


def to_uint8(image: np.ndarray, normalize: str = "imagenet") -> np.ndarray:
    """A float model input [H, W, 3] (normalized by `normalize`, a config's `preprocess.normalize`: "imagenet" or
    "unit") or a uint8 image -> uint8 [H, W, 3]."""
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else from_model_input(image, normalize)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float] | None,
    class_names: Sequence[str],
    width: int = 2,
) -> Image.Image:
    """Draws boxes [N, 4] xyxy pixels with `class: score` captions on an image."""
    im = Image.fromarray(to_uint8(image)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i, (box, label) in enumerate(zip(np.asarray(boxes), labels, strict=True)):
        c = color(label)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=c, width=width)
        name = class_names[int(label)] if int(label) < len(class_names) else str(int(label))
        text = name if scores is None else f"{name}: {float(scores[i]):.2f}"
        tx, ty = x1 + 1, max(0.0, y1 - 11)
        bbox = draw.textbbox((tx, ty), text)
        draw.rectangle(bbox, fill=c)
        draw.text((tx, ty), text, fill=(255, 255, 255))
    return im


def draw_caption(image: np.ndarray, text: str, fill: tuple[int, int, int] = (31, 119, 180)) -> Image.Image:
    """`text` in white on a coloured box at the image's top-left corner (a predicted class on a frame)."""
    im = Image.fromarray(to_uint8(image)).convert("RGB")
    draw = ImageDraw.Draw(im)
    bbox = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, bbox[2] + 2, bbox[3] + 2), fill=fill)
    draw.text((2, 1), text, fill=(255, 255, 255))
    return im


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, ignore_index: int = 255) -> Image.Image:
    """Blends a class-id mask [H, W] in palette colours over the image (class 0 = background left clear)."""
    base = to_uint8(image).astype(np.float32)
    mask = np.asarray(mask)
    colors = PALETTE[(mask.astype(np.int64) - 1) % len(PALETTE)].astype(np.float32)
    paint = (mask > 0) & (mask != ignore_index)
    out = np.where(paint[..., None], (1 - alpha) * base + alpha * colors, base)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def indexed_mask_png(mask: np.ndarray) -> Image.Image:
    """A class-id mask as a palette ('P' mode) PNG: pixel values are class ids, colours for viewing."""
    im = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[1:] = PALETTE[np.arange(255) % len(PALETTE)]
    pal[255] = (255, 255, 255)
    im.putpalette(pal.reshape(-1).tolist())
    return im


def grid(images: Sequence[Image.Image], cols: int = 4, pad: int = 4) -> Image.Image:
    """Tiles equally sized PIL images into one picture."""
    w, h = images[0].size
    rows = -(-len(images) // cols)
    out = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out.paste(im.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return out


def detection_gallery(
    samples: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]], class_names: Sequence[str], path: Path,
    min_score: float = 0.3,
) -> None:
    """Saves a grid of eval images (as the model saw them) with their detections above `min_score`."""
    tiles = []
    for image, det in samples:
        keep = det["valid"].astype(bool) & (det["scores"] >= min_score)
        tiles.append(draw_detections(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep],
                                     class_names))
    if tiles:
        grid(tiles).save(path)


TRAIN_SKIP = ("step", "split", "steps_per_s", "grad_norm", "learning_rate", "skipped_inputs", "skipped_updates",
              "finite")


def _is_score(name: str) -> bool:
    """Training metrics that are [0, 1] scores (accuracy, pixel_acc, iou) rather than losses."""
    n = name.lower()
    return ("acc" in n or "iou" in n) and "loss" not in n


def plot_training_curves(workdir: str | Path, path: str | Path) -> None:
    """Curves from `workdir/metrics.jsonl` as one PNG: training losses (log scale when they span more
    than a decade), training scores (accuracy, IoU; 0..1 axis) and evaluation metrics over steps
    (0..1 axis when they are scores, so one eval point is not blown up into a zoomed-in range; the
    last value is in the legend). Eval metrics that are -1 (COCO: no object of that size) are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxcv.logs import read_metrics

    records = read_metrics(workdir)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]

    def keys(rs: list[dict]) -> list[str]:
        seen: dict[str, None] = {}
        for r in rs:
            for k, v in r.items():
                if k not in TRAIN_SKIP and isinstance(v, (int, float)):
                    seen.setdefault(k)
        return list(seen)

    def series(rs: list[dict], key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], float(r[key])) for r in rs
               if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r[key] != -1]
        return [p[0] for p in pts], [p[1] for p in pts]

    losses = [k for k in keys(train) if not _is_score(k)]
    scores = [k for k in keys(train) if _is_score(k)]
    panels = ["losses"] + (["scores"] if scores else []) + ["eval"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    axes = dict(zip(panels, axes[0], strict=True))
    ax = axes["losses"]
    values = []
    for k in losses:
        x, y = series(train, k)
        if x:
            ax.plot(x, y, label=k)
            values += y
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 10:
        ax.set_yscale("log")
    ax.set_title("training loss")
    if "scores" in axes:
        for k in scores:
            x, y = series(train, k)
            if x:
                axes["scores"].plot(x, y, label=k)
        axes["scores"].set_ylim(-0.02, 1.02)
        axes["scores"].set_title("training scores (batch means)")
    ax = axes["eval"]
    in_unit = True
    for k in keys(evals)[:8]:
        x, y = series(evals, k)
        if x:
            ax.plot(x, y, marker="o", label=f"{k} ({y[-1]:.4g})")
            in_unit &= all(0 <= v <= 1 for v in y)
    if in_unit:
        ax.set_ylim(-0.02, 1.02)
    ax.set_title("evaluation" if evals else "evaluation (none logged)")
    all_steps = [r["step"] for r in records if "step" in r]
    for ax in axes.values():
        ax.set_xlabel("step")
        if all_steps:
            ax.set_xlim(0, max(all_steps) * 1.03 + 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- looking inside models (jaxcv.explain, jaxcv.show) ----------------------------------------


def upscale(image: np.ndarray | Image.Image, size: int, resample: int = Image.NEAREST) -> Image.Image:
    """An image scaled so its longer side is `size` px (nearest by default, so pixels stay visible)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(to_uint8(image))
    w, h = im.size
    scale = size / max(w, h)
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def caption(image: Image.Image, text: str, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """The image with a white strip of text below it (lines split on newlines)."""
    lines = text.split("\n")
    line_h = 12
    out = Image.new("RGB", (image.width, image.height + line_h * len(lines) + 2), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((2, image.height + 1 + i * line_h), line, fill=fill)
    return out


def colorize(values: np.ndarray, cmap: str = "viridis", vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """A 2-D array [H, W] -> uint8 RGB [H, W, 3] through a matplotlib colormap (min-max scaled unless
    `vmin`/`vmax` are given; a constant map is drawn at the colormap's low end)."""
    import matplotlib

    v = np.asarray(values, np.float32)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    scaled = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)
    rgba = matplotlib.colormaps[cmap](scaled)
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def heatmap_overlay(image: np.ndarray | Image.Image, heatmap: np.ndarray, alpha: float = 0.45,
                    cmap: str = "jet") -> Image.Image:
    """A heatmap [h, w] in [0, 1] (e.g. Grad-CAM) in the `jet` colormap blended over the image
    (resized to the image bilinearly if its size differs)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(to_uint8(image))
    im = im.convert("RGB")
    heat = np.asarray(heatmap, np.float32)
    if heat.shape != (im.height, im.width):
        heat = np.asarray(Image.fromarray(heat).resize(im.size, Image.BILINEAR))
    colored = colorize(heat, cmap, 0.0, 1.0).astype(np.float32)
    out = (1 - alpha) * np.asarray(im, np.float32) + alpha * colored
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def label_strip(width: int, text: str, height: int = 16) -> Image.Image:
    """A light grey bar with a title, to head a section of a figure."""
    out = Image.new("RGB", (width, height), (235, 235, 235))
    ImageDraw.Draw(out).text((4, 2), text, fill=(0, 0, 0))
    return out


def vstack(images: Sequence[Image.Image], pad: int = 2) -> Image.Image:
    """Images one below the other, left-aligned, on white."""
    w = max(im.width for im in images)
    h = sum(im.height for im in images) + pad * (len(images) - 1)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    y = 0
    for im in images:
        out.paste(im.convert("RGB"), (0, y))
        y += im.height + pad
    return out


def activation_grid(activation: np.ndarray, max_channels: int = 16, cols: int = 8, tile: int = 48,
                    cmap: str = "viridis") -> Image.Image:
    """Channels of a feature map [h, w, C] side by side, each min-max scaled on its own (so a channel's
    pattern is visible whatever its magnitude) and enlarged to `tile` px; the first `max_channels`."""
    a = np.asarray(activation, np.float32)
    if a.ndim != 3:
        raise ValueError(f"activation must be [h, w, C], got shape {a.shape}")
    tiles = [upscale(colorize(a[..., c], cmap), tile) for c in range(min(max_channels, a.shape[-1]))]
    return grid(tiles, cols=min(cols, len(tiles)), pad=2)


def activations_figure(image: np.ndarray, stages: dict[str, np.ndarray], title: str = "",
                       max_channels: int = 16, cols: int = 8, tile: int = 48) -> Image.Image:
    """The input, then one titled block of channel maps per stage (see `activation_grid`)."""
    parts = [label_strip(cols * (tile + 2) + 2, f"input {title}".strip()), upscale(to_uint8(image), 2 * tile)]
    for name, act in stages.items():
        h, w, c = np.shape(act)
        shown = min(max_channels, c)
        body = activation_grid(act, max_channels, cols, tile)
        parts.append(label_strip(max(body.width, cols * (tile + 2) + 2),
                                 f"{name}: {h}x{w}x{c} (channels 0-{shown - 1}, each min-max scaled)"))
        parts.append(body)
    return vstack(parts)
