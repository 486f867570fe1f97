"""Your own detection data: a COCO-format JSON file plus a folder of images.

Config (`data.name = "coco_json"`): `data.train_json`, `data.train_images`, `data.val_json`,
`data.val_images`, `data.bad_input` ("fail" | "skip"). Category ids map to contiguous labels in
sorted id order (`category_ids[label]` gives the id back for results files). Every problem names the
JSON file, the annotation/image id and the value: missing keys or fields, unknown image or category
ids, NaN boxes, boxes with no area or outside their image. With "skip" such annotations are dropped,
listed in `source.skipped` and counted by reason in `source.skip_reasons`. Crowd flags (`iscrowd`)
are kept as the example's `iscrowd`; `coco_ground_truth()` is the file's dict with only the kept
annotations (and `area`/`iscrowd` filled in where missing, as pycocotools needs them).
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

    def __init__(self, json_path: str | Path, image_dir: str | Path, bad_input: str = "fail", tolerance: float = 1.0):
        if bad_input not in ("fail", "skip"):
            raise ValueError(f"bad_input must be 'fail' or 'skip', got {bad_input!r}")
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
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
        return {
            "image": image,
            "boxes": boxes,
            "labels": np.array([self._cat_to_label[a["category_id"]] for a in anns], np.int32),
            "iscrowd": np.array([bool(a["iscrowd"]) for a in anns], bool),
            "image_id": image_id,
        }

    def coco_ground_truth(self) -> dict[str, Any]:
        """The dataset dict with only the annotations the source kept (what evaluation compares to)."""
        return self._gt


def coco_json(data_config: Any, split: str) -> CocoJsonSource:
    """Factory for `data.name = "coco_json"` (see the module docstring for the fields)."""
    prefix = "train" if split_id(split) == 0 else "val"
    json_path, images = cfg_get(data_config, f"{prefix}_json"), cfg_get(data_config, f"{prefix}_images")
    if not json_path or not images:
        raise DataError(f"coco_json needs data.{prefix}_json and data.{prefix}_images")
    return CocoJsonSource(json_path, images, bad_input=cfg_get(data_config, "bad_input", "fail"))


register_dataset("coco_json", coco_json, ("train_json", "train_images", "val_json", "val_images"))
