"""Segmentation sources (Pets via TFDS mock data, CamVid-style mask folders) and the segmentation transform."""

from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxcv.data import DATASETS
from jaxcv.data.base import IGNORE_INDEX, DataError, denormalize
from jaxcv.data.segmentation import make_segmentation_transform


def cfg(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(kw)


# ---------------------------------------------------------------- Oxford-IIIT Pet (tfds mock data)


def _valid_pets(n: int):
    """`as_data_source_fn` for tfds.testing.mock_data: tfds' random pets examples with the trimap
    values made valid (1..3) and left half = 1, so resizing can be checked; sizes stay mismatched."""

    def as_data_source(self, split, **kwargs):
        gen = tfds.testing.mocking.RandomFakeGenerator(self.info.features, n)
        examples = []
        for ex in gen:
            m = ex["segmentation_mask"] % 3 + 1
            m[:, : m.shape[1] // 2] = 1
            examples.append({**ex, "segmentation_mask": m})
        return examples

    return as_data_source


def test_pets_mock_masks_resized_and_mapped():
    with tfds.testing.mock_data(num_examples=5, as_data_source_fn=_valid_pets(5)):
        src = DATASETS.get("pets")(cfg(), "train")
        val = DATASETS.get("pets")(cfg(), "validation")
    assert len(src) == 5 and len(val) == 5 and src.num_classes == 3 and len(src.class_names) == 3
    mismatched = 0
    for i in range(5):
        raw = src._source[i]
        ex = src[i]
        h, w = ex["image"].shape[:2]
        assert ex["mask"].shape == (h, w) and ex["mask"].dtype == np.uint8
        assert set(np.unique(ex["mask"])) <= {0, 1, 2}
        mismatched += raw["segmentation_mask"].shape[:2] != (h, w)
        # Left half of the trimap was 1 (pet) -> class 0; nearest resize keeps it on the left.
        assert np.all(ex["mask"][:, : w // 2 - w // 8] == 0)
        expect = np.asarray(Image.fromarray(raw["segmentation_mask"][..., 0]).resize((w, h), Image.NEAREST)) - 1
        np.testing.assert_array_equal(ex["mask"], expect)
    assert mismatched == 5  # mock masks never have the image's size
    out = make_segmentation_transform(32, train=True)(src[0], np.random.default_rng(0))
    assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32) and out["mask"].dtype == np.int32


def test_pets_default_mock_trimap_values_are_rejected():
    """tfds' default mock masks hold random 0..254 values, which no real trimap has."""
    with tfds.testing.mock_data(num_examples=3):
        src = DATASETS.get("pets")(cfg(), "train")
        with pytest.raises(DataError, match=r"trimap value \d+ not in \{1, 2, 3\}"):
            src[0]


def test_pets_missing_data_says_how_to_prepare(tmp_path: Path):
    with pytest.raises(DataError, match="tfds build oxford_iiit_pet --file_format=array_record"):
        DATASETS.get("pets")(cfg(tfds_data_dir=str(tmp_path)), "train")


# ---------------------------------------------------------------- mask folder


CODES = ["Sky", "Road", "Void", "Car"]  # stored values 0..3; Void -> ignore, Car -> class 2


def _pair(root: Path, stem: str, mask: np.ndarray, image_size: tuple[int, int] | None = None) -> None:
    h, w = image_size or mask.shape
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask.astype(np.uint8)).save(root / "labels" / f"{stem}_P.png")


def _camvid(tmp_path: Path) -> Path:
    root = tmp_path / "camvid"
    m = np.zeros((12, 16), np.uint8)
    m[6:, :] = 1
    m[:, 10:] = 3
    m[0, 0] = 2
    for stem in ("a", "b", "c"):
        _pair(root, stem, m)
    (root / "codes.txt").write_text("\n".join(CODES) + "\n")
    (root / "valid.txt").write_text("c.png\n")
    return root


def test_mask_folder_codes_void_and_valid_list(tmp_path: Path):
    root = _camvid(tmp_path)
    config = cfg(train_dir=str(root), valid_list="valid.txt", void_class="Void")
    train = DATASETS.get("mask_folder")(config, "train")
    val = DATASETS.get("mask_folder")(config, "validation")
    assert train.class_names == ["Sky", "Road", "Car"] and train.num_classes == 3
    assert [p.stem for p in train.images] == ["a", "b"] and [p.stem for p in val.images] == ["c"]
    ex = val[0]
    assert ex["image"].shape == (12, 16, 3) and ex["mask"].shape == (12, 16) and ex["mask"].dtype == np.uint8
    assert ex["mask"][0, 0] == IGNORE_INDEX
    assert ex["mask"][1, 0] == 0 and ex["mask"][7, 0] == 1 and ex["mask"][7, 12] == 2
    assert set(np.unique(ex["mask"])) == {0, 1, 2, IGNORE_INDEX}
    # Without a void class, "Void" is an ordinary class.
    plain = DATASETS.get("mask_folder")(cfg(train_dir=str(root), valid_list="valid.txt"), "train")
    assert plain.num_classes == 4 and plain[0]["mask"][0, 0] == 2 and plain[0]["mask"][7, 12] == 3


def test_mask_folder_per_split_dirs_and_codes_in_parent(tmp_path: Path):
    (tmp_path / "codes.txt").write_text("\n".join(CODES))
    _pair(tmp_path / "train", "x", np.ones((8, 8)))
    _pair(tmp_path / "val", "y", np.full((8, 8), 3))
    config = cfg(train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val"), void_class="Void")
    assert DATASETS.get("mask_folder")(config, "train")[0]["mask"].max() == 1
    assert np.all(DATASETS.get("mask_folder")(config, "validation")[0]["mask"] == 2)


def test_mask_folder_bad_value_names_file_and_value(tmp_path: Path):
    root = _camvid(tmp_path)
    m = np.zeros((12, 16), np.uint8)
    m[3, 3] = 7
    _pair(root, "b", m)
    src = DATASETS.get("mask_folder")(cfg(train_dir=str(root), valid_list="valid.txt", void_class="Void"),
                                      "train")
    src[0]
    with pytest.raises(DataError, match=r"b_P\.png.*value 7"):
        src[1]
    # 255 is bad unless declared void.
    m[3, 3] = 255
    _pair(root, "b", m)
    with pytest.raises(DataError, match="value 255"):
        src[1]
    ok = DATASETS.get("mask_folder")(cfg(train_dir=str(root), valid_list="valid.txt", void_value=255), "train")
    assert ok[1]["mask"][3, 3] == IGNORE_INDEX and ok[1]["mask"][0, 0] == 0


def test_mask_folder_size_mismatch_and_missing_label(tmp_path: Path):
    root = _camvid(tmp_path)
    _pair(root, "b", np.ones((6, 8)), image_size=(12, 16))
    config = cfg(train_dir=str(root), valid_list="valid.txt")
    src = DATASETS.get("mask_folder")(config, "train")
    with pytest.raises(DataError, match=r"b_P\.png.*images/b\.png"):
        src[1]
    config.mask_mismatch = "resize"
    resized = DATASETS.get("mask_folder")(config, "train")[1]
    assert resized["mask"].shape == (12, 16) and np.all(resized["mask"] == 1)
    (root / "images" / "d.jpg").write_bytes((root / "images" / "a.png").read_bytes())
    with pytest.raises(DataError, match=r"images/d\.jpg.*no mask"):
        DATASETS.get("mask_folder")(cfg(train_dir=str(root), valid_list="valid.txt"), "train")
    skip = DATASETS.get("mask_folder")(cfg(train_dir=str(root), valid_list="valid.txt", bad_input="skip"), "train")
    assert len(skip) == 2 and len(skip.skipped) == 1 and "d.jpg" in skip.skipped[0]


# ---------------------------------------------------------------- synthetic shapes


def test_shapes_segmentation_wraps_semantic_map():
    config = cfg(image_size=48, num_train=6, num_val=3, shape_classes=3, max_objects=4, seed=2)
    src = DATASETS.get("shapes_segmentation")(config, "train")
    assert len(src) == 6 and src.num_classes == 4 and src.class_names[0] == "background"
    assert len(DATASETS.get("shapes_segmentation")(config, "validation")) == 3
    shapes = DATASETS.get("shapes")(config, "train")
    seen = set()
    for i in range(6):
        ex, det = src[i], shapes[i]
        assert ex["image"].shape == (48, 48, 3) and ex["mask"].shape == (48, 48) and ex["mask"].dtype == np.uint8
        np.testing.assert_array_equal(ex["image"], det["image"])
        # Background 0, each instance's visible pixels carry its label + 1.
        expect = np.zeros((48, 48), np.uint8)
        for m, label in zip(det["masks"], det["labels"], strict=True):
            expect[m.astype(bool)] = label + 1
        np.testing.assert_array_equal(ex["mask"], expect)
        np.testing.assert_array_equal(ex["mask"], src[i]["mask"])
        seen |= set(np.unique(ex["mask"]).tolist())
    assert 0 in seen and len(seen) >= 3 and max(seen) <= 3


# ---------------------------------------------------------------- transform


def _rect_example(h: int = 60, w: int = 90) -> dict:
    image = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    image[10:35, 12:40] = 255
    mask[10:35, 12:40] = 1
    return {"image": image, "mask": mask}


@pytest.mark.parametrize("train", [True, False])
def test_transform_keeps_image_and_mask_aligned(train: bool):
    t = make_segmentation_transform(48, train=train, scale_jitter=(0.6, 1.4))
    ex = _rect_example()
    flipped = 0
    for seed in range(12 if train else 1):
        out = t(ex, np.random.default_rng(seed))
        assert out["image"].shape == (48, 48, 3) and out["image"].dtype == np.float32
        assert out["mask"].shape == (48, 48) and out["mask"].dtype == np.int32
        assert set(np.unique(out["mask"])) <= {0, 1, IGNORE_INDEX}
        bright = denormalize(out["image"])[..., 0] > 127  # bilinear edges cross 127 where NEAREST switches
        rect = out["mask"] == 1
        if rect.sum() == 0:
            continue
        iou = (bright & rect).sum() / (bright | rect).sum()
        assert iou > 0.95, (seed, iou)  # a one-pixel shift gives < 0.9 here
        # Padding: ignore in the mask, the mean colour (0 after normalization) in the image.
        pad = out["mask"] == IGNORE_INDEX
        assert np.all(out["image"][pad] == 0)
        ys, xs = np.nonzero(rect)
        flipped += xs.mean() > 24  # the rectangle sits in the left half unless flipped
    if train:
        assert flipped > 0
    else:
        # Eval: longer side 90 -> 48 (60 -> 32 rows) at the top-left, the rest ignored. NEAREST takes
        # source column floor((x + 0.5) * 90 / 48): columns 6..20 fall in the rectangle's 12..39.
        assert np.all(out["mask"][32:] == IGNORE_INDEX) and np.all(out["mask"][:32] != IGNORE_INDEX)
        np.testing.assert_array_equal(np.nonzero(rect.any(0))[0][[0, -1]], [6, 20])


def test_transform_deterministic_and_random():
    ex = _rect_example()
    t = make_segmentation_transform(32, train=True)
    a, b = t(ex, np.random.default_rng([0, 1, 2])), t(ex, np.random.default_rng([0, 1, 2]))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    outs = {t(ex, np.random.default_rng(s))["mask"].tobytes() for s in range(6)}
    assert len(outs) > 1
    with pytest.raises(DataError, match="differs"):
        t({"image": ex["image"], "mask": ex["mask"][:10]}, np.random.default_rng(0))
