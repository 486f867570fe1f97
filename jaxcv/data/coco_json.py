"""Your own detection data: a COCO-format JSON file plus a folder of images.

Config (`data.name = "coco_json"`): `data.train_json`, `data.train_images`, `data.val_json`,
`data.val_images`, `data.bad_input` ("fail" | "skip"). Category ids map to contiguous labels in
sorted id order (`category_ids[label]` gives the id back for results files). Every problem names the
JSON file, the annotation/image id and the value: missing keys or fields, unknown image or category
ids, NaN boxes, boxes with no area or outside their image. With "skip" such annotations are dropped
and listed in `source.skipped`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxcv.data import DATASETS
from jaxcv.data.base import DataError, load_image
from jaxcv.data.classification import cfg_get, split_id

REQUIRED = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "category_id", "bbox"),
            "categories": ("id", "name")}


class CocoJsonSource:
    """Random-access COCO-JSON detection source; images are read lazily."""

    def __init__(self, json_path: str | Path, image_dir: str | Path, bad_input: str = "fail", tolerance: float = 1.0):
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
        self.skipped: list[str] = []
        try:
            data = json.loads(self.json_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read COCO json {self.json_path}: {e}") from e
        for key, fields in REQUIRED.items():
            if key not in data or not isinstance(data[key], list):
                raise DataError(f"{self.json_path}: missing top-level list {key!r}")
            for i, item in enumerate(data[key]):
                missing = [f for f in fields if f not in item]
                if missing:
                    ident = item.get("id", f"#{i}")
                    raise DataError(f"{self.json_path}: {key[:-1]} {ident} is missing field(s) {missing}")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c["name"]) for c in cats]
        self.num_classes = len(cats)
        cat_to_label = {cid: i for i, cid in enumerate(self.category_ids)}
        images = {int(im["id"]): im for im in data["images"]}
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        kept = []

        def bad(ann: dict[str, Any], problem: str) -> None:
            msg = f"{self.json_path}: annotation {ann.get('id')} (image {ann.get('image_id')}): {problem}"
            if bad_input == "fail":
                raise DataError(msg + " (set data.bad_input=skip to drop such annotations)")
            self.skipped.append(msg)

        for ann in data["annotations"]:
            image = images.get(int(ann["image_id"]))
            if image is None:
                bad(ann, f"unknown image_id {ann['image_id']}")
                continue
            if int(ann["category_id"]) not in cat_to_label:
                bad(ann, f"unknown category_id {ann['category_id']}; categories: {self.category_ids}")
                continue
            bbox = ann["bbox"]
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
                bad(ann, f"bbox {bbox} is not 4 finite numbers")
                continue
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                bad(ann, f"bbox {bbox} has no area (w or h <= 0)")
                continue
            iw, ih = image.get("width"), image.get("height")
            if iw and ih and (x < -tolerance or y < -tolerance or x + w > iw + tolerance or y + h > ih + tolerance):
                bad(ann, f"bbox {bbox} lies outside its {iw}x{ih} image")
                continue
            ann = {**ann, "area": float(ann.get("area", w * h)), "iscrowd": int(ann.get("iscrowd", 0))}
            per_image[int(ann["image_id"])].append(ann)
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
            "labels": np.array([self._cat_to_label[int(a["category_id"])] for a in anns], np.int32),
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


DATASETS.register("coco_json", coco_json)
