"""The built-in synthetic shapes dataset: deterministic, boxes tight around visible masks, all classes."""

import ml_collections
import numpy as np

from jaxcv.data import DATASETS


def source(split="train", **kw):
    cfg = ml_collections.ConfigDict({"image_size": 96, "num_train": 64, "num_val": 16, "shape_classes": 3,
                                     "min_objects": 1, "max_objects": 5, "seed": 0, **kw})
    return DATASETS.get("shapes")(cfg, split)


def test_deterministic_random_access_and_seeds_differ():
    a, b = source(), source()
    np.testing.assert_array_equal(a[5]["image"], b[5]["image"])
    np.testing.assert_array_equal(a[5]["boxes"], b[5]["boxes"])
    assert not np.array_equal(a[5]["image"], source(seed=1)[5]["image"])
    assert not np.array_equal(a[5]["image"], source("validation")[5]["image"])
    assert len(a) == 64 and len(source("validation")) == 16


def test_boxes_are_tight_around_visible_masks_and_inside():
    src = source()
    labels = []
    for i in range(len(src)):
        ex = src[i]
        assert ex["image"].shape == (96, 96, 3) and ex["image"].dtype == np.uint8
        assert 1 <= len(ex["boxes"]) <= 5
        for box, mask in zip(ex["boxes"], ex["masks"], strict=True):
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert (box >= 0).all() and (box <= 96).all()
        sem = ex["semantic"]
        for label, mask in zip(ex["labels"], ex["masks"], strict=True):
            assert (sem[mask > 0] == label + 1).all()  # visible pixels carry the instance's class
        labels += ex["labels"].tolist()
    counts = np.bincount(labels, minlength=3)
    assert counts.min() > 0.2 * counts.sum(), counts


def test_coco_ground_truth_matches_items():
    src = source("validation")
    gt = src.coco_ground_truth()
    assert len(gt["images"]) == len(src) and [c["id"] for c in gt["categories"]] == [1, 2, 3]
    first = [a for a in gt["annotations"] if a["image_id"] == src[0]["image_id"]]
    np.testing.assert_allclose([a["bbox"][0] for a in first], src[0]["boxes"][:, 0])
