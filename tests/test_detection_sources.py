"""Detection data: the box-aware transform, COCO-JSON sources with bad input, tfds VOC/COCO on mock data."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import mock_tfds
from PIL import Image

from jaxcv.data import DATASETS
from jaxcv.data.base import DataError, denormalize
from jaxcv.data.coco_json import CocoJsonSource
from jaxcv.data.detection import make_detection_transform
from jaxcv.data.loader import Loader


def rect_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


def bright_extent(image: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(denormalize(image).mean(-1) > 128)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_eval_transform_resizes_pads_and_maps_back():
    ex = {"image": rect_image(60, 120, (30, 10, 70, 40)), "boxes": np.array([[30, 10, 70, 40]], np.float32),
          "labels": np.array([2]), "image_id": 7}
    out = make_detection_transform(64, 4, train=False)(ex, np.random.default_rng(0))
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
    assert out["scale"] == pytest.approx(64 / 120)
    np.testing.assert_allclose(out["boxes"][0], np.array([30, 10, 70, 40]) * 64 / 120, atol=1e-4)
    assert out["box_mask"].tolist() == [True, False, False, False] and out["labels"][0] == 2
    np.testing.assert_allclose(out["boxes"][0] / out["scale"], [30, 10, 70, 40], atol=1e-3)
    assert out["orig_size"].tolist() == [60, 120] and out["image_id"] == 7
    assert np.all(out["image"][33:] == 0)  # padded bottom (60 * 64/120 = 32 rows of image)


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_boxes_follow_the_pixels(seed: int):
    box = (20, 30, 50, 70)
    ex = {"image": rect_image(100, 80, box), "boxes": np.array([box], np.float32), "labels": np.array([0])}
    t = make_detection_transform(64, 3, train=True, hflip=True, scale_jitter=(0.7, 1.4), photometric=True)
    out = t(ex, np.random.default_rng(seed))
    if out["box_mask"][0]:
        np.testing.assert_allclose(out["boxes"][0], bright_extent(out["image"]), atol=1.5)
    again = t(ex, np.random.default_rng(seed))
    np.testing.assert_array_equal(out["image"], again["image"])  # deterministic given the rng


def test_flip_mirrors_box():
    ex = {"image": rect_image(64, 64, (4, 8, 20, 30)), "boxes": np.array([[4, 8, 20, 30]], np.float32),
          "labels": np.array([1])}
    t = make_detection_transform(64, 2, train=True, hflip=True)
    flips = 0
    for seed in range(8):
        out = t(ex, np.random.default_rng(seed))
        b = out["boxes"][0]
        if b[0] > 32:
            flips += 1
            np.testing.assert_allclose(b, [44, 8, 60, 30], atol=1e-4)
        else:
            np.testing.assert_allclose(b, [4, 8, 20, 30], atol=1e-4)
    assert 0 < flips < 8


def test_degenerate_and_nan_boxes_dropped_and_padding():
    boxes = np.array([[5, 5, 5, 20], [10, 10, 4, 30], [np.nan, 1, 5, 5], [-50, -50, -10, -10], [2, 2, 30, 30],
                      [0, 0, 500, 500]], np.float32)
    ex = {"image": np.zeros((64, 64, 3), np.uint8), "boxes": boxes, "labels": np.arange(6)}
    out = make_detection_transform(64, 8, train=False)(ex, np.random.default_rng(0))
    assert out["box_mask"].sum() == 2
    assert out["labels"][:2].tolist() == [4, 5]
    np.testing.assert_allclose(out["boxes"][1], [0, 0, 64, 64])
    many = {"image": np.zeros((32, 32, 3), np.uint8), "boxes": np.tile([[1, 1, 10, 10]], (20, 1)).astype(np.float32),
            "labels": np.zeros(20, np.int32)}
    assert make_detection_transform(32, 5, train=False)(many, np.random.default_rng(0))["box_mask"].all()


def write_coco(tmp: Path, annotations: list, images: int = 2, **extra) -> Path:
    (tmp / "img").mkdir(exist_ok=True)
    cats = [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}]
    data = {"images": [], "annotations": annotations, "categories": cats}
    for i in range(images):
        Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(tmp / "img" / f"{i}.jpg")
        data["images"].append({"id": i + 1, "file_name": f"{i}.jpg", "height": 40, "width": 60})
    data.update(extra)
    path = tmp / "ann.json"
    path.write_text(json.dumps(data))
    return path


def ann(i, image_id=1, cat=3, bbox=(5, 5, 10, 20), **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), **kw}


def test_coco_json_roundtrip(tmp_path: Path):
    path = write_coco(tmp_path, [ann(1), ann(2, cat=9, bbox=(20, 10, 30, 25), iscrowd=1)])
    src = CocoJsonSource(path, tmp_path / "img")
    assert len(src) == 2 and src.num_classes == 2 and src.class_names == ["cat", "dog"] and src.category_ids == [3, 9]
    ex = src[0]
    np.testing.assert_allclose(ex["boxes"], [[5, 5, 15, 25], [20, 10, 50, 35]])
    assert ex["labels"].tolist() == [0, 1] and ex["iscrowd"].tolist() == [False, True]
    assert len(src[1]["boxes"]) == 0  # an image without boxes is a valid all-background example
    gt = src.coco_ground_truth()
    assert [a["area"] for a in gt["annotations"]] == [200.0, 750.0]


@pytest.mark.parametrize(
    "annotation, problem",
    [
        (ann(5, bbox=(1, 1, 0, 5)), "no area"),
        (ann(5, bbox=(1, 1, float("nan"), 5)), "4 finite numbers"),
        (ann(5, bbox=(50, 1, 30, 5)), "outside"),
        (ann(5, cat=4), "unknown category_id 4"),
        (ann(5, image_id=99), "unknown image_id 99"),
    ],
)
def test_coco_json_bad_annotations(tmp_path: Path, annotation, problem):
    path = write_coco(tmp_path, [ann(1), annotation])
    with pytest.raises(DataError, match=problem) as e:
        CocoJsonSource(path, tmp_path / "img")
    assert str(path) in str(e.value) and "annotation 5" in str(e.value)
    src = CocoJsonSource(path, tmp_path / "img", bad_input="skip")
    assert len(src.skipped) == 1 and len(src.coco_ground_truth()["annotations"]) == 1


def test_coco_json_missing_fields_and_empty(tmp_path: Path):
    path = write_coco(tmp_path, [{"id": 1, "image_id": 1, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(DataError, match=r"annotation 1 is missing field\(s\) \['category_id'\]"):
        CocoJsonSource(path, tmp_path / "img")
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="categories"):
        CocoJsonSource(path, tmp_path / "img")
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="no images"):
        CocoJsonSource(path, tmp_path / "img")


def test_coco_json_corrupt_image_names_file(tmp_path: Path):
    path = write_coco(tmp_path, [ann(1)])
    (tmp_path / "img" / "0.jpg").write_bytes(b"not a jpeg")
    src = CocoJsonSource(path, tmp_path / "img")
    with pytest.raises(DataError, match="0.jpg"):
        src[0]
    loader = Loader(src, make_detection_transform(32, 4, train=True), global_batch_size=2, bad_input="skip")
    batch = next(loader.train_batches(0))
    assert batch["image"].shape == (2, 32, 32, 3) and len(loader.skipped) >= 1


@pytest.mark.parametrize("name, tfds_name", [("voc", "voc/2007"), ("coco", "coco/2017")])
def test_tfds_mock_sources_survive_invalid_records(name: str, tfds_name: str):
    import ml_collections

    cfg = ml_collections.ConfigDict({"tfds_name": tfds_name, "train_split": "train", "eval_split": "train"})
    with mock_tfds(5):  # coco from its saved metadata (its tfds code needs TensorFlow)
        src = DATASETS.get(name)(cfg, "train")
        assert len(src) == 5 and src.num_classes == (20 if name == "voc" else 80)
        t = make_detection_transform(64, 16, train=True, scale_jitter=(0.8, 1.2))
        for i in range(len(src)):
            ex = src[i]
            h, w = ex["image"].shape[:2]
            b = ex["boxes"]
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert len(ex["labels"]) == len(b) == len(ex["iscrowd"])
            out = t(ex, np.random.default_rng(i))
            assert out["image"].shape == (64, 64, 3)
        gt = src.coco_ground_truth()
        assert len(gt["images"]) == 5 and len(gt["categories"]) == src.num_classes
        if name == "coco":
            assert src.category_ids[-1] == 90
        assert src.dropped > 0  # mock data has inverted boxes: they were counted, not trusted


def test_tfds_missing_data_says_how_to_prepare(tmp_path: Path):
    import ml_collections

    cfg = ml_collections.ConfigDict({"tfds_name": "voc/2007", "tfds_data_dir": str(tmp_path)})
    with pytest.raises(DataError, match="tfds build voc/2007 --file_format=array_record"):
        DATASETS.get("voc")(cfg, "train")
