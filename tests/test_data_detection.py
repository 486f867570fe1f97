"""Detection data: synthetic shapes, the box-aware transform, COCO-JSON user data and tfds VOC/COCO.

Boxes are checked against pixels (a white rectangle drawn into the image must stay inside its box
after every geometric step) and the COCO ground truth against pycocotools itself.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxcv.data import DATASETS
from jaxcv.data.base import DataError, denormalize
from jaxcv.data.coco_json import CocoJsonSource
from jaxcv.data.detection import make_detection_transform
from jaxcv.data.shapes import SHAPE_NAMES, ShapesConfig, ShapesDetection


def perfect_detections_ap(gt: dict) -> float:
    """pycocotools bbox AP of detections equal to the non-crowd ground truth (1.0 if gt is consistent)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"] if not a["iscrowd"]]
    if not dets:
        return -1.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


# --------------------------------------------------------------------------------------------------
# Synthetic shapes
# --------------------------------------------------------------------------------------------------


def shapes_cfg(**kw) -> ml_collections.ConfigDict:
    base = {"image_size": 64, "num_train": 120, "num_val": 12, "shape_classes": 3, "min_objects": 1,
            "max_objects": 6, "seed": 0}
    return ml_collections.ConfigDict({**base, **kw})


def test_shapes_deterministic_random_access():
    a = DATASETS.get("shapes")(shapes_cfg(), "train")
    later = a[37]
    for i in (3, 90, 0):  # other items in between do not change item 37
        a[i]
    again = DATASETS.get("shapes")(shapes_cfg(), "train")[37]
    for key in ("image", "boxes", "labels", "masks", "semantic"):
        np.testing.assert_array_equal(later[key], again[key])
    assert later["image_id"] == again["image_id"] == 38
    other_seed = DATASETS.get("shapes")(shapes_cfg(seed=1), "train")[37]
    other_split = DATASETS.get("shapes")(shapes_cfg(), "validation")[0]
    assert not np.array_equal(later["image"], other_seed["image"])
    assert not np.array_equal(a[0]["image"], other_split["image"])
    assert len(a) == 120 and len(DATASETS.get("shapes")(shapes_cfg(), "validation")) == 12
    with pytest.raises(IndexError):
        a[120]


def test_shapes_boxes_tight_masks_visible_and_classes_balanced():
    src = ShapesDetection(ShapesConfig(image_size=64, num_train=120, num_classes=6, max_objects=6), "train")
    assert src.class_names == list(SHAPE_NAMES) and src.num_classes == 6
    labels, counts, small = [], [], 0
    for i in range(len(src)):
        ex = src[i]
        img, boxes, masks = ex["image"], ex["boxes"], ex["masks"]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert boxes.dtype == np.float32 and ex["labels"].dtype == np.int32 and masks.dtype == np.uint8
        assert masks.shape == (len(boxes), 64, 64) and ex["semantic"].shape == (64, 64)
        assert (masks.sum(0) <= 1).all()  # visible parts never overlap
        for box, mask, label in zip(boxes, masks, ex["labels"], strict=True):
            ys, xs = np.nonzero(mask)
            assert len(ys) >= ShapesConfig.min_pixels
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert (box >= 0).all() and (box <= 64).all() and (box[2:] > box[:2]).all()
            assert (ex["semantic"][mask > 0] == label + 1).all()
            small += (box[2] - box[0]) * (box[3] - box[1]) < 16 * 16
        assert (ex["semantic"][masks.sum(0) == 0] == 0).all()
        labels += ex["labels"].tolist()
        counts.append(len(boxes))
    hist = np.bincount(labels, minlength=6)
    assert hist.min() > 0.5 * hist.mean(), hist  # uniform class choice
    assert 1 <= min(counts) and max(counts) <= 6 and len(set(counts)) >= 4  # varied object counts
    assert small > 0.2 * len(labels)  # small objects are common


def test_shapes_occlusion_leaves_partly_hidden_instances():
    """Later shapes cover earlier ones: some instance's visible mask is smaller than its box's fill
    would suggest for its class, i.e. it has been cut; check via an overlap of boxes with disjoint masks."""
    src = ShapesDetection(ShapesConfig(image_size=64, num_train=60, min_objects=5, max_objects=6), "train")
    overlapping = 0
    for i in range(len(src)):
        b = src[i]["boxes"]
        x1 = np.maximum(b[:, None, 0], b[None, :, 0])
        x2 = np.minimum(b[:, None, 2], b[None, :, 2])
        y1 = np.maximum(b[:, None, 1], b[None, :, 1])
        y2 = np.minimum(b[:, None, 3], b[None, :, 3])
        inter = (x2 > x1) & (y2 > y1)
        overlapping += int(inter.sum() - len(b)) // 2
    assert overlapping > 10


def test_shapes_coco_ground_truth_is_consistent_with_pycocotools():
    src = DATASETS.get("shapes")(shapes_cfg(), "validation")
    gt = src.coco_ground_truth()
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]
    assert [c["name"] for c in gt["categories"]] == ["circle", "square", "triangle"]
    assert [im["id"] for im in gt["images"]] == [src[i]["image_id"] for i in range(len(src))]
    assert all(im["height"] == im["width"] == 64 for im in gt["images"])
    anns = [a for a in gt["annotations"] if a["image_id"] == src[3]["image_id"]]
    ex = src[3]
    np.testing.assert_allclose([a["bbox"] for a in anns],
                               np.concatenate([ex["boxes"][:, :2], ex["boxes"][:, 2:] - ex["boxes"][:, :2]], 1))
    assert [a["category_id"] for a in anns] == (ex["labels"] + 1).tolist()
    assert [a["area"] for a in anns] == ex["masks"].reshape(len(anns), -1).sum(1).tolist()
    assert len({a["id"] for a in gt["annotations"]}) == len(gt["annotations"]) and min(a["id"] for a in anns) >= 1
    assert perfect_detections_ap(gt) == pytest.approx(1.0)
    seg = src.segmentation_example(3)
    np.testing.assert_array_equal(seg["mask"], ex["semantic"])


# --------------------------------------------------------------------------------------------------
# Transform
# --------------------------------------------------------------------------------------------------


def rect_example(h: int, w: int, boxes: list[tuple[int, int, int, int]], **extra) -> dict:
    """Black image with a white filled rectangle per box (pixel-edge xyxy)."""
    image = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = 255
    return {"image": image, "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.arange(len(boxes), dtype=np.int32), "image_id": 5, **extra}


def bright_extent(image: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(denormalize(image).mean(-1) > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def check_output(out: dict, size: int, max_boxes: int) -> None:
    expected = {"image": ((size, size, 3), np.float32), "boxes": ((max_boxes, 4), np.float32),
                "labels": ((max_boxes,), np.int32), "box_mask": ((max_boxes,), np.bool_),
                "image_id": ((), np.int32), "scale": ((), np.float32), "orig_size": ((2,), np.int32)}
    assert set(out) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert np.shape(out[key]) == shape and np.asarray(out[key]).dtype == dtype, key
    assert not out["boxes"][~out["box_mask"]].any() and not out["labels"][~out["box_mask"]].any()
    b = out["boxes"][out["box_mask"]]
    assert (b[:, 2:] > b[:, :2]).all() and (b >= 0).all() and (b <= size).all()


@pytest.mark.parametrize("train", [False, True])
def test_transform_fixed_shapes_on_shapes_items(train: bool):
    src = ShapesDetection(ShapesConfig(image_size=96, num_train=8), "train")
    t = make_detection_transform(64, 4, train, hflip=True, scale_jitter=(0.5, 1.5), photometric=True)
    for i in range(len(src)):
        out = t(src[i], np.random.default_rng([1, i]))
        check_output(out, 64, 4)
        assert out["orig_size"].tolist() == [96, 96] and out["image_id"] == i + 1
        again = t(src[i], np.random.default_rng([1, i]))
        for key in out:
            np.testing.assert_array_equal(out[key], again[key])  # deterministic given the rng
        if not train:
            n = min(4, len(src[i]["boxes"]))
            np.testing.assert_allclose(out["boxes"][:n], src[i]["boxes"][:n] * 64 / 96, rtol=1e-6)


def test_eval_resize_pads_and_maps_back_with_scale():
    ex = rect_example(90, 150, [(31, 12, 97, 70)])
    out = make_detection_transform(64, 3, train=False)(ex, np.random.default_rng(0))
    check_output(out, 64, 3)
    assert out["scale"] == pytest.approx(64 / 150) and out["orig_size"].tolist() == [90, 150]
    np.testing.assert_allclose(out["boxes"][0] / out["scale"], [31, 12, 97, 70], atol=0.5)
    np.testing.assert_allclose(bright_extent(out["image"]), out["boxes"][0], atol=1.0)
    rows = round(90 * 64 / 150)  # 38 image rows, then zero (mean colour) padding
    assert np.all(out["image"][rows:] == 0) and np.any(out["image"][rows - 1] != 0)
    tall = make_detection_transform(64, 3, train=False)(rect_example(150, 90, [(5, 5, 20, 20)]),
                                                        np.random.default_rng(0))
    assert np.all(tall["image"][:, round(90 * 64 / 150):] == 0)  # padded on the right


def test_flip_moves_box_with_the_pixels():
    ex = rect_example(64, 64, [(4, 8, 20, 30)])
    t = make_detection_transform(64, 2, train=True, hflip=True)
    flipped = 0
    for seed in range(12):
        out = t(ex, np.random.default_rng(seed))
        box = out["boxes"][0]
        np.testing.assert_allclose(bright_extent(out["image"]), box, atol=1e-4)
        if box[0] > 32:
            flipped += 1
            np.testing.assert_allclose(box, [64 - 20, 8, 64 - 4, 30])
        else:
            np.testing.assert_allclose(box, [4, 8, 20, 30])
    assert 0 < flipped < 12
    no_flip = make_detection_transform(64, 2, train=True, hflip=False)
    assert all(no_flip(ex, np.random.default_rng(s))["boxes"][0, 0] == 4 for s in range(6))


@pytest.mark.parametrize("seed", range(8))
def test_scale_jitter_crop_keeps_boxes_on_their_pixels(seed: int):
    boxes = [(10, 10, 40, 30), (70, 50, 118, 90), (100, 5, 126, 20)]
    ex = rect_example(96, 128, boxes)
    t = make_detection_transform(64, 4, train=True, hflip=True, scale_jitter=(0.6, 2.0), photometric=True)
    out = t(ex, np.random.default_rng(seed))
    check_output(out, 64, 4)
    img = denormalize(out["image"]).mean(-1) > 127
    covered = np.zeros_like(img)
    for box in out["boxes"][out["box_mask"]]:
        x1, y1, x2, y2 = np.round(box).astype(int)
        covered[y1:y2, x1:x2] = True
        inside = img[int(np.ceil(box[1])) + 1:int(box[3]) - 1, int(np.ceil(box[0])) + 1:int(box[2]) - 1]
        assert inside.size == 0 or inside.mean() > 0.95  # every kept box is filled by its rectangle
    # every bright pixel belongs to a kept box (cropped-away boxes left no pixels behind)
    grown = covered.copy()
    for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
        grown |= np.roll(covered, shift, axis)
    assert not (img & ~grown).any()


def test_min_box_size_drop_after_downscale():
    ex = rect_example(128, 128, [(10, 10, 12, 40), (50, 50, 90, 90)])  # a 2 px wide sliver
    out = make_detection_transform(32, 4, train=True, hflip=False, min_box_size=1.0)(ex, np.random.default_rng(0))
    assert out["box_mask"].sum() == 1 and out["labels"][0] == 1  # the sliver (0.5 px wide) is gone


def test_degenerate_nan_crowd_mismatch_and_truncation():
    boxes = np.array([[5, 5, 5, 20],  # empty
                      [10, 10, 4, 30],  # inverted
                      [np.nan, 1, 5, 5],  # NaN
                      [np.inf, 1, 5, 5],  # inf
                      [-50, -50, -10, -10],  # fully outside
                      [70, 10, 90, 20],  # fully outside on the right
                      [2, 2, 30, 30],
                      [-5, -5, 500, 500]], np.float32)  # clipped to the image
    ex = {"image": np.zeros((64, 64, 3), np.uint8), "boxes": boxes, "labels": np.arange(9)}  # one label too many
    for train, min_size in ((False, 1.0), (True, 1.0), (False, 0.0), (True, 0.0)):
        out = make_detection_transform(64, 8, train, hflip=False, min_box_size=min_size)(ex, np.random.default_rng(0))
        check_output(out, 64, 8)
        assert out["labels"][out["box_mask"]].tolist() == [6, 7]
        np.testing.assert_allclose(out["boxes"][:2], [[2, 2, 30, 30], [0, 0, 64, 64]])
    crowd = rect_example(64, 64, [(1, 1, 10, 10), (20, 20, 30, 30)], iscrowd=np.array([True, False]))
    train_out = make_detection_transform(64, 4, True, hflip=False)(crowd, np.random.default_rng(0))
    assert train_out["labels"][train_out["box_mask"]].tolist() == [1]  # crowd is no training target
    eval_out = make_detection_transform(64, 4, False)(crowd, np.random.default_rng(0))
    assert eval_out["box_mask"].sum() == 2
    many = rect_example(64, 64, [(i, i, i + 10, i + 10) for i in range(20)])
    out = make_detection_transform(64, 5, False)(many, np.random.default_rng(0))
    assert out["box_mask"].all() and out["labels"].tolist() == [0, 1, 2, 3, 4]  # the first max_boxes
    empty = make_detection_transform(64, 3, True)({"image": np.zeros((40, 50, 3), np.uint8)}, np.random.default_rng(0))
    check_output(empty, 64, 3)
    assert not empty["box_mask"].any()


def test_photometric_changes_colours_but_keeps_geometry_and_gray():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    image[:, :24] = 128  # a gray half stays gray (brightness/contrast change it, hue/saturation do not tint it)
    ex = {"image": image, "boxes": np.array([[3, 4, 30, 40]], np.float32), "labels": np.array([0])}
    plain = make_detection_transform(48, 2, True, hflip=False)(ex, np.random.default_rng(3))
    jit = make_detection_transform(48, 2, True, hflip=False, photometric=True)(ex, np.random.default_rng(3))
    np.testing.assert_array_equal(plain["boxes"], jit["boxes"])
    assert np.abs(plain["image"] - jit["image"]).mean() > 0.01
    gray = denormalize(jit["image"])[:, :24].astype(int)
    assert np.abs(gray - gray[..., :1]).max() <= 1


# --------------------------------------------------------------------------------------------------
# COCO-JSON
# --------------------------------------------------------------------------------------------------


def write_coco(root: Path, annotations: list | None = None, overrides: dict | None = None) -> Path:
    """3 images (2 of 40x60, 1 of 50x30) and categories with unsorted, non-contiguous ids."""
    (root / "images").mkdir(exist_ok=True)
    sizes = {10: (40, 60), 11: (40, 60), 12: (50, 30)}
    images = []
    for image_id, (h, w) in sizes.items():
        Image.fromarray(np.full((h, w, 3), image_id, np.uint8)).save(root / "images" / f"im{image_id}.png")
        images.append({"id": image_id, "file_name": f"im{image_id}.png", "height": h, "width": w})
    if annotations is None:
        annotations = [ann(1, 10, 7, [5, 6, 10, 20]), ann(2, 10, 2, [0, 0, 60, 40], iscrowd=1),
                       ann(3, 12, 5, [1.5, 2.5, 20, 30], area=123.0)]
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 5, "name": "five"}],
            **(overrides or {})}
    path = root / "train.json"
    path.write_text(json.dumps(data))
    return path


def ann(i, image_id=10, cat=7, bbox=(5, 5, 10, 10), **kw) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), **kw}


def test_coco_json_round_trip_through_registry_and_pycocotools(tmp_path: Path):
    path = write_coco(tmp_path)
    cfg = ml_collections.ConfigDict({"train_json": str(path), "train_images": str(tmp_path / "images"),
                                     "val_json": str(path), "val_images": str(tmp_path / "images")})
    src = DATASETS.get("coco_json")(cfg, "train")
    assert isinstance(src, CocoJsonSource) and len(DATASETS.get("coco_json")(cfg, "validation")) == 3
    assert src.category_ids == [2, 5, 7] and src.class_names == ["two", "five", "seven"] and src.num_classes == 3
    assert len(src) == 3
    ex = src[0]
    assert ex["image"].shape == (40, 60, 3) and ex["image"][0, 0, 0] == 10 and ex["image_id"] == 10
    np.testing.assert_allclose(ex["boxes"], [[5, 6, 15, 26], [0, 0, 60, 40]])
    assert ex["labels"].tolist() == [2, 0] and ex["iscrowd"].tolist() == [False, True]
    assert src[1]["boxes"].shape == (0, 4) and src[1]["labels"].shape == (0,)  # image without objects
    np.testing.assert_allclose(src[2]["boxes"], [[1.5, 2.5, 21.5, 32.5]])
    gt = src.coco_ground_truth()
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3] and gt["images"] == json.loads(path.read_text())["images"]
    assert [a["area"] for a in gt["annotations"]] == [200.0, 2400.0, 123.0]  # given area kept, else w*h
    assert perfect_detections_ap(gt) == pytest.approx(1.0)
    out = make_detection_transform(32, 4, train=False)(src[2], np.random.default_rng(0))
    np.testing.assert_allclose(out["boxes"][0] / out["scale"], [1.5, 2.5, 21.5, 32.5], atol=1e-4)
    with pytest.raises(DataError, match="val_json"):
        DATASETS.get("coco_json")(ml_collections.ConfigDict({"train_json": str(path)}), "validation")


@pytest.mark.parametrize(
    "annotation, reason, problem",
    [
        (ann(9, bbox=[1, 1, float("nan"), 5]), "bad_bbox", r"bbox \[1, 1, nan, 5\] is not 4 finite numbers"),
        (ann(9, bbox=[1, 1, 5]), "bad_bbox", "is not 4 finite numbers"),
        (ann(9, bbox="1 1 5 5"), "bad_bbox", "is not 4 finite numbers"),
        (ann(9, bbox=[1, 1, 0, 5]), "empty_bbox", r"bbox \[1, 1, 0, 5\] has no area"),
        (ann(9, bbox=[1, 1, 5, -2]), "empty_bbox", "has no area"),
        (ann(9, bbox=[50, 1, 30, 5]), "outside_image", r"bbox \[50, 1, 30, 5\] lies outside its 60x40 image"),
        (ann(9, bbox=[-8, 1, 5, 5]), "outside_image", "outside"),
        (ann(9, cat=4), "unknown_category", "unknown category_id 4"),
        (ann(9, image_id=99), "unknown_image", "unknown image_id 99"),
    ],
)
def test_coco_json_bad_annotation_fails_naming_file_or_is_skipped(tmp_path: Path, annotation, reason, problem):
    path = write_coco(tmp_path, [ann(1), annotation])
    with pytest.raises(DataError, match=problem) as e:
        CocoJsonSource(path, tmp_path / "images")
    assert str(path) in str(e.value) and "annotation 9" in str(e.value)
    src = CocoJsonSource(path, tmp_path / "images", bad_input="skip")
    assert len(src.skipped) == 1 and "annotation 9" in src.skipped[0] and dict(src.skip_reasons) == {reason: 1}
    assert [a["id"] for a in src.coco_ground_truth()["annotations"]] == [1]
    assert len(src[0]["boxes"]) == 1


def test_coco_json_slightly_outside_box_is_tolerated(tmp_path: Path):
    path = write_coco(tmp_path, [ann(1, bbox=[-0.5, 0, 60.9, 40.5])])
    src = CocoJsonSource(path, tmp_path / "images")
    out = make_detection_transform(60, 2, train=False)(src[0], np.random.default_rng(0))
    np.testing.assert_allclose(out["boxes"][0], [0, 0, 60, 40])  # clipped by the transform


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"annotations": None}, "missing top-level list 'annotations'"),
        ({"categories": {"id": 1}}, "missing top-level list 'categories'"),
        ({"images": [{"id": 1}]}, r"image 1 is missing field\(s\) \['file_name'\]"),
        ({"categories": [{"id": 1}]}, r"category 1 is missing field\(s\) \['name'\]"),
        ({"categories": [{"id": "a", "name": "x"}]}, "ids must be integers"),
        ({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}]},
         r"duplicate image id\(s\) \[1\]"),
        ({"images": []}, "no images"),
        ({"annotations": [{"id": 9, "image_id": 10, "bbox": [1, 1, 2, 2]}]},
         r"annotation 9 is missing field\(s\) \['category_id'\]"),
    ],
)
def test_coco_json_structure_errors_name_the_file(tmp_path: Path, overrides, problem):
    path = write_coco(tmp_path, [], overrides)
    if overrides.get("annotations", []) is None:  # the key is absent altogether
        data = json.loads(path.read_text())
        del data["annotations"]
        path.write_text(json.dumps(data))
    for policy in ("fail", "skip"):  # structure problems fail whatever the policy
        with pytest.raises(DataError, match=problem) as e:
            CocoJsonSource(path, tmp_path / "images", bad_input=policy)
        assert str(path) in str(e.value)


def test_coco_json_unreadable_json_and_images_name_the_file(tmp_path: Path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        CocoJsonSource(bad, tmp_path)
    with pytest.raises(DataError, match="missing.json"):
        CocoJsonSource(tmp_path / "missing.json", tmp_path)
    path = write_coco(tmp_path)
    (tmp_path / "images" / "im10.png").write_bytes(b"not a png")
    (tmp_path / "images" / "im11.png").unlink()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "im12.png")
    src = CocoJsonSource(path, tmp_path / "images")  # images are read lazily
    with pytest.raises(DataError, match="im10.png"):
        src[0]
    with pytest.raises(DataError, match="im11.png"):
        src[1]
    with pytest.raises(DataError, match=r"im12.png: image is 10x10 but .*train.json says 30x50"):
        src[2]


# --------------------------------------------------------------------------------------------------
# tfds VOC / COCO on mock data
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, tfds_name", [("voc", "voc/2007"), ("coco", "coco/2017")])
def test_tfds_mock_sources_survive_and_yield_valid_boxes(name: str, tfds_name: str):
    import tensorflow_datasets as tfds
    from conftest import mock_tfds

    cfg = ml_collections.ConfigDict({"tfds_name": tfds_name})
    policy = tfds.testing.MockPolicy.USE_CODE if name == "voc" else tfds.testing.MockPolicy.USE_FILES
    with mock_tfds(4, policy=policy):  # coco: its saved metadata, readable without TensorFlow
        src = DATASETS.get(name)(cfg, "validation")
        assert src.parts == [(tfds_name, "test" if name == "voc" else "validation")]
        train = DATASETS.get(name)(ml_collections.ConfigDict({"tfds_name": tfds_name, "extra_train": tfds_name}),
                                   "train")
        assert train.parts[0] == (tfds_name, "train+validation" if name == "voc" else "train")
        assert len(train) == 2 * len(src) == 8 and train[7]["image"].ndim == 3
        if name == "voc":
            assert src.num_classes == 20 and src.class_names[0] == "aeroplane" and src.category_ids[-1] == 20
        else:
            assert src.num_classes == 80 and src.class_names[:2] == ["person", "bicycle"]
            assert src.category_ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and src.category_ids[-1] == 90
        t = make_detection_transform(64, 8, train=True, scale_jitter=(0.8, 1.25), photometric=True)
        for i in range(len(src)):
            ex = src[i]
            rec = src._record(i)  # the raw tfds record: check the conversion on its valid boxes
            h, w = ex["image"].shape[:2]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 3
            b = ex["boxes"]
            assert b.dtype == np.float32 and ex["labels"].dtype == np.int32
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert (b >= 0).all() and (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all()
            assert len(ex["labels"]) == len(b) == len(ex["iscrowd"]) and (ex["labels"] < src.num_classes).all()
            obj = rec["objects"]
            fields = ["bbox", "label", "is_crowd", "area"] if name == "coco" else ["bbox", "label", "is_difficult"]
            n = min(len(obj[f]) for f in fields)
            expected = [[r[1] * w, r[0] * h, r[3] * w, r[2] * h]
                        for r in obj["bbox"][:n] if r[2] > r[0] and r[3] > r[1]]
            np.testing.assert_allclose(b, np.array(expected, np.float32).reshape(-1, 4), rtol=1e-6)
            if name == "voc":
                np.testing.assert_array_equal(ex["difficult"], ex["iscrowd"])
            else:
                assert ex["image_id"] == int(rec["image/id"]) and len(ex["area"]) == len(b)
            check_output(t(ex, np.random.default_rng(i)), 64, 8)
        assert src.dropped > 0 and src.dropped == sum(src.drop_reasons.values())
        assert src.drop_reasons["invalid_box"] > 0 and src.drop_reasons["length_mismatch"] > 0
        gt = src.coco_ground_truth()
        assert len(gt["images"]) == 4 and [c["id"] for c in gt["categories"]] == src.category_ids
        assert len(gt["annotations"]) == sum(len(src[i]["boxes"]) for i in range(4))
        assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in gt["annotations"])
        if gt["annotations"]:
            assert perfect_detections_ap(gt) in (pytest.approx(1.0), -1.0)  # -1: every box is crowd


def test_tfds_missing_data_says_how_to_prepare(tmp_path: Path):
    for name, tfds_name in (("voc", "voc/2012"), ("coco", "coco/2017")):
        cfg = ml_collections.ConfigDict({"tfds_name": tfds_name, "tfds_data_dir": str(tmp_path)})
        with pytest.raises(DataError) as e:
            DATASETS.get(name)(cfg, "train")
        msg = str(e.value)
        assert f"tfds build {tfds_name} --file_format=array_record --data_dir={tmp_path}" in msg
        assert "Traceback" not in msg and len(msg) < 1200
        assert "pip install -e '.[tfds-build]'" in msg  # `tfds build` needs TensorFlow
    assert not any(tmp_path.iterdir())  # nothing was downloaded or prepared


def write_prepared_coco(data_dir: Path, splits: dict[str, list[dict]]) -> None:
    """coco/2017 in `data_dir` as `tfds build coco/2017 --file_format=array_record` leaves it: the
    saved metadata (tests/data/tfds_metadata) and one array_record shard per split, its examples
    serialized by the metadata's features (images given as JPEG bytes, so TensorFlow is not needed)."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    from conftest import TFDS_METADATA

    (src,) = (TFDS_METADATA / "coco" / "2017").iterdir()
    out = data_dir / "coco" / "2017" / src.name
    out.mkdir(parents=True)
    (out / "features.json").write_text((src / "features.json").read_text())
    features = tfds.features.FeaturesDict.from_config(str(out))
    info = json.loads((src / "dataset_info.json").read_text())
    info["splits"] = []
    for split, examples in splits.items():
        writer = ArrayRecordWriter(str(out / f"coco-{split}.array_record-00000-of-00001"), "group_size:1")
        size = 0
        for ex in examples:
            jpeg = io.BytesIO()
            Image.fromarray(ex["image"]).save(jpeg, "JPEG", quality=100)
            record = features.serialize_example({**ex, "image": io.BytesIO(jpeg.getvalue())})
            writer.write(record)
            size += len(record)
        writer.close()
        info["splits"].append({"name": split, "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                               "numBytes": str(size), "shardLengths": [str(len(examples))]})
    (out / "dataset_info.json").write_text(json.dumps(info))


def coco_example(image_id: int, hw: tuple[int, int], bbox: list, label: list, is_crowd: list) -> dict:
    """One coco/2017 tfds record: `bbox` normalized [ymin, xmin, ymax, xmax] rows, `label` 0..79."""
    n = len(label)
    return {"image": np.full((*hw, 3), 90 + image_id % 100, np.uint8), "image/filename": f"{image_id:012d}.jpg",
            "image/id": image_id,
            "objects": {"id": np.arange(n) + 10 * image_id, "area": np.arange(n) + 100, "label": np.array(label),
                        "bbox": np.array(bbox, np.float32).reshape(-1, 4), "is_crowd": np.array(is_crowd, bool)}}


@pytest.mark.parametrize("without_code", [False, True], ids=["code", "no_code"])
def test_tfds_prepared_coco_reads_with_and_without_its_dataset_code(tmp_path: Path, monkeypatch, without_code):
    """Real array_record coco/2017 files through the coco source. tfds' coco code needs TensorFlow to be
    set up (`tf.int64` in `_info`): without it (`no_code` pretends so; without TensorFlow both cases do) the
    prepared dataset is read from its saved metadata, and gives the same examples."""
    if without_code:
        from tensorflow_datasets.object_detection import coco

        def missing_tensorflow(self):
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

        monkeypatch.setattr(coco.Coco, "_info", missing_tensorflow)
    write_prepared_coco(tmp_path, {
        "train": [coco_example(7, (30, 40), [[0.1, 0.25, 0.5, 0.75], [0.0, 0.0, 1.0, 1.0]], [0, 79], [False, True]),
                  coco_example(9, (20, 50), [], [], [])],
        "validation": [coco_example(139, (40, 20), [[0.5, 0.5, 0.75, 1.0]], [11], [False])],
    })
    cfg = ml_collections.ConfigDict({"tfds_name": "coco/2017", "tfds_data_dir": str(tmp_path)})
    train, val = DATASETS.get("coco")(cfg, "train"), DATASETS.get("coco")(cfg, "validation")
    assert len(train) == 2 and len(val) == 1 and train.num_classes == 80 and train.category_ids[-1] == 90
    ex = train[0]
    assert ex["image"].shape == (30, 40, 3) and ex["image_id"] == 7 and np.abs(ex["image"] - 97.0).max() <= 2
    np.testing.assert_allclose(ex["boxes"], [[10, 3, 30, 15], [0, 0, 40, 30]], atol=1e-4)  # xyxy pixels
    assert ex["labels"].tolist() == [0, 79] and ex["iscrowd"].tolist() == [False, True]
    assert ex["area"].tolist() == [100, 101]
    assert train[1]["image"].shape == (20, 50, 3) and train[1]["boxes"].shape == (0, 4)
    ex = val[0]
    assert ex["image_id"] == 139 and ex["labels"].tolist() == [11]
    np.testing.assert_allclose(ex["boxes"], [[10, 20, 20, 30]], atol=1e-4)
    gt = val.coco_ground_truth()
    assert [a["category_id"] for a in gt["annotations"]] == [13]  # class 11 is COCO category 13
    assert train.dropped == 0 and val.dropped == 0
