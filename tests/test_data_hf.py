"""`data.name="hf"`: Hugging Face datasets written offline with `Dataset.from_dict(...).save_to_disk`, read back
for classification, detection (dict-of-lists and list-of-dicts objects) and segmentation; bad rows named by row
and field; short trainings through the normal trainer; the Loader's multi-host sharding over the source."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import datasets
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxcv import train
from jaxcv.config import load_config_file
from jaxcv.data import COMMON_DATA_KEYS, DATASETS, check_data_keys
from jaxcv.data.base import IGNORE_INDEX, DataError
from jaxcv.data.loader import Loader

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cat", "dog", "bird"]


def images(n: int, seed: int = 0, size: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 4 * (i % 3), 3), dtype=np.uint8) for i in range(n)]


def save(root: Path, splits: dict[str, dict], features: datasets.Features) -> Path:
    """A DatasetDict of `splits` (column dicts) written with save_to_disk under `root`."""
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in splits.items()}
                         ).save_to_disk(str(root))
    return root


def source(split: str = "train", **keys):
    data = ml_collections.ConfigDict({"name": "hf", **keys})
    check_data_keys(data)
    return DATASETS.get("hf")(data, split)


# ---- classification -------------------------------------------------------------------------------------------

CLS_FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})


def cls_data(tmp_path: Path, n: int = 8, labels: list[int] | None = None) -> tuple[Path, list[np.ndarray]]:
    ims = images(n)
    labels = labels if labels is not None else [i % 3 for i in range(n)]
    return save(tmp_path / "cls", {"train": {"image": ims, "label": labels},
                                   "validation": {"image": ims[:4], "label": labels[:4]}}, CLS_FEATURES), ims


def test_classification_examples_are_what_was_written(tmp_path: Path):
    path, ims = cls_data(tmp_path)
    src = source(hf_path=str(path))
    assert (len(src), src.class_names, src.num_classes) == (8, NAMES, 3)
    for i in range(8):
        ex = src[i]
        assert ex["image"].dtype == np.uint8 and np.array_equal(ex["image"], ims[i]) and ex["label"] == i % 3
    assert len(source("validation", hf_path=str(path))) == 4
    part = source(hf_path=str(path), train_split="train[25%:]")  # slicing as datasets writes it
    assert len(part) == 6 and np.array_equal(part[0]["image"], ims[2])


def test_a_single_dataset_and_grey_array_images(tmp_path: Path):
    grey = [np.full((6, 5), 10 * i, np.uint8) for i in range(4)]
    features = datasets.Features({"pixels": datasets.Array2D((6, 5), "uint8"), "y": datasets.Value("int64")})
    datasets.Dataset.from_dict({"pixels": grey, "y": [0, 1, 0, 1]}, features=features).save_to_disk(
        str(tmp_path / "one"))
    src = source("validation", hf_path=str(tmp_path / "one"), eval_split="train[2:]", image_field="pixels",
                 label_field="y", class_names="no,yes")
    assert len(src) == 2 and src.class_names == ["no", "yes"]
    assert src[1]["image"].shape == (6, 5, 3) and (src[1]["image"] == 30).all() and src[1]["label"] == 1


def test_classification_bad_rows_fail_naming_row_and_field_or_are_skipped(tmp_path: Path):
    path, _ = cls_data(tmp_path, labels=[0, 1, -1, 2, 0, 1, 2, 0])  # -1: ClassLabel's "no label"
    where = re.escape(f"hf dataset {str(path)!r}[train] row 2 field 'label': label -1 is not a class id in [0, 3)")
    with pytest.raises(DataError, match=where):
        source(hf_path=str(path))
    src = source(hf_path=str(path), bad_input="skip")
    assert len(src) == 7 and src.skip_reasons == {"bad_label": 1} and "row 2" in src.skipped[0]
    with pytest.raises(DataError, match=r"has no split 'test'; its splits: \['train', 'validation'\]"):
        source(hf_path=str(path), train_split="test")
    with pytest.raises(DataError, match=r"no column\(s\) \['img'\]; its columns: \['image', 'label'\]"):
        source(hf_path=str(path), image_field="img")


def test_corrupt_image_names_the_row_and_the_loader_skips_it(tmp_path: Path):
    ims = images(4)
    cells = [{"bytes": _png(im), "path": None} for im in ims]
    cells[1] = {"bytes": b"not an image", "path": None}
    path = save(tmp_path / "bad", {"train": {"image": cells, "label": [0, 1, 2, 0]}}, CLS_FEATURES)
    src = source(hf_path=str(path))
    with pytest.raises(DataError, match=re.escape(f"{str(path)!r}[train] row 1 field 'image': cannot decode")):
        src[1]
    loader = Loader(src, lambda ex, rng: {"label": ex["label"]}, global_batch_size=2, bad_input="skip",
                    num_threads=1)
    labels = [int(v) for b in loader.eval_batches() for v, ok in zip(b["label"], b["valid"], strict=True) if ok]
    assert labels == [0, 2, 0] and len(loader.skipped) == 1 and "row 1" in loader.skipped[0]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# ---- detection --------------------------------------------------------------------------------------------------

DET_NAMES = ["ball", "box"]


def det_rows(n: int) -> tuple[list[np.ndarray], list[list[list[float]]], list[list[int]]]:
    """n 64x48 images with 1-2 objects each: bboxes [x, y, w, h], categories."""
    ims = images(n, seed=1, size=48)
    ims = [np.ascontiguousarray(np.pad(im[:, :48], ((0, 0), (0, 16), (0, 0)))) for im in ims]
    bboxes = [[[4.0 + i, 5.0, 20.0, 16.5]] + ([[30.0, 10.0, 12.0, 30.0]] if i % 2 else []) for i in range(n)]
    cats = [[i % 2] + ([1] if i % 2 else []) for i in range(n)]
    return ims, bboxes, cats


def det_data(tmp_path: Path, n: int = 4, mutate=None, listed: bool = False) -> Path:
    ims, bboxes, cats = det_rows(n)
    if mutate:
        mutate(bboxes, cats)
    category = datasets.Value("int64") if mutate else datasets.ClassLabel(names=DET_NAMES)
    obj = {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)), "category": category}
    if listed:  # a list of dicts per row
        objects = [[{"bbox": b, "category": c} for b, c in zip(bb, cc, strict=True)] for bb, cc in zip(bboxes, cats,
                                                                                                      strict=True)]
        feature = [{"bbox": obj["bbox"].feature, "category": category}]
    else:  # Sequence({...}): a dict of lists per row
        objects = [{"bbox": bb, "category": cc} for bb, cc in zip(bboxes, cats, strict=True)]
        feature = {"bbox": obj["bbox"], "category": datasets.Sequence(category)}
    features = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"), "objects": feature})
    split = {"image": ims, "image_id": [100 + i for i in range(n)], "objects": objects}
    return save(tmp_path / "det", {"train": split, "test": split}, features)


@pytest.mark.parametrize("listed", [False, True], ids=["dict_of_lists", "list_of_dicts"])
def test_detection_examples_and_coco_ground_truth(tmp_path: Path, listed: bool):
    path = det_data(tmp_path, listed=listed)
    src = source("validation", hf_path=str(path), objects_field="objects")  # no validation split: "test"
    ims, bboxes, cats = det_rows(4)
    assert (len(src), src.class_names, src.category_ids) == (4, DET_NAMES, [1, 2])
    for i in range(4):
        ex = src[i]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in bboxes[i]]
        assert np.array_equal(ex["image"], ims[i]) and ex["image_id"] == 100 + i
        np.testing.assert_allclose(ex["boxes"], xyxy)
        assert ex["labels"].tolist() == cats[i] and ex["iscrowd"].tolist() == [False] * len(cats[i])
    gt = src.coco_ground_truth()
    assert [im["id"] for im in gt["images"]] == [100, 101, 102, 103] and len(gt["annotations"]) == 6
    assert gt["annotations"][1] == {"id": 2, "image_id": 101, "category_id": 2, "bbox": [5.0, 5.0, 20.0, 16.5],
                                    "area": 330.0, "iscrowd": 0}
    assert gt["categories"] == [{"id": 1, "name": "ball"}, {"id": 2, "name": "box"}]
    # xywh read as xyxy: row 1's second box [30, 10, 12, 30] has x2 < x1
    with pytest.raises(DataError, match=r"row 1 field 'objects.bbox': object 1: bbox \[30.0, 10.0, 12.0, 30.0\] "
                                        r"\(xyxy\) has no area"):
        source(hf_path=str(path), objects_field="objects", bbox_format="xyxy")


BAD_OBJECTS = {
    "nan": (lambda b, c: b[2][0].__setitem__(0, math.nan), "objects.bbox", r"object 0: bbox \[nan, 5.0, 20.0, 16.5\] "
                                                                             r"is not 4 finite numbers"),
    "zero_width": (lambda b, c: b[2][0].__setitem__(2, 0.0), "objects.bbox", r"object 0: bbox .* has no area"),
    "category": (lambda b, c: c[2].__setitem__(0, 7), "objects.category", r"object 0: category 7 is not a class id "
                                                                          r"in \[0, 2\)"),
}


@pytest.mark.parametrize("problem", list(BAD_OBJECTS))
def test_detection_bad_objects_fail_naming_row_and_field_or_are_dropped(tmp_path: Path, problem: str):
    mutate, field, message = BAD_OBJECTS[problem]
    path = det_data(tmp_path, mutate=mutate)
    keys = {"hf_path": str(path), "objects_field": "objects", "class_names": ("ball", "box")}
    with pytest.raises(DataError, match=rf"\[train\] row 2 field '{field}': {message} \(set data.bad_input=skip"):
        source(**keys)
    src = source(**keys, bad_input="skip")
    assert len(src) == 4 and len(src.skipped) == 1 and len(src[2]["boxes"]) == 0
    assert 102 not in {a["image_id"] for a in src.coco_ground_truth()["annotations"]}


def test_detection_box_outside_its_image_fails_when_read(tmp_path: Path):
    path = det_data(tmp_path, mutate=lambda b, c: b[3][0].__setitem__(0, 60.0))
    src = source(hf_path=str(path), objects_field="objects", class_names="ball,box")
    with pytest.raises(DataError, match=r"row 3 field 'bbox': box \[60.0, 5.0, 80.0, 21.5\] \(xyxy\) lies outside "
                                        r"its 64x48 image \(is data.bbox_format right\?\)"):
        src[3]


# ---- segmentation -----------------------------------------------------------------------------------------------


def seg_data(tmp_path: Path, n: int = 4, bad_value: int | None = None) -> tuple[Path, list, list]:
    ims = images(n, seed=2, size=64)
    ims = [im[:, :64] for im in ims]
    rng = np.random.default_rng(3)
    masks = [rng.choice(np.array([0, 1, 2, IGNORE_INDEX], np.uint8), size=(64, 64)) for _ in range(n)]
    if bad_value is not None:
        masks[1][5, 7] = bad_value
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    split = {"image": ims, "annotation": [Image.fromarray(m, mode="L") for m in masks]}
    return save(tmp_path / "seg", {"train": split, "validation": split}, features), ims, masks


def test_segmentation_examples_void_and_bad_values(tmp_path: Path):
    path, ims, masks = seg_data(tmp_path)
    src = source(hf_path=str(path), mask_field="annotation", class_names=("sky", "road", "car"))
    assert (len(src), src.num_classes) == (4, 3)
    for i in range(4):
        assert np.array_equal(src[i]["image"], ims[i]) and np.array_equal(src[i]["mask"], masks[i])
    voided = source(hf_path=str(path), mask_field="annotation", class_names="void,road,car", void_class="void")
    expect = np.select([masks[0] == 0, masks[0] == 1, masks[0] == 2], [IGNORE_INDEX, 0, 1], IGNORE_INDEX)
    assert voided.class_names == ["road", "car"] and np.array_equal(voided[0]["mask"], expect)
    path, _, _ = seg_data(tmp_path / "bad", bad_value=9)
    src = source(hf_path=str(path), mask_field="annotation", num_classes=3)
    with pytest.raises(DataError, match=r"row 1 field 'annotation': value 9 is not a class id"):
        src[1]
    with pytest.raises(DataError, match=r"names no classes .* set data.class_names or data.num_classes"):
        source(hf_path=str(path), mask_field="annotation")


# ---- training through the normal trainer; multi-host sharding -------------------------------------------------


def hf_config(spec: str, overrides: dict, **data):
    """A shipped config with its dataset keys replaced by `data.name="hf"` and `data`."""
    c = load_config_file(ROOT / "configs" / spec, overrides)
    with c.unlocked():
        for key in set(c.data) - COMMON_DATA_KEYS:
            del c.data[key]
        c.data.name = "hf"
        c.data.update(data)
    return c


def test_detection_trains_and_evaluates(tmp_path: Path):
    path = det_data(tmp_path)
    c = hf_config("coco_json_yolov3_tiny.py:smoke", {"log_every": 1, "checkpoint_every": 2, "data.num_threads": 2},
                  hf_path=str(path), objects_field="objects")
    metrics = train.train_and_evaluate(c, tmp_path / "w")
    assert {"AP", "AP50"} <= set(metrics) and all(np.isfinite(metrics[k]) for k in ("AP", "AP50")), metrics
    assert (tmp_path / "w" / "eval" / "detections.json").is_file()


def test_classification_trains_and_evaluates(tmp_path: Path):
    path, _ = cls_data(tmp_path, n=16)
    c = hf_config("synthetic_classification.py:smoke", {"num_train_steps": 3, "batch_size": 4, "eval_batch_size": 4,
                                                        "data.num_classes": 3, "data.num_threads": 2},
                  hf_path=str(path))
    metrics = train.train_and_evaluate(c, tmp_path / "w")
    assert 0.0 <= metrics["accuracy"] <= 1.0, metrics


def test_processes_read_disjoint_slices_covering_the_split(tmp_path: Path):
    path, _ = cls_data(tmp_path, n=16)
    src = source(hf_path=str(path))
    loaders = [Loader(src, lambda ex, rng: {"label": ex["label"]}, global_batch_size=4, seed=5, process_index=p,
                      process_count=2, num_threads=1) for p in range(2)]
    for step in range(loaders[0].steps_per_epoch):  # one epoch of training batches
        a, b = (set(loader.train_indices(step)[0].tolist()) for loader in loaders)
        assert len(a) == len(b) == 2 and not a & b
    epoch = [i for loader in loaders for s in range(loader.steps_per_epoch) for i in loader.train_indices(s)[0]]
    assert sorted(epoch) == list(range(16))
    for loader in loaders:  # evaluation: items told apart by their pixels' sum
        loader.transform = lambda ex, rng: {"key": int(ex["image"].astype(np.int64).sum())}
    seen = [[int(v) for b in loader.eval_batches() for v, ok in zip(b["key"], b["valid"], strict=True) if ok]
            for loader in loaders]
    every = [int(src[i]["image"].astype(np.int64).sum()) for i in range(16)]
    assert len(set(every)) == 16 and len(seen[0]) == len(seen[1]) == 8 and sorted(seen[0] + seen[1]) == sorted(every)


def test_load_dataset_path_and_optional_import(tmp_path: Path, monkeypatch):
    """A local folder that is no save_to_disk output goes through `datasets.load_dataset` (here its imagefolder
    builder, offline); importing jaxcv does not import datasets, and without it the error says what to install."""
    for split, cls, i in [(s, c, i) for s in ("train", "validation") for c in ("cat", "dog") for i in range(2)]:
        (tmp_path / "folder" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(tmp_path / "folder" / split / cls / f"{i}.png")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    src = source("validation", hf_path=str(tmp_path / "folder"))
    assert len(src) == 4 and src.class_names == ["cat", "dog"] and src[3]["label"] == 1
    assert (tmp_path / "cache").is_dir()
    code = "import sys, jaxcv.data; assert 'datasets' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=re.escape("pip install 'jaxcv[hf]'")):
        source(hf_path=str(tmp_path / "folder"))
