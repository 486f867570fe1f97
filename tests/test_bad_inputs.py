"""Bad inputs through the real pipeline (source + transform + Loader, and the CLI): corrupt images, unknown
mask values, empty splits, images without boxes, degenerate boxes, malformed COCO-JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from reliability_util import (
    _WATCH,
    config,
    run_main,
)

from jaxcv import checkpoint as ckpt
from jaxcv import train
from jaxcv.config import classification_config, segmentation_config
from jaxcv.data.base import IGNORE_INDEX, DataError
from jaxcv.logs import read_metrics

# ----------------------------------------------------------------------------------------------------
# 3. Bad inputs, through source + transform + Loader (Trainer.loader) and the CLI
# ----------------------------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_image_folder(
    root: Path, classes=("a", "b"), per_class: int = 2, size: int = 40, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            _png(root / c / f"{c}{i}.png", rng.integers(0, 256, (size, size + 4 * i, 3), dtype=np.uint8))


def add_bad_images(root: Path) -> tuple[Path, Path]:
    """A truncated PNG in class a and random bytes named .jpg in class b."""
    good = (root / "a" / "a0.png").read_bytes()
    truncated, garbage = root / "a" / "truncated.png", root / "b" / "garbage.jpg"
    truncated.write_bytes(good[: len(good) * 2 // 3])
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return truncated, garbage


def folder_config(train_dir: Path, val_dir: Path, bad_input: str = "fail", batch_size: int = 6):
    c = classification_config()
    c.model.name = "small_cnn"
    c.data.name = "image_folder"
    c.data.train_dir = str(train_dir)
    c.data.val_dir = str(val_dir)
    c.data.image_size = 32
    c.data.bad_input = bad_input
    c.data.num_threads = 2
    c.batch_size = c.eval_batch_size = batch_size
    c.num_train_steps, c.log_every, c.checkpoint_every = 2, 1, 100
    return c


FOLDER_CONFIG = """
from jaxcv.config import classification_config


def get_config(arg=None):  # what folder_config() builds, as a config file for the CLI
    c = classification_config()
    c.model.name = "small_cnn"
    c.data.name = "image_folder"
    c.data.train_dir = "{train}"
    c.data.val_dir = "{val}"
    c.data.image_size = 32
    c.data.bad_input = arg
    c.data.num_threads = 2
    c.batch_size = c.eval_batch_size = 6
    c.num_train_steps, c.log_every, c.checkpoint_every = 2, 1, 100
    c.lock()
    return c
"""


def epoch(loader, steps: int) -> list[dict[str, np.ndarray]]:
    it = loader.train_batches(0)
    return [next(it) for _ in range(steps)]


def test_corrupt_images_in_image_folder_fail_naming_the_file_or_are_skipped(tmp_path: Path):
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", seed=1)
    truncated, garbage = add_bad_images(tmp_path / "train")
    c = folder_config(tmp_path / "train", tmp_path / "val", "fail")
    loader = train.Trainer(c, tmp_path / "w").loader("train", train=True)
    assert (
        len(loader) == 6 and loader.global_batch_size == 6
    )  # one batch = the whole split, bad files included
    with pytest.raises(DataError, match=r"cannot read image .*(truncated\.png|garbage\.jpg)"):
        epoch(loader, 1)

    c = folder_config(tmp_path / "train", tmp_path / "val", "skip")
    loader = train.Trainer(c, tmp_path / "w").loader("train", train=True)
    (batch,) = epoch(loader, 1)
    assert batch["image"].shape == (6, 32, 32, 3) and np.isfinite(batch["image"]).all()
    assert len(loader.skipped) == 2
    named = {re.search(r"cannot read image (\S+):", s).group(1) for s in loader.skipped}
    assert named == {str(truncated), str(garbage)}
    epoch(loader, 3)  # later epochs do not read or count the known-bad files again
    assert len(loader.skipped) == 2

    # evaluation: a bad item's slot is filled by its neighbour but marked invalid, so nothing counts twice
    val_truncated, _ = add_bad_images(tmp_path / "val")
    loader = train.Trainer(c, tmp_path / "w").loader("validation", train=False)
    (batch,) = list(loader.eval_batches())
    files = [str(f) for f in loader.source.files]
    assert batch["valid"].tolist() == [
        f not in (str(val_truncated), str(tmp_path / "val/b/garbage.jpg")) for f in files
    ]
    assert len(loader.skipped) == 2


def test_image_folder_class_not_in_train_is_an_error(tmp_path: Path):
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", classes=("a", "b", "zebra"), seed=1)
    trainer = train.Trainer(folder_config(tmp_path / "train", tmp_path / "val"), tmp_path / "w")
    with pytest.raises(DataError, match=r"class folders \['zebra'\] are not among the classes"):
        trainer.loader("validation", train=False)


def test_cli_bad_image_message_and_skip_count_in_logs(tmp_path: Path):
    """`python -m jaxcv.main` prints the data error (file and problem), no traceback, exit 1; with
    data.bad_input=skip the trainer trains and logs `skipped_inputs`."""
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", seed=1)
    truncated, garbage = add_bad_images(tmp_path / "train")
    spec = tmp_path / "folder_config.py"
    spec.write_text(FOLDER_CONFIG.format(train=str(tmp_path / "train"), val=str(tmp_path / "val")))
    fail = run_main(tmp_path / "fail", spec=f"{spec}:fail")
    assert fail.returncode == 1, fail.stdout + fail.stderr
    assert re.search(rf"\[jaxcv\] data error: cannot read image ({truncated}|{garbage}): ", fail.stderr), (
        fail.stderr
    )
    assert "Traceback" not in fail.stderr

    c = folder_config(tmp_path / "train", tmp_path / "val", "skip")
    assert train.train_and_evaluate(c, tmp_path / "skip")
    logged = [r["skipped_inputs"] for r in read_metrics(tmp_path / "skip") if r["split"] == "train"]
    assert logged == [2, 2], logged


def make_mask_folder(root: Path, n: int = 4, size: int = 40) -> tuple[Path, Path]:
    """CamVid layout with 3 classes; mask 1 holds an unknown value 7, mask 2 has another size."""
    rng = np.random.default_rng(0)
    (root / "codes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "codes.txt").write_text("sky\nroad\ncar\n")
    for i in range(n):
        _png(root / "images" / f"im{i}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        mask = rng.integers(0, 3, (size, size), dtype=np.uint8)
        if i == 1:
            mask[5, 5] = 7
        if i == 2:
            mask = mask[:30, :30]
        _png(root / "labels" / f"im{i}_P.png", mask)
    return root / "labels" / "im1_P.png", root / "labels" / "im2_P.png"


def mask_config(root: Path, bad_input: str, mismatch: str = "fail"):
    c = segmentation_config()
    c.model.name = "unet_resnet18"
    c.data.name = "mask_folder"
    c.data.train_dir = str(root)
    c.data.val_dir = str(root)
    c.data.mask_mismatch = mismatch
    c.data.image_size = 32
    c.data.bad_input = bad_input
    c.data.num_threads = 2
    c.batch_size = c.eval_batch_size = 4
    return c


def test_masks_with_unknown_values_or_other_size(tmp_path: Path):
    unknown, small = make_mask_folder(tmp_path / "data")
    loader = train.Trainer(mask_config(tmp_path / "data", "fail"), tmp_path / "w").loader("train", train=True)
    with pytest.raises(DataError) as e:
        epoch(loader, 1)
    assert f"mask {unknown}: value 7 is not a class id" in str(
        e.value
    ) or f"mask {small} is 30x30 but image" in str(e.value), str(e.value)

    loader = train.Trainer(mask_config(tmp_path / "data", "skip"), tmp_path / "w").loader("train", train=True)
    (batch,) = epoch(loader, 1)
    assert len(loader.skipped) == 2
    assert any(f"mask {unknown}: value 7" in s for s in loader.skipped)
    assert any(f"mask {small} is 30x30 but image" in s for s in loader.skipped)
    assert batch["mask"].shape == (4, 32, 32)
    assert set(np.unique(batch["mask"])) <= {0, 1, 2, IGNORE_INDEX}

    # data.mask_mismatch="resize" accepts the other size; the unknown value is still skipped
    loader = train.Trainer(mask_config(tmp_path / "data", "skip", "resize"), tmp_path / "w").loader(
        "train", True
    )
    epoch(loader, 1)
    assert len(loader.skipped) == 1 and "value 7" in loader.skipped[0]


def test_empty_split_fails_before_compiling(tmp_path: Path):
    c = config("synthetic_classification", data__num_val=0)
    with _WATCH as watch, pytest.raises(DataError, match=r"dataset SyntheticClassification.* is empty"):
        train.train_and_evaluate(c, tmp_path)
    assert not watch.events


# ----------------------------------------------------------------------------------------------------
# 3b. Detection inputs: images without boxes, degenerate boxes (shapes source + detection transform)
# ----------------------------------------------------------------------------------------------------


class Subset:
    """Items `indices` of `source` (a Source too)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, list(indices)
        self.num_classes, self.class_names = source.num_classes, source.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[self.indices[i]]


def test_images_without_boxes_train_as_all_background(tmp_path: Path):
    from jaxcv.data.loader import Loader

    c = config("shapes_retinanet", data__min_objects=0, data__max_objects=1)
    trainer = train.Trainer(c, tmp_path)
    source = trainer.task.source("train")
    empty = [i for i in range(len(source)) if len(source[i]["boxes"]) == 0]
    assert len(empty) >= 8, len(empty)
    loader = Loader(Subset(source, empty[:8]), trainer.task.make_transform(True), global_batch_size=8)
    batch = next(loader.train_batches(0))
    assert batch["box_mask"].shape == (8, c.data.max_boxes) and not batch["box_mask"].any()
    state = trainer.initial_state(ckpt.Checkpoints(tmp_path)).state
    before = jax.device_get(state.params)
    state, metrics = trainer.jit_train_step(
        state, train._to_global(batch, trainer.task.device_keys, trainer.data_sharding)
    )
    m = jax.device_get(metrics)
    assert m["finite"] == 1 and np.isfinite(m["loss"]) and m["loss"] > 0, m  # background is still learned
    assert m["box_loss"] == 0, m
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.array_equal(a, np.asarray(b)), before, jax.device_get(state.params)
    )
    assert any(jax.tree_util.tree_leaves(changed))


class ListSource:
    """An in-memory detection source (what a user's loader would yield)."""

    num_classes, class_names = 3, ["a", "b", "c"]

    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_degenerate_boxes_are_dropped_or_clipped(tmp_path: Path):
    from jaxcv.data.detection import make_detection_transform
    from jaxcv.data.loader import Loader

    nan = float("nan")
    boxes = np.array(
        [
            [10, 10, 30, 30],  # fine
            [30, 10, 20, 40],  # x2 < x1
            [15, 15, 15, 25],  # x2 == x1
            [70, 70, 90, 90],  # outside the 64 x 64 image
            [nan, 5, 20, 20],  # NaN
            [-10, -10, 20, 20],
        ],
        np.float32,
    )  # partly outside: clipped
    item = {
        "image": np.zeros((64, 64, 3), np.uint8),
        "boxes": boxes,
        "labels": np.array([0, 1, 2, 0, 1, 2]),
        "image_id": 7,
    }
    for train_mode in (False, True):
        transform = make_detection_transform(64, 8, train_mode, hflip=False)
        batch = next(Loader(ListSource([item]), transform, global_batch_size=1).train_batches(0))
        kept = batch["boxes"][0][batch["box_mask"][0]]
        assert np.isfinite(batch["boxes"]).all()
        np.testing.assert_allclose(kept, [[10, 10, 30, 30], [0, 0, 20, 20]])
        assert batch["labels"][0][batch["box_mask"][0]].tolist() == [0, 2]


# ----------------------------------------------------------------------------------------------------
# 3c. COCO-JSON user data: structure, annotation problems, corrupt images (source + transform + Loader)
# ----------------------------------------------------------------------------------------------------


def make_coco(root: Path) -> dict:
    """4 images (64 x 48) in root/images; one box on each of the first three, none on the fourth."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        _png(root / "images" / f"im{i}.png", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": 48, "width": 64})
        if i < 3:
            anns.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": (3, 7)[i % 2],
                    "bbox": [4, 4, 20, 16],
                    "area": 320,
                    "iscrowd": 0,
                }
            )
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }


def coco_config(root: Path, data: dict, bad_input: str = "fail"):
    (root / "ann.json").write_text(json.dumps(data))  # NaN is written as the NaN literal Python reads back
    return config(
        "coco_json_retinanet",
        data__train_json=str(root / "ann.json"),
        data__train_images=str(root / "images"),
        data__val_json=str(root / "ann.json"),
        data__val_images=str(root / "images"),
        data__bad_input=bad_input,
        data__num_threads=2,
    )


BAD_ANNOTATIONS = {
    "nan_box": (
        lambda a: a.update(bbox=[float("nan"), 4, 10, 10]),
        r"bbox \[nan, 4, 10, 10\] is not 4 finite",
    ),
    "x2_le_x1": (lambda a: a.update(bbox=[30, 4, -5, 10]), r"bbox \[30, 4, -5, 10\] has no area"),
    "zero_width": (lambda a: a.update(bbox=[30, 4, 0, 10]), r"has no area"),
    "outside": (
        lambda a: a.update(bbox=[50, 30, 40, 40]),
        r"bbox \[50, 30, 40, 40\] lies outside its 64x48 image",
    ),
    "unknown_category": (lambda a: a.update(category_id=99), r"unknown category_id 99; categories: \[3, 7\]"),
    "unknown_image": (lambda a: a.update(image_id=42), r"unknown image_id 42"),
}


@pytest.mark.parametrize("problem", list(BAD_ANNOTATIONS))
def test_coco_json_bad_annotation_fails_naming_it_or_is_skipped_and_counted(tmp_path: Path, problem):
    mutate, message = BAD_ANNOTATIONS[problem]
    data = make_coco(tmp_path)
    mutate(data["annotations"][1])  # annotation 2, on image 2
    where = rf"{tmp_path}/ann\.json: annotation 2 \(image \d+\): .*"
    with _WATCH as watch, pytest.raises(DataError, match=where + message):
        train.train_and_evaluate(coco_config(tmp_path, data, "fail"), tmp_path / "w")
    assert not watch.events  # found when the loaders are made, before compiling

    trainer = train.Trainer(coco_config(tmp_path, data, "skip"), tmp_path / "w")
    loader = trainer.loader("train", train=False)
    assert len(loader.skipped) == 1 and re.search(message, loader.skipped[0]), loader.skipped
    boxes = {
        int(b["image_id"][i]): int(b["box_mask"][i].sum())
        for b in loader.eval_batches()
        for i in range(len(b["image_id"]))
        if b["valid"][i]
    }
    assert boxes == {1: 1, 2: 0, 3: 1, 4: 0}  # the bad box is gone; image 4 never had one


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.pop("categories"), r"missing top-level list 'categories'"),
        (lambda d: d["annotations"][1].pop("bbox"), r"annotation 2 is missing field\(s\) \['bbox'\]"),
        (lambda d: d["images"][0].pop("file_name"), r"image 1 is missing field\(s\) \['file_name'\]"),
        (lambda d: d.update(images=[], annotations=[]), r"the split has no images"),
    ],
    ids=["no_categories", "annotation_without_bbox", "image_without_file_name", "empty_split"],
)
def test_coco_json_structure_errors_whatever_the_policy(tmp_path: Path, mutate, message):
    data = make_coco(tmp_path)
    mutate(data)
    for policy in ("fail", "skip"):
        with _WATCH as watch, pytest.raises(DataError, match=rf"{tmp_path}/ann\.json: {message}"):
            train.train_and_evaluate(coco_config(tmp_path, data, policy), tmp_path / "w")
        assert not watch.events


def test_coco_json_corrupt_image_fails_naming_it_or_is_skipped(tmp_path: Path):
    data = make_coco(tmp_path)
    bad = tmp_path / "images" / "im1.png"
    bad.write_bytes(bad.read_bytes()[:200])
    loader = train.Trainer(coco_config(tmp_path, data, "fail"), tmp_path / "w").loader(
        "validation", train=False
    )
    with pytest.raises(DataError, match=rf"cannot read image {bad}"):
        list(loader.eval_batches())
    loader = train.Trainer(coco_config(tmp_path, data, "skip"), tmp_path / "w").loader(
        "validation", train=False
    )
    ids = [int(i) for b in loader.eval_batches() for i, v in zip(b["image_id"], b["valid"], strict=True) if v]
    assert ids == [1, 3, 4] and len(loader.skipped) == 1 and str(bad) in loader.skipped[0]


def test_cli_coco_json_error_is_one_clear_line(tmp_path: Path):
    data = make_coco(tmp_path)
    data["annotations"][1].pop("bbox")
    (tmp_path / "ann.json").write_text(json.dumps(data))
    proc = run_main(
        tmp_path / "w",
        f"--config.data.train_json={tmp_path}/ann.json",
        f"--config.data.train_images={tmp_path}/images",
        f"--config.data.val_json={tmp_path}/ann.json",
        f"--config.data.val_images={tmp_path}/images",
        spec="configs/coco_json_retinanet.py:smoke",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        f"[jaxcv] data error: {tmp_path}/ann.json: annotation 2 is missing field(s) ['bbox']" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
