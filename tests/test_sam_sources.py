"""Instance-mask sources for promptable segmentation: COCO-JSON polygons / RLE (`data.masks`) and the mask folder's
`data.instances` ("components", "ids"); tiny files written by each test. pycocotools (a test dependency) is the
reference for RLE strings and polygon rasterization."""

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from jaxcv.data import DATASETS
from jaxcv.data.base import DataError
from jaxcv.data.coco_json import decode_segmentation, polygons_decode, rle_decode, rle_from_string

H, W = 24, 32


def blob_masks() -> np.ndarray:
    """Three instance masks [3, H, W]: a rectangle, an L shape, a disc."""
    m = np.zeros((3, H, W), np.uint8)
    m[0, 2:9, 3:15] = 1
    m[1, 12:22, 2:6] = 1
    m[1, 18:22, 2:14] = 1
    yy, xx = np.mgrid[:H, :W]
    m[2] = (yy - 14) ** 2 + (xx - 24) ** 2 <= 25
    return m


def write_coco(tmp: Path, anns: list[dict], name: str = "ann.json") -> dict[str, str]:
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)).save(images / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
            "categories": [{"id": 3, "name": "thing"}, {"id": 5, "name": "other"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 3 + 2 * (i % 2), **a}
                            for i, a in enumerate(anns)]}
    (tmp / name).write_text(json.dumps(coco))
    return {"train_json": str(tmp / name), "train_images": str(images)}


def bbox_of(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def test_rle_string_and_runs_decode_as_pycocotools():
    masks = blob_masks()
    for m in masks:
        rle = mask_util.encode(np.asfortranarray(m))
        text = rle["counts"].decode()
        np.testing.assert_array_equal(decode_segmentation({"size": [H, W], "counts": text}, H, W), m)
        runs = rle_from_string(text)
        assert sum(runs) == H * W
        np.testing.assert_array_equal(rle_decode(runs, H, W), m)
    # a long run (> 2^5, several characters, a negative difference) round-trips
    big = np.zeros((300, 200), np.uint8)
    big[10:290, 5:7] = 1
    big[:3, 150:] = 1
    rle = mask_util.encode(np.asfortranarray(big))
    np.testing.assert_array_equal(decode_segmentation({"size": [300, 200], "counts": rle["counts"].decode()},
                                                      300, 200), big)


def test_coco_json_masks_from_polygons_and_rle(tmp_path: Path):
    masks = blob_masks()
    poly = [[3, 2, 15, 2, 15, 9, 3, 9]]  # the rectangle's outline on pixel edges
    runs = mask_util.encode(np.asfortranarray(masks[1]))
    runs_list = rle_from_string(runs["counts"].decode())
    anns = [{"bbox": bbox_of(masks[0]), "segmentation": poly},
            {"bbox": bbox_of(masks[1]), "segmentation": {"size": [H, W], "counts": runs_list}},
            {"bbox": bbox_of(masks[2]), "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": mask_util.encode(np.asfortranarray(masks[2]))["counts"]
                              .decode()}}]
    cfg = ml_collections.ConfigDict({**write_coco(tmp_path, anns), "masks": True})
    ex = DATASETS.get("coco_json")(cfg, "train")[0]
    assert ex["masks"].shape == (3, H, W) and ex["masks"].dtype == np.uint8
    reference = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, H, W)))
    np.testing.assert_array_equal(ex["masks"][0], reference)
    np.testing.assert_array_equal(ex["masks"][1:], masks[1:])
    assert ex["iscrowd"].tolist() == [False, False, True]
    assert ex["labels"].tolist() == [0, 1, 0]
    # without data.masks the source reads boxes only, as before
    ex = DATASETS.get("coco_json")(ml_collections.ConfigDict(write_coco(tmp_path, anns)), "train")[0]
    assert "masks" not in ex


def test_polygons_without_pycocotools_use_pillow(monkeypatch):
    """Pillow's fill of the same polygon agrees with COCO's raster but along the edges."""
    import builtins

    poly = [[4.0, 3.0, 27.0, 5.0, 20.0, 20.0, 6.0, 17.0]]
    coco = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, H, W))).astype(bool)
    real_import = builtins.__import__

    def no_pycocotools(name, *args, **kwargs):
        if name.startswith("pycocotools"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pycocotools)
    pil = polygons_decode(poly, H, W).astype(bool)
    differ = coco ^ pil
    assert coco.sum() > 150 and differ.sum() < 0.15 * coco.sum(), (coco.sum(), differ.sum())
    from scipy import ndimage

    interior = ndimage.binary_erosion(coco)
    assert pil[interior].all()  # every disagreement is on the boundary


@pytest.mark.parametrize("seg, message", [
    (None, "neither polygons nor RLE"),
    ([[1, 2, 3, 4]], "at least 3 points"),
    ({"size": [H, W], "counts": [5, 3]}, "summing to"),
    ({"size": [H], "counts": "abc"}, "expected [height, width]"),
])
def test_bad_segmentation_fails_naming_the_annotation_or_is_skipped(tmp_path: Path, seg, message):
    good = {"bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}
    bad = {"bbox": [1, 1, 5, 5]} if seg is None else {"bbox": [1, 1, 5, 5], "segmentation": seg}
    files = write_coco(tmp_path, [good, bad])
    with pytest.raises(DataError, match=r"ann\.json: annotation 2 \(image 1\): .*" + message.replace("[", r"\[")):
        DATASETS.get("coco_json")(ml_collections.ConfigDict({**files, "masks": True}), "train")
    src = DATASETS.get("coco_json")(ml_collections.ConfigDict({**files, "masks": True, "bad_input": "skip"}),
                                    "train")
    assert src.skip_reasons["bad_segmentation"] == 1 and len(src[0]["masks"]) == 1


def test_rle_of_another_size_fails_naming_image_and_annotation(tmp_path: Path):
    rle = mask_util.encode(np.asfortranarray(np.ones((H, W + 1), np.uint8)))
    files = write_coco(tmp_path, [{"bbox": [1, 1, 5, 5], "segmentation": {"size": [H, W + 1],
                                                                          "counts": rle["counts"].decode()}}])
    src = DATASETS.get("coco_json")(ml_collections.ConfigDict({**files, "masks": True}), "train")
    with pytest.raises(DataError, match=r"annotation 1 \(image 1, .*a\.png\): RLE size \[24, 33\] is not the "
                                        r"image's \[24, 32\]"):
        src[0]


# ---------------------------------------------------------------- mask folder


def write_mask_folder(root: Path, semantic: np.ndarray, ids: np.ndarray | None = None) -> ml_collections.ConfigDict:
    for d in ("images", "labels", "instances"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "codes.txt").write_text("background\ncar\nperson\nVoid\n")
    h, w = semantic.shape
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / "f0.png")
    Image.fromarray(semantic).save(root / "labels" / "f0_P.png")
    if ids is not None:
        Image.fromarray(ids).save(root / "instances" / "f0.png")
    return ml_collections.ConfigDict({"train_dir": str(root), "void_class": "Void"})


def test_mask_folder_instances_from_connected_components(tmp_path: Path):
    sem = np.zeros((H, W), np.uint8)
    sem[1:5, 1:5] = 1  # two separate cars
    sem[10:14, 20:30] = 1
    sem[15:22, 3:9] = 2  # one person, touching a void patch
    sem[15:22, 9:11] = 3
    cfg = write_mask_folder(tmp_path, sem)
    cfg.instances = "components"
    cfg.stuff_classes = ("background",)
    ex = DATASETS.get("mask_folder")(cfg, "train")[0]
    assert ex["labels"].tolist() == [1, 1, 2]
    np.testing.assert_array_equal(ex["boxes"], [[1, 1, 5, 5], [20, 10, 30, 14], [3, 15, 9, 22]])
    assert ex["masks"].shape == (3, H, W) and ex["masks"].sum(axis=(1, 2)).tolist() == [16, 40, 42]
    assert (ex["mask"] == sem.clip(0, 2) * (sem != 3) + 255 * (sem == 3)).all()  # semantic mask as before
    cfg.min_instance_area = 20
    assert DATASETS.get("mask_folder")(cfg, "train")[0]["labels"].tolist() == [1, 2]
    # without data.instances: the semantic example only
    del cfg["instances"], cfg["stuff_classes"], cfg["min_instance_area"]
    assert set(DATASETS.get("mask_folder")(cfg, "train")[0]) == {"image", "mask"}


def test_mask_folder_instances_from_id_pngs(tmp_path: Path):
    sem = np.zeros((H, W), np.uint8)
    sem[2:12, 2:20] = 1
    ids = np.zeros((H, W), np.uint8)
    ids[2:12, 2:10] = 7  # two touching cars: one component, two instances
    ids[2:12, 10:20] = 3
    ids[14:18, 14:18] = 9  # an instance over background pixels but one void pixel: labelled background
    sem[14, 14] = 3
    cfg = write_mask_folder(tmp_path, sem, ids)
    cfg.instances = "ids"
    ex = DATASETS.get("mask_folder")(cfg, "train")[0]
    assert ex["labels"].tolist() == [1, 1, 0]  # id order 3, 7, 9
    np.testing.assert_array_equal(ex["boxes"], [[10, 2, 20, 12], [2, 2, 10, 12], [14, 14, 18, 18]])
    (tmp_path / "instances" / "f0.png").unlink()
    with pytest.raises(DataError, match=r"f0\.png has no instance-id mask \(expected .*instances/f0\.png\)"):
        DATASETS.get("mask_folder")(cfg, "train")
    cfg.instances = "blobs"
    with pytest.raises(ValueError, match="data.instances must be '', 'components' or 'ids', got 'blobs'"):
        DATASETS.get("mask_folder")(cfg, "train")


def test_promptable_task_reads_coco_json_masks(tmp_path: Path):
    """The prompt transform on a COCO-JSON example: real prompts for the two non-crowd instances only, their
    ground-truth masks resized with the image (longest side 64, nearest)."""
    from jaxcv.config import load_config_file
    from jaxcv.tasks import create_task

    masks = blob_masks()
    anns = [{"bbox": bbox_of(m), "segmentation": {"size": [H, W], "counts": mask_util.encode(
        np.asfortranarray(m))["counts"].decode()}, "iscrowd": int(i == 1)} for i, m in enumerate(masks)]
    files = write_coco(tmp_path, anns)
    c = load_config_file("configs/shapes_sam_finetune.py:smoke")
    with c.unlocked():
        c.data = ml_collections.ConfigDict({"name": "coco_json", **files, "val_json": files["train_json"],
                                            "val_images": files["train_images"], "masks": True, "image_size": 64,
                                            "max_boxes": 4, "augment": {"hflip": False}, "num_threads": 1,
                                            "bad_input": "fail", "num_classes": 0})
    task = create_task(c)
    task.validate()
    ex = task.make_transform(False)(task.source("validation")[0], np.random.default_rng(0))
    assert ex["box_mask"].tolist() == [True, True, False, False]
    scale = 64 / W
    np.testing.assert_allclose(ex["boxes"][:2], np.array([[3, 2, 15, 9], [19, 9, 30, 20]]) * scale, atol=1e-5)
    for j, i in enumerate((0, 2)):
        want = np.asarray(Image.fromarray(masks[i]).resize((64, 48), Image.NEAREST))
        np.testing.assert_array_equal(ex["gt_masks"][j, :48], want)
        assert not ex["gt_masks"][j, 48:].any()
