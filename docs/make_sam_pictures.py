"""The README's SAM pictures, from a briefly fine-tuned `:smoke` SAM (random frozen encoder, 64 px shapes):

    python docs/make_sam_pictures.py [--workdir /tmp/jaxcv_sam_pictures] [--steps 300]

1. `python -m jaxcv.main` with `configs/shapes_sam_finetune.py:smoke` (the learning test's settings): 0 steps
   (the zero-shot evaluation), then `--steps` in the same workdir; the evaluator's pictures of both runs become
   `docs/images/sam_finetune.png` (top: zero-shot, bottom: fine-tuned; each pair ground truth | prediction).
2. The fine-tuned model exported as a SAM conversion (`export_sam`), then `jaxcv.sam.Predictor` on held-out
   images with each shape's box: `docs/images/sam_predictor.png`.
3. `python -m jaxcv.sam --weights EXPORT --image IMG --box ...` on one image: its `overlay.png` is
   `docs/images/sam_cli.png`.
The pictures show what the pipeline does on a toy model, not SAM's quality (no real weights involved).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
CONFIG = "configs/shapes_sam_finetune.py:smoke"
OVERRIDES = ("--config.data.num_train=256", "--config.data.num_val=32", "--config.log_every=50",
             "--config.checkpoint_every=100000")


def train(workdir: Path, steps: int) -> tuple[Path, Path]:
    """(zero-shot eval picture, fine-tuned eval picture), copied out of `workdir/eval` after each run."""
    pictures = []
    for n in (0, steps):
        cmd = [sys.executable, "-m", "jaxcv.main", f"--config={CONFIG}", f"--workdir={workdir}", *OVERRIDES,
               f"--config.num_train_steps={n}"]
        subprocess.run(cmd, check=True, cwd=ROOT)
        kept = workdir / f"eval_step{n}.png"
        shutil.copy(workdir / "eval" / "promptable_segmentation.png", kept)
        print(json.loads((workdir / "eval" / "metrics.json").read_text()))
        pictures.append(kept)
    return pictures[0], pictures[1]


def labelled(im: Image.Image, text: str, scale: int = 2) -> Image.Image:
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    out = Image.new("RGB", (im.width, im.height + 16), "white")
    out.paste(im, (0, 16))
    ImageDraw.Draw(out).text((4, 2), text, fill="black")
    return out


def finetune_picture(before: Path, after: Path) -> None:
    a, b = labelled(Image.open(before).convert("RGB"), "zero-shot (random decoder)"), \
        labelled(Image.open(after).convert("RGB"), "fine-tuned: the box-prompted masks")
    out = Image.new("RGB", (max(a.width, b.width), a.height + b.height), "white")
    out.paste(a, (0, 0))
    out.paste(b, (0, a.height))
    out.save(OUT / "sam_finetune.png", optimize=True)


def predictor_picture(export: Path, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Predictor with every shape's box on 4 held-out images; returns (one image upscaled x4, its first box)."""
    from jaxcv.config import load_config_file
    from jaxcv.convert import converted_model, load_converted
    from jaxcv.sam import Predictor
    from jaxcv.tasks import create_task
    from jaxcv.viz import draw_detections, grid, overlay_mask

    task = create_task(load_config_file(CONFIG))
    src = task.source("validation")
    predictor = Predictor(converted_model(export), load_converted(export))
    tiles, first = [], None
    for i in range(4):
        ex = src[i]
        big = np.asarray(Image.fromarray(ex["image"]).resize((256, 256), Image.NEAREST))
        boxes = np.asarray(ex["boxes"], np.float32) * 4
        predictor.set_image(big)
        masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=False)
        masks = np.asarray(masks)[:, 0]
        ids = (masks.astype(np.int64) * np.arange(1, len(masks) + 1)[:, None, None]).max(axis=0)
        shown = np.asarray(overlay_mask(big, ids))
        tiles.append(draw_detections(shown, boxes, [0] * len(boxes), np.asarray(scores)[:, 0], ["IoU"], width=2))
        if first is None:
            first = (big, boxes[0])
    grid(tiles, cols=4).save(OUT / "sam_predictor.png", optimize=True)
    return first


def cli_picture(export: Path, workdir: Path, image: np.ndarray, box: np.ndarray) -> None:
    path = workdir / "cli_input.png"
    Image.fromarray(image).save(path)
    box_arg = ",".join(str(int(round(v))) for v in box)
    cmd = [sys.executable, "-m", "jaxcv.sam", "--weights", str(export), "--image", str(path), "--box", box_arg,
           "--out", str(workdir / "cli_out")]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)
    Image.open(workdir / "cli_out" / "overlay.png").save(OUT / "sam_cli.png", optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/jaxcv_sam_pictures")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    OUT.mkdir(parents=True, exist_ok=True)
    before, after = train(workdir, args.steps)
    finetune_picture(before, after)

    from jaxcv import checkpoint as ckpt
    from jaxcv.config import load_config_file
    from jaxcv.tasks import create_task
    from jaxcv.tasks.promptable_segmentation import export_sam

    task = create_task(load_config_file(CONFIG))
    params = ckpt.load_variables(str(workdir))["params"]
    export = export_sam(task, params, workdir / "exported")
    image, box = predictor_picture(export, workdir)
    cli_picture(export, workdir, image, box)
    for name in ("sam_finetune.png", "sam_predictor.png", "sam_cli.png"):
        print(OUT / name, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
