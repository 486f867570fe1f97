"""Classification sources (synthetic, image folder, TFDS mock data) and the classification transform."""

from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxcv.data import DATASETS
from jaxcv.data.base import DataError, denormalize, normalize
from jaxcv.data.classification import (
    SyntheticClassification,
    make_classification_transform,
    random_resized_crop_box,
    resize_center_crop,
)
from jaxcv.data.loader import Loader


def cfg(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(kw)


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_determinism_and_classes():
    src = DATASETS.get("synthetic_classification")(cfg(num_classes=7, image_size=40, num_train=60), "train")
    assert len(src) == 60 and src.num_classes == 7 and len(src.class_names) == 7
    ex = src[3]
    assert ex["image"].shape == (40, 40, 3) and ex["image"].dtype == np.uint8
    assert isinstance(ex["label"], int) and 0 <= ex["label"] < 7
    again = SyntheticClassification(7, 40, 60, split="train")[3]
    np.testing.assert_array_equal(ex["image"], again["image"])
    assert ex["label"] == again["label"]
    val = DATASETS.get("synthetic_classification")(cfg(num_classes=7, image_size=40, num_val=5), "validation")
    assert len(val) == 5 and not np.array_equal(val[3]["image"], ex["image"])
    other_seed = SyntheticClassification(7, 40, 60, split="train", seed=1)[3]
    assert not np.array_equal(other_seed["image"], ex["image"])
    labels = [src[i]["label"] for i in range(60)]
    assert set(labels) == set(range(7))
    with pytest.raises(IndexError):
        src[60]


def test_synthetic_class_is_in_the_object_not_the_background():
    """Same class -> same object colour; the object is a minority of pixels on a noisy background."""
    src = SyntheticClassification(6, 48, 120)
    by_class: dict[int, list[np.ndarray]] = {}
    for i in range(120):
        ex = src[i]
        by_class.setdefault(ex["label"], []).append(ex["image"].reshape(-1, 3).astype(np.float32).mean(0))
    # Mean colours of whole images overlap a lot between classes (not trivially separable) ...
    means = {c: np.mean(v, 0) for c, v in by_class.items()}
    spread = np.mean([np.std(v, 0).mean() for v in by_class.values()])
    gaps = [np.abs(means[a] - means[b]).mean() for a in means for b in means if a < b]
    assert spread > min(gaps)


def test_synthetic_multilabel():
    src = DATASETS.get("synthetic_multilabel")(cfg(num_classes=5, image_size=32, num_train=40), "train")
    counts = []
    for i in range(40):
        labels = src[i]["labels"]
        assert labels.dtype == np.int32 and labels.ndim == 1
        assert np.all(np.diff(labels) > 0) and labels.min() >= 0 and labels.max() < 5
        counts.append(len(labels))
    assert min(counts) == 1 and max(counts) == 3
    t = make_classification_transform(32, train=False, eval_crop_ratio=None, multilabel_classes=5)
    out = t(src[0], np.random.default_rng(0))
    expect = np.zeros(5, np.float32)
    expect[src[0]["labels"]] = 1
    np.testing.assert_array_equal(out["labels"], expect)
    assert out["labels"].dtype == np.float32 and "label" not in out


# ---------------------------------------------------------------- transform


def test_train_transform_fixed_shapes_and_deterministic():
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    t = make_classification_transform(32, train=True)
    a = t({"image": image, "label": 3}, np.random.default_rng([1, 2, 3]))
    b = t({"image": image, "label": 3}, np.random.default_rng([1, 2, 3]))
    c = t({"image": image, "label": 3}, np.random.default_rng([1, 2, 4]))
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.float32
    assert a["label"].dtype == np.int32 and int(a["label"]) == 3
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])


def test_random_resized_crop_box_follows_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(60, 80, rng, (0.25, 1.0))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.2 <= h * w / (60 * 80) <= 1.0
        assert 0.7 <= w / h <= 1.4
    # A very wide image falls back to a centre crop of the largest allowed ratio.
    top, left, h, w = random_resized_crop_box(10, 200, np.random.default_rng(0), (0.99, 1.0))
    assert (h, w) == (10, 13) and left == (200 - 13) // 2 and top == 0


def test_eval_resize_center_crop_matches_torchvision_geometry():
    """Resize(shorter side 256) + CenterCrop(224) semantics, done by hand with Pillow."""
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = resize_center_crop(image, 32, 224 / 256)  # shorter side round(32 / 0.875) = 37
    ref = Image.fromarray(image).resize((int(37 * 60 / 40), 37), Image.BILINEAR)  # 55 x 37
    top, left = int(round((37 - 32) / 2)), int(round((55 - 32) / 2))
    np.testing.assert_array_equal(out, np.asarray(ref)[top : top + 32, left : left + 32])
    plain = resize_center_crop(image, 32, None)
    np.testing.assert_array_equal(plain, np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR)))
    t = make_classification_transform(32, train=False, eval_crop_ratio=None)
    np.testing.assert_allclose(t({"image": image, "label": 0}, np.random.default_rng(0))["image"],
                               normalize(plain), rtol=0, atol=1e-6)


def test_flip_and_pad_crop():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :8] = 255  # bright left band
    t = make_classification_transform(32, train=True, random_resized_crop=False, eval_crop_ratio=None,
                                      pad_crop=4)
    sides = set()
    for seed in range(20):
        out = denormalize(t({"image": image, "label": 0}, np.random.default_rng(seed))["image"])
        bright = out[16, :, 0] > 128
        assert 4 <= bright.sum() <= 8  # the band survives, shifted by at most the padding
        sides.add("left" if bright[:16].any() else "right")
    assert sides == {"left", "right"}


# ---------------------------------------------------------------- image folder


def _write(path: Path, size=(20, 24), colour=(10, 200, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    _write(root / "dog" / "a.png")
    _write(root / "dog" / "b.JPG")
    _write(root / "cat" / "c.jpeg", colour=(200, 0, 0))
    _write(root / "cat" / "sub" / "d.bmp", colour=(200, 0, 0))
    _write(root / "cat" / "e.webp", colour=(200, 0, 0))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_classes_and_items(folder: Path):
    src = DATASETS.get("image_folder")(cfg(train_dir=str(folder)), "train")
    assert src.class_names == ["cat", "dog"] and src.num_classes == 2 and len(src) == 5
    labels = [src[i]["label"] for i in range(5)]
    assert labels == [0, 0, 0, 1, 1]
    for i in range(5):
        ex = src[i]
        assert ex["image"].shape == (24, 20, 3) and ex["image"].dtype == np.uint8
        assert (ex["image"][0, 0, 0] > 150) == (ex["label"] == 0)
    # Validation uses the train class ids even when it lacks a class.
    _write(folder.parent / "val" / "dog" / "x.png")
    val = DATASETS.get("image_folder")(cfg(train_dir=str(folder), val_dir=str(folder.parent / "val")),
                                       "validation")
    assert val.class_names == ["cat", "dog"] and val[0]["label"] == 1
    _write(folder.parent / "val" / "cow" / "y.png")
    with pytest.raises(DataError, match="cow"):
        DATASETS.get("image_folder")(cfg(train_dir=str(folder), val_dir=str(folder.parent / "val")),
                                     "validation")


def test_image_folder_empty_class_and_empty_root(tmp_path: Path, folder: Path):
    (folder / "empty").mkdir()
    (folder / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=str(folder / "empty")):
        DATASETS.get("image_folder")(cfg(train_dir=str(folder)), "train")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="nothing"):
        DATASETS.get("image_folder")(cfg(train_dir=str(tmp_path / "nothing")), "train")
    with pytest.raises(DataError, match="does not exist"):
        DATASETS.get("image_folder")(cfg(train_dir=str(tmp_path / "missing")), "train")


def test_image_folder_corrupt_file_fail_and_skip(folder: Path):
    bad = folder / "dog" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    src = DATASETS.get("image_folder")(cfg(train_dir=str(folder)), "train")
    idx = src.files.index(bad)
    with pytest.raises(DataError, match="bad.png"):
        src[idx]
    t = make_classification_transform(16, train=False, eval_crop_ratio=None)
    with pytest.raises(DataError, match="bad.png"):
        next(Loader(src, t, global_batch_size=6, bad_input="fail", num_threads=1, prefetch=0).train_batches())
    loader = Loader(src, t, global_batch_size=6, bad_input="skip", num_threads=1, prefetch=0)
    batch = next(loader.train_batches())
    assert batch["image"].shape == (6, 16, 16, 3)
    assert len(loader.skipped) == 1 and "bad.png" in loader.skipped[0]
    # The bad item was replaced by the next readable one (the one after it, in file order).
    labels = sorted(src.labels.tolist())
    labels.remove(int(src.labels[idx]))
    labels.append(int(src.labels[(idx + 1) % len(src)]))
    assert sorted(batch["label"].tolist()) == sorted(labels)


# ---------------------------------------------------------------- tfds (mock data)


@pytest.mark.parametrize(
    "name,config,size",
    [("cifar10", {}, 32), ("eurosat", {}, 64), ("tfds_classification", {"tfds_name": "eurosat/rgb"}, 64),
     ("tfds_classification", {"tfds_name": "cifar10", "eval_split": "test[:50%]"}, 32)],
)
def test_tfds_mock(name: str, config: dict, size: int):
    with tfds.testing.mock_data(num_examples=6):
        for split in ("train", "validation"):
            src = DATASETS.get(name)(cfg(**config), split)
            assert len(src) == 6 and src.num_classes == 10 and len(src.class_names) == 10
            ex = src[5]
            assert ex["image"].shape == (size, size, 3) and ex["image"].dtype == np.uint8
            assert isinstance(ex["label"], int) and 0 <= ex["label"] < 10
            np.testing.assert_array_equal(ex["image"], src[5]["image"])
            out = make_classification_transform(24, train=True)(ex, np.random.default_rng(0))
            assert out["image"].shape == (24, 24, 3)


def test_tfds_missing_data_says_how_to_prepare(tmp_path: Path):
    with pytest.raises(DataError, match="tfds build cifar10 --file_format=array_record"):
        DATASETS.get("cifar10")(cfg(tfds_data_dir=str(tmp_path)), "train")
    with pytest.raises(DataError, match="unknown tfds dataset"):
        DATASETS.get("tfds_classification")(cfg(tfds_name="no_such_dataset_xyz"), "train")


def test_rotation_augment_is_deterministic_and_rotates():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = 255  # left half white
    ex = {"image": image, "label": 0}
    t = make_classification_transform(32, True, hflip=False, random_resized_crop=False, eval_crop_ratio=None,
                                      rotation=0.25)
    a, b = t(ex, np.random.default_rng(3))["image"], t(ex, np.random.default_rng(3))["image"]
    np.testing.assert_array_equal(a, b)
    plain = make_classification_transform(32, True, hflip=False, random_resized_crop=False, eval_crop_ratio=None)
    assert np.abs(a - plain(ex, np.random.default_rng(3))["image"]).max() > 1.0  # the image did turn
