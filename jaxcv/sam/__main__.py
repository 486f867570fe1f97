"""Segment an image with a converted SAM checkpoint, from point / box prompts or automatically.

    python -m jaxcv.sam --weights DIR --image IMG --points 417,161,1 [300,200,0 ...] [--multimask] --out OUT
    python -m jaxcv.sam --weights DIR --image IMG --box 103,200,231,313 [--points ...] --out OUT
    python -m jaxcv.sam --weights DIR --image IMG --auto [--points-per-side 32 ...] --out OUT

`DIR` is a `python -m jaxcv.convert --arch segment_anything` output (model.json + variables). Prompts are in the
image's own pixels: `--points x,y[,label]` (label 1 foreground, the default, or 0 background; several points form
one prompt), `--box x1,y1,x2,y2` (xyxy). `--multimask` returns SAM's three candidate masks instead of one.
`--auto` runs `jaxcv.sam.AutomaticMaskGenerator` (the reference's defaults; its thresholds are options).

Writes to OUT: `mask_000.png`, ... (one 8-bit PNG per mask, 255 inside, 0 outside), `overlay.png` (the masks in
`jaxcv.viz` palette colours over the image, prompts drawn; one captioned tile per mask for prompts, all masks in
one picture for `--auto`) and `result.json`: per mask its file, `score` (predicted IoU), area, bbox (xywh) and
`segmentation` as COCO compressed RLE ({"size": [H, W], "counts": str}, what pycocotools' `encode` gives;
pycocotools is not needed); `--auto` adds stability_score, point_coords and crop_box. Images are read with
Pillow as RGB, EXIF orientation applied.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from jaxcv import viz

RESULT_JSON = "result.json"
OVERLAY_PNG = "overlay.png"
SAM_CLASS = "jaxcv.models.sam.sam.Sam"
FG, BG, BOX = (0, 200, 0), (220, 0, 0), (0, 255, 0)


# ---------------------------------------------------------------- COCO RLE without pycocotools


def rle_counts(mask: np.ndarray) -> list[int]:
    """[H, W] bool -> run lengths in column-major (Fortran) order, starting with a run of zeros (COCO's)."""
    from jaxcv.sam.amg import mask_to_rle

    return mask_to_rle(np.asarray(mask, bool))["counts"]


def rle_string(counts: Sequence[int]) -> str:
    """Run lengths -> COCO's compressed string (pycocotools `rleToString`): each count, minus the count two
    before it from the third on, as little-endian 5-bit groups with a continuation bit, offset by 48."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """[H, W] bool -> {"size": [H, W], "counts": str}: pycocotools `mask.encode` (counts decoded to str)."""
    mask = np.asarray(mask, bool)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_string(rle_counts(mask))}


def mask_bbox(mask: np.ndarray) -> list[int]:
    """[H, W] bool -> xywh with x1 / y1 the last pixel (as the AMG's `bbox`); [0, 0, 0, 0] when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0]), int(rows[-1] - rows[0])]


# ---------------------------------------------------------------- arguments


def _numbers(text: str, n: Sequence[int], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if len(values) not in n or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """"x,y" or "x,y,label" (label 1 = foreground, 0 = background) -> (x, y, label)."""
    values = _numbers(text, (2, 3), "x,y or x,y,label (label 1 = foreground, 0 = background)")
    label = 1 if len(values) == 2 else values[2]
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"{text!r}: label must be 1 (foreground) or 0 (background)")
    return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """"x1,y1,x2,y2" with x2 > x1 and y2 > y1."""
    x1, y1, x2, y2 = _numbers(text, (4,), "x1,y1,x2,y2")
    if not (x2 > x1 and y2 > y1):
        raise argparse.ArgumentTypeError(f"{text!r}: need x2 > x1 and y2 > y1 (xyxy corners)")
    return x1, y1, x2, y2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxcv.sam", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--weights", required=True, metavar="DIR",
                        help="a `jaxcv.convert --arch segment_anything` output (model.json + variables)")
    parser.add_argument("--image", required=True, metavar="IMG", help="the image (any format Pillow reads)")
    parser.add_argument("--points", type=parse_point, nargs="+", action="extend", default=[], metavar="X,Y[,L]",
                        help="point prompts in image pixels; label 1 foreground (default), 0 background")
    parser.add_argument("--box", type=parse_box, default=None, metavar="X1,Y1,X2,Y2", help="box prompt, xyxy")
    parser.add_argument("--multimask", action="store_true", help="three candidate masks instead of one")
    parser.add_argument("--auto", action="store_true", help="automatic mask generation (no prompts)")
    parser.add_argument("--out", required=True, metavar="OUT", help="output directory (created)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (weights stay float32); bfloat16 for GPUs/TPUs")
    amg = parser.add_argument_group("--auto options (AutomaticMaskGenerator)")
    for flag, kind, default, text in (
            ("--points-per-side", int, 32, "grid of N x N point prompts"),
            ("--points-per-batch", int, 64, "points decoded per jitted call"),
            ("--pred-iou-thresh", float, 0.88, "keep masks with predicted IoU above this (0: all)"),
            ("--stability-score-thresh", float, 0.95, "keep masks with stability at least this (0: all)"),
            ("--box-nms-thresh", float, 0.7, "box NMS IoU threshold"),
            ("--crop-n-layers", int, 0, "layers of overlapping crops also segmented"),
            ("--min-mask-region-area", int, 0, "fill holes / drop islands smaller than this (pixels)")):
        amg.add_argument(flag, type=kind, default=default, metavar="N" if kind is int else "X",
                         help=f"{text} (default {default})")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    prompted = bool(args.points) or args.box is not None
    if args.auto and prompted:
        parser.error("--auto takes no prompts: drop --points / --box, or drop --auto")
    if args.auto and args.multimask:
        parser.error("--multimask applies to prompts only, not to --auto")
    if not args.auto and not prompted:
        parser.error("give a prompt (--points and/or --box) or --auto")
    if args.points_per_side < 1:
        parser.error(f"argument --points-per-side: must be >= 1, got {args.points_per_side}")
    if args.points_per_batch < 1:
        parser.error(f"argument --points-per-batch: must be >= 1, got {args.points_per_batch}")
    if args.crop_n_layers < 0:
        parser.error(f"argument --crop-n-layers: must be >= 0, got {args.crop_n_layers}")


def _check_prompts_inside(parser: argparse.ArgumentParser, args: argparse.Namespace, h: int, w: int) -> None:
    for x, y, label in args.points:
        if not (0 <= x <= w and 0 <= y <= h):
            parser.error(f"argument --points: {x:g},{y:g},{label} lies outside the {w}x{h} image {args.image}")
    if args.box is not None:
        x1, y1, x2, y2 = args.box
        if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            parser.error(f"argument --box: {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {w}x{h} image {args.image}")


def read_image(parser: argparse.ArgumentParser, path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] (EXIF orientation applied); a parser error naming --image otherwise."""
    p = Path(path)
    if not p.is_file():
        parser.error(f"argument --image: {path} does not exist" if not p.exists() else
                     f"argument --image: {path} is not a file")
    try:
        with Image.open(p) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        parser.error(f"argument --image: cannot read {path} as an image: {e}")


def load_sam(parser: argparse.ArgumentParser, directory: str) -> tuple[Any, Any]:
    """(Sam module, variables) of a `jaxcv.convert` output; parser errors naming --weights otherwise."""
    from jaxcv.convert import MODEL_JSON, VARIABLES_DIR, converted_model, load_converted, read_model_json

    d = Path(directory)
    if not d.is_dir():
        parser.error(f"argument --weights: {directory} is not a directory (expected a jaxcv.convert output)")
    if not (d / MODEL_JSON).is_file():
        parser.error(f"argument --weights: {d / MODEL_JSON} not found: {directory} is not a jaxcv.convert output")
    try:
        meta = read_model_json(d)
    except ValueError as e:
        parser.error(f"argument --weights: {d / MODEL_JSON} is not valid JSON: {e}")
    if meta.get("class") != SAM_CLASS:
        parser.error(f"argument --weights: {directory} holds {meta.get('class') or meta.get('model')!r}, not SAM "
                     f"(convert with --arch segment_anything)")
    if not (d / VARIABLES_DIR).is_dir():
        parser.error(f"argument --weights: {d / VARIABLES_DIR} not found (an unfinished conversion?)")
    try:
        return converted_model(d), load_converted(d)
    except Exception as e:  # orbax / tree mismatches: name the file, keep the cause
        parser.error(f"argument --weights: cannot restore {d / VARIABLES_DIR} for {meta['kwargs']}: "
                     f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------- pictures


def draw_prompts(im: Image.Image, points: Sequence[tuple[float, float, int]],
                 box: Sequence[float] | None) -> Image.Image:
    """Points (green foreground, red background, white rim) and the box (green) drawn on a copy of `im`."""
    im = im.convert("RGB")
    draw = ImageDraw.Draw(im)
    r = max(3, min(im.size) // 100)
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=BOX, width=max(2, r // 2))
    for x, y, label in points:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=FG if label else BG, outline=(255, 255, 255), width=1)
    return im


def prompt_overlay(image: np.ndarray, masks: np.ndarray, scores: np.ndarray,
                   points: Sequence[tuple[float, float, int]], box: Sequence[float] | None) -> Image.Image:
    """One tile per mask: the mask in palette colour i over the image, the prompts, `mask i: IoU` below."""
    best = int(np.argmax(scores))
    tiles = []
    for i, mask in enumerate(masks):
        tile = draw_prompts(viz.overlay_mask(image, mask.astype(np.uint8) * (i % len(viz.PALETTE) + 1)), points, box)
        text = f"mask {i}: predicted IoU {float(scores[i]):.3f}" + (" (best)" if i == best else "")
        tiles.append(viz.caption(tile, text))
    return viz.grid(tiles, cols=min(3, len(tiles)))


def auto_overlay(image: np.ndarray, masks: Sequence[np.ndarray]) -> Image.Image:
    """All masks in one picture, palette colours by rank, larger masks painted first (small ones stay visible)."""
    ids = np.zeros(image.shape[:2], np.int32)
    for i in sorted(range(len(masks)), key=lambda j: -int(masks[j].sum())):
        ids[masks[i]] = i % len(viz.PALETTE) + 1
    return viz.caption(viz.overlay_mask(image, ids), f"{len(masks)} masks")


# ---------------------------------------------------------------- main


def _clear_previous(out: Path) -> None:
    """Removes the mask PNGs an earlier run listed in OUT/result.json (so none are left over)."""
    try:
        old = json.loads((out / RESULT_JSON).read_text())
    except (OSError, ValueError):
        return
    for rec in old.get("masks", []) if isinstance(old, dict) else []:
        name = rec.get("file") if isinstance(rec, dict) else None
        if isinstance(name, str) and name.startswith("mask_") and "/" not in name:
            (out / name).unlink(missing_ok=True)


def _write_masks(out: Path, masks: Sequence[np.ndarray]) -> list[str]:
    names = []
    for i, mask in enumerate(masks):
        name = f"mask_{i:03d}.png"
        Image.fromarray(np.asarray(mask, np.uint8) * 255).save(out / name)
        names.append(name)
    return names


def run_prompts(predictor: Any, image: np.ndarray, args: argparse.Namespace) -> tuple[list[dict], Image.Image]:
    """Prompted masks -> (mask records without files, overlay)."""
    coords = labels = None
    if args.points:
        coords = np.asarray([[x, y] for x, y, _ in args.points], np.float64)
        labels = np.asarray([label for *_, label in args.points], np.int32)
    box = None if args.box is None else np.asarray(args.box, np.float64)
    masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=args.multimask)
    records = [{"mask": m, "score": float(s), "area": int(m.sum()), "bbox": mask_bbox(m)}
               for m, s in zip(masks, scores, strict=True)]
    return records, prompt_overlay(image, masks, scores, args.points, args.box)


def run_auto(predictor: Any, image: np.ndarray, args: argparse.Namespace) -> tuple[list[dict], Image.Image]:
    """Automatic masks -> (mask records without files, overlay)."""
    from jaxcv.sam.amg import AutomaticMaskGenerator

    gen = AutomaticMaskGenerator(
        predictor, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh, crop_n_layers=args.crop_n_layers,
        min_mask_region_area=args.min_mask_region_area, output_mode="binary_mask")
    records = []
    for rec in gen.generate(image):
        seg = rec.pop("segmentation")
        records.append({"mask": seg, "score": rec["predicted_iou"], **rec})
    return records, auto_overlay(image, [r["mask"] for r in records])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the CLI; returns what it wrote to OUT/result.json. Bad arguments exit via `parser.error` (status 2)."""
    from jaxcv import runtime

    runtime.configure()  # the entry points' CPU settings (import jaxcv alone changes nothing)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    image = read_image(parser, args.image)
    h, w = image.shape[:2]
    _check_prompts_inside(parser, args, h, w)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {args.out} exists and is not a directory")
    module, variables = load_sam(parser, args.weights)

    from jaxcv.sam.predictor import Predictor

    t0 = time.perf_counter()
    if args.dtype != "float32":
        import jax.numpy as jnp

        module = module.clone(dtype=jnp.dtype(args.dtype))
    predictor = Predictor(module, variables)
    if args.auto:
        records, overlay = run_auto(predictor, image, args)
    else:
        predictor.set_image(image)
        records, overlay = run_prompts(predictor, image, args)
    seconds = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    masks = [r.pop("mask") for r in records]
    for rec, name, mask in zip(records, _write_masks(out, masks), masks, strict=True):
        rec["file"] = name
        rec["segmentation"] = coco_rle(mask)
    overlay.save(out / OVERLAY_PNG)
    result: dict[str, Any] = {
        "mode": "auto" if args.auto else "prompt", "image": str(args.image), "height": h, "width": w,
        "weights": str(args.weights), "dtype": args.dtype, "overlay": OVERLAY_PNG, "seconds": round(seconds, 3),
    }
    if args.auto:
        result["settings"] = {k: getattr(args, k) for k in (
            "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
            "crop_n_layers", "min_mask_region_area")}
    else:
        result["prompt"] = {"points": [[x, y] for x, y, _ in args.points],
                            "labels": [label for *_, label in args.points],
                            "box": None if args.box is None else list(args.box), "multimask": args.multimask}
        result["best"] = int(np.argmax([r["score"] for r in records]))
    result["masks"] = [{"file": r.pop("file"), **r} for r in records]
    (out / RESULT_JSON).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(masks)} mask(s) in {seconds:.1f} s -> {out / RESULT_JSON}, {out / OVERLAY_PNG}, mask_*.png")
    return result


def cli() -> None:
    """The `jaxcv-sam` script (`main`'s result is in OUT/result.json)."""
    main()


if __name__ == "__main__":
    cli()
