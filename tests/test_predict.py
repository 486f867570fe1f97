"""`--mode=predict` on image files: drawn boxes + COCO results JSON (detection), indexed mask PNG + overlay
(segmentation), from a workdir's checkpoint (the model at its init: what is tested is the predict path)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcv import checkpoint as ckpt
from jaxcv import modes, train
from jaxcv.config import load_config_file
from jaxcv.state import savable

ROOT = Path(__file__).resolve().parents[1]


def smoke_config(name: str, **overrides):
    """configs/NAME.py:smoke with overrides given as key__sub=value."""
    return load_config_file(f"{ROOT}/configs/{name}.py:smoke", {k.replace("__", "."): v for k, v in overrides.items()})


def save_initial_checkpoint(config, workdir: Path) -> None:
    """A workdir holding one checkpoint (step 0), as a run leaves it; no train step is compiled."""
    trainer = train.Trainer(config, workdir)
    checkpoints = ckpt.Checkpoints(workdir)
    start = trainer.initial_state(checkpoints)
    state, how = start.state, start.detail
    assert how.startswith("initialized from scratch"), how
    checkpoints.save(0, savable(state))
    checkpoints.close()


def write_images(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(90, 130), (64, 64)]):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.mark.slow
def test_detection_predict_writes_pictures_and_coco_results(tmp_path: Path):
    workdir = tmp_path / "run"
    paths = write_images(tmp_path / "inputs")
    c = smoke_config("shapes_retinanet", predict__score_thresh=0.0, postprocess__score_thresh=0.0)
    save_initial_checkpoint(c, workdir)
    with c.unlocked():
        c.predict.inputs = str(tmp_path / "inputs" / "*.png")
    out = modes.predict(c, workdir)
    for p in paths:
        im = Image.open(out / f"{p.stem}_det.png")
        assert im.size == Image.open(p).size  # drawn at the original resolution
    results = json.loads((out / "detections.json").read_text())
    assert results, "score_thresh=0 keeps the top detections"
    for r in results:
        x, y, w, h = r["bbox"]
        assert r["category_id"] in (1, 2, 3) and 0 <= r["score"] <= 1 and w >= 0 and h >= 0
        size = Image.open(r["file"]).size
        assert x + w <= size[0] + 1e-3 and y + h <= size[1] + 1e-3


@pytest.mark.slow
def test_segmentation_predict_writes_indexed_mask_and_overlay(tmp_path: Path):
    workdir = tmp_path / "run"
    paths = write_images(tmp_path / "inputs")
    c = smoke_config("shapes_unet")
    save_initial_checkpoint(c, workdir)
    with c.unlocked():
        c.predict.inputs = str(tmp_path / "inputs" / "*.png")
    out = modes.predict(c, workdir)
    for p in paths:
        mask = Image.open(out / f"{p.stem}_mask.png")
        assert mask.mode == "P" and mask.size == Image.open(p).size
        assert np.asarray(mask).max() < 4  # background + 3 shape classes
        assert Image.open(out / f"{p.stem}_overlay.png").size == mask.size

