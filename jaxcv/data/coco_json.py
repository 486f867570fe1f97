"""Your own detection data: a COCO-format JSON file plus a folder of images.

Config (`data.name = "coco_json"`): `data.train_json`, `data.train_images`, `data.val_json`,
`data.val_images`, `data.bad_input` ("fail" | "skip"). Category ids map to contiguous labels in
sorted id order (`category_ids[label]` gives the id back for results files). Every problem names the
JSON file, the annotation/image id and the value: missing keys or fields, unknown image or category
ids, NaN boxes, boxes with no area or outside their image. With "skip" such annotations are dropped,
listed in `source.skipped` and counted by reason in `source.skip_reasons`. Crowd flags (`iscrowd`)
are kept as the example's `iscrowd`; `coco_ground_truth()` is the file's dict with only the kept
annotations (and `area`/`iscrowd` filled in where missing, as pycocotools needs them).

Instance masks (`data.masks = True`, e.g. for `task="promptable_segmentation"`): every annotation then needs a
`segmentation`, polygons ([[x1, y1, x2, y2, ...], ...]) or RLE ({"size": [H, W], "counts": [runs] or COCO's
compressed string}); examples gain `masks` uint8 [N, H, W]. RLE is decoded here exactly (column-major runs,
pycocotools' string codec); polygons with pycocotools when it is installed (COCO's own rasterization), else with
Pillow's `ImageDraw.polygon` (may differ from COCO's by a pixel along edges). A missing or malformed
segmentation is a bad annotation (`bad_input`); an RLE whose size is not its image's fails naming both.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from jaxcv.data import register_dataset
from jaxcv.data.base import DataError, cfg_get, load_image, split_id

SINGULAR = {"images": "image", "annotations": "annotation", "categories": "category"}
REQUIRED = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "category_id", "bbox"),
            "categories": ("id", "name")}


class CocoJsonSource:
    """Random-access COCO-JSON detection source; images are read lazily with `base.load_image`.

    Structure problems (unreadable JSON, a missing top-level list, images, categories or annotations
    without their required fields, duplicate image or category ids, no images) always raise DataError,
    whatever the policy. Annotation problems (unknown image or category id, non-finite bbox,
    w <= 0 or h <= 0, more than `tolerance` pixels outside its image) raise with `bad_input="fail"`;
    with "skip" the annotation is dropped, its message appended to `skipped` and its reason counted
    in `skip_reasons`.
    Boxes within `tolerance` of the border are kept (the transform clips them).
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path, bad_input: str = "fail", tolerance: float = 1.0,
                 masks: bool = False):
        if bad_input not in ("fail", "skip"):
            raise ValueError(f"bad_input must be 'fail' or 'skip', got {bad_input!r}")
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
        self.masks = bool(masks)
        self.skipped: list[str] = []
        self.skip_reasons: Counter[str] = Counter()
        try:
            data = json.loads(self.json_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read COCO json {self.json_path}: {e}") from e
        if not isinstance(data, dict):
            raise DataError(f"{self.json_path}: expected a JSON object with images/annotations/categories")
        for key, fields in REQUIRED.items():
            if key not in data or not isinstance(data[key], list):
                raise DataError(f"{self.json_path}: missing top-level list {key!r}")
            for i, item in enumerate(data[key]):
                if not isinstance(item, dict):
                    raise DataError(f"{self.json_path}: {key} entry #{i} is not an object: {item!r:.80}")
                missing = [f for f in fields if f not in item]
                if missing:
                    ident = item.get("id", f"#{i}")
                    raise DataError(f"{self.json_path}: {SINGULAR[key]} {ident} is missing field(s) {missing}")
        for key in ("images", "categories"):
            ids = [item["id"] for item in data[key]]
            not_int = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
            if not_int:
                raise DataError(f"{self.json_path}: {SINGULAR[key]} ids must be integers, got {not_int[:5]}")
            dup = sorted(i for i, n in Counter(ids).items() if n > 1)
            if dup:
                raise DataError(f"{self.json_path}: duplicate {SINGULAR[key]} id(s) {dup[:10]}")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c["name"]) for c in cats]
        self.num_classes = len(cats)
        cat_to_label = {cid: i for i, cid in enumerate(self.category_ids)}
        images = {im["id"]: im for im in data["images"]}
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        kept = []

        def bad(ann: dict[str, Any], reason: str, problem: str) -> None:
            msg = f"{self.json_path}: annotation {ann.get('id')} (image {ann.get('image_id')}): {problem}"
            if bad_input == "fail":
                raise DataError(msg + " (set data.bad_input=skip to drop such annotations)")
            self.skipped.append(msg)
            self.skip_reasons[reason] += 1

        for ann in data["annotations"]:
            image = images.get(ann["image_id"])
            if image is None:
                bad(ann, "unknown_image", f"unknown image_id {ann['image_id']!r}")
                continue
            if ann["category_id"] not in cat_to_label:
                problem = f"unknown category_id {ann['category_id']!r}; categories: {self.category_ids}"
                bad(ann, "unknown_category", problem)
                continue
            bbox = ann["bbox"]
            if (not isinstance(bbox, list) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
                bad(ann, "bad_bbox", f"bbox {bbox} is not 4 finite numbers")
                continue
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                bad(ann, "empty_bbox", f"bbox {bbox} has no area (w or h <= 0)")
                continue
            iw, ih = image.get("width"), image.get("height")
            if iw and ih and (x < -tolerance or y < -tolerance or x + w > iw + tolerance or y + h > ih + tolerance):
                bad(ann, "outside_image", f"bbox {bbox} lies outside its {iw}x{ih} image")
                continue
            if self.masks:
                problem = segmentation_problem(ann.get("segmentation"))
                if problem:
                    bad(ann, "bad_segmentation", problem)
                    continue
            ann = {**ann, "area": float(ann.get("area", w * h)), "iscrowd": int(ann.get("iscrowd", 0))}
            per_image[ann["image_id"]].append(ann)
            kept.append(ann)
        self.image_ids = sorted(images)
        if not self.image_ids:
            raise DataError(f"{self.json_path}: the split has no images")
        self._images = images
        self._anns = per_image
        self._cat_to_label = cat_to_label
        self._gt = {**{k: v for k, v in data.items() if k not in ("annotations",)}, "annotations": kept}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        info = self._images[image_id]
        path = self.image_dir / info["file_name"]
        image = load_image(path)
        h, w = image.shape[:2]
        if info.get("height") and info.get("width") and (info["height"], info["width"]) != (h, w):
            raise DataError(
                f"{path}: image is {w}x{h} but {self.json_path} says {info['width']}x{info['height']}"
            )
        anns = self._anns[image_id]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32).reshape(-1, 4)
        out = {
            "image": image,
            "boxes": boxes,
            "labels": np.array([self._cat_to_label[a["category_id"]] for a in anns], np.int32),
            "iscrowd": np.array([bool(a["iscrowd"]) for a in anns], bool),
            "image_id": image_id,
        }
        if self.masks:
            decoded = []
            for a in anns:
                try:
                    decoded.append(decode_segmentation(a["segmentation"], h, w))
                except ValueError as e:
                    raise DataError(f"{self.json_path}: annotation {a['id']} (image {image_id}, {path}): {e}") from e
            out["masks"] = np.stack(decoded) if decoded else np.zeros((0, h, w), np.uint8)
        return out

    def coco_ground_truth(self) -> dict[str, Any]:
        """The dataset dict with only the annotations the source kept (what evaluation compares to)."""
        return self._gt


# ---------------------------------------------------------------- segmentations (polygons, RLE)


def segmentation_problem(seg: Any) -> str:
    """"" when `seg` is COCO polygons or RLE in form, else what is wrong with it."""
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            return f"RLE segmentation has size {size!r}, expected [height, width]"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
                return f"RLE counts must be non-negative integers summing to {size[0]} x {size[1]}"
            return ""
        if isinstance(counts, str):
            return ""
        return f"RLE counts is {type(counts).__name__}, expected a list of runs or a compressed string"
    if isinstance(seg, list) and seg:
        for poly in seg:
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly)):
                return f"polygon {str(poly)[:60]} is not [x1, y1, x2, y2, ...] with at least 3 points"
        return ""
    return f"segmentation {str(seg)[:60]!r} is neither polygons nor RLE (set data.masks=False to read boxes only)"


def rle_from_string(text: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools `rleFrString`: 5 bits per character from '0',
    0x20 = more, sign bit 0x10 on the last; from the third count on, the count two places back is added)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("compressed RLE string ends inside a count")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(counts: list[int], h: int, w: int) -> np.ndarray:
    """Run lengths (zeros first, column-major as COCO) -> uint8 [h, w]."""
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"RLE runs sum to {sum(counts)} for a {h} x {w} mask")
    values = np.arange(len(counts)) % 2
    return np.repeat(values.astype(np.uint8), counts).reshape(w, h).T.copy()


def polygons_decode(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    """COCO polygons (union) -> uint8 [h, w]: pycocotools' rasterization if installed, else Pillow's."""
    try:
        from pycocotools import mask as mask_util
    except ImportError:
        from PIL import Image, ImageDraw

        im = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(im)
        for poly in polygons:
            draw.polygon([(float(x), float(y)) for x, y in zip(poly[0::2], poly[1::2], strict=True)], fill=1)
        return np.asarray(im, np.uint8)
    rles = mask_util.frPyObjects([[float(v) for v in p] for p in polygons], h, w)
    return np.asarray(mask_util.decode(mask_util.merge(rles)), np.uint8)


def decode_segmentation(seg: Any, h: int, w: int) -> np.ndarray:
    """A COCO `segmentation` (polygons or RLE) on an h x w image -> uint8 [h, w] (0/1)."""
    problem = segmentation_problem(seg)
    if problem:
        raise ValueError(problem)
    if isinstance(seg, list):
        return polygons_decode(seg, h, w)
    if list(seg["size"]) != [h, w]:
        raise ValueError(f"RLE size {seg['size']} is not the image's [{h}, {w}]")
    counts = seg["counts"] if isinstance(seg["counts"], list) else rle_from_string(seg["counts"])
    return rle_decode(counts, h, w)


def coco_json(data_config: Any, split: str) -> CocoJsonSource:
    """Factory for `data.name = "coco_json"` (see the module docstring for the fields)."""
    prefix = "train" if split_id(split) == 0 else "val"
    json_path, images = cfg_get(data_config, f"{prefix}_json"), cfg_get(data_config, f"{prefix}_images")
    if not json_path or not images:
        raise DataError(f"coco_json needs data.{prefix}_json and data.{prefix}_images")
    return CocoJsonSource(json_path, images, bad_input=cfg_get(data_config, "bad_input", "fail"),
                          masks=bool(cfg_get(data_config, "masks", False)))


register_dataset("coco_json", coco_json, ("train_json", "train_images", "val_json", "val_images", "masks"))
