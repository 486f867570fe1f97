"""PASCAL VOC and COCO from tensorflow-datasets, random access through `tfds.data_source`.

Prepare once (needs a network): `tfds build voc/2007 --file_format=array_record` (also `voc/2012`,
`coco/2017`). Config: `data.name = "voc" | "coco"`, `data.tfds_name` (e.g. "voc/2007"),
`data.extra_train` (another tfds name whose train split is added, e.g. "voc/2012" for VOC 07+12),
`data.train_split`, `data.eval_split`, `data.tfds_data_dir`.

tfds boxes are normalized [ymin, xmin, ymax, xmax]; here they become xyxy pixels. Records are
sanitized rather than trusted (tfds' mock data, used by the tests, has inverted boxes and object
fields of different lengths): fields are cut to the shortest length, and boxes with NaN or no area
are dropped and counted in `source.dropped`. VOC `difficult` objects are kept as `iscrowd` in the
COCO ground truth, so detections on them count neither as true nor as false positives, as the VOC
devkit ignores them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxcv.data import DATASETS
from jaxcv.data.classification import cfg_get, open_tfds, split_id

# Official COCO category ids of tfds' 80 contiguous labels (the 2017 detection categories, sorted).
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]
DEFAULT_SPLITS = {"voc": ("train+validation", "test"), "coco": ("train", "validation")}


class TfdsDetection:
    """One or more tfds detection splits as a random-access source of raw examples."""

    def __init__(self, kind: str, parts: list[tuple[str, str]], data_dir: str | None = None):
        self.kind = kind
        self._sources = [open_tfds(name, split, data_dir) for name, split in parts]
        info = self._sources[0][1]
        feature = info.features["objects"]["label"]
        names = getattr(feature, "names", None) or [str(i) for i in range(feature.num_classes)]
        self.class_names = list(names)
        self.num_classes = len(names)
        if kind == "coco" and self.num_classes == len(COCO_CATEGORY_IDS):
            self.category_ids = list(COCO_CATEGORY_IDS)
        else:
            self.category_ids = list(range(1, self.num_classes + 1))
        self._offsets = np.cumsum([0] + [len(s) for s, _ in self._sources])
        self.dropped = 0
        self._gt: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _record(self, index: int) -> dict[str, Any]:
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return self._sources[part][0][int(index - self._offsets[part])]

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self._record(index)
        image = np.asarray(rec["image"])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3].astype(np.uint8)
        h, w = image.shape[:2]
        boxes, labels, crowd = self._objects(rec, h, w)
        return {"image": image, "boxes": boxes, "labels": labels, "iscrowd": crowd,
                "image_id": self._image_id(rec, index)}

    def _image_id(self, rec: dict[str, Any], index: int) -> int:
        if self.kind == "coco" and "image/id" in rec:
            return int(rec["image/id"])
        return index + 1  # VOC has no numeric id

    def _objects(self, rec: dict[str, Any], h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obj = rec["objects"]
        bbox = np.asarray(obj["bbox"], np.float32).reshape(-1, 4)
        label = np.asarray(obj["label"], np.int64).reshape(-1)
        flag = obj.get("is_crowd", obj.get("is_difficult", np.zeros(len(bbox), bool)))
        flag = np.asarray(flag, bool).reshape(-1)
        n = min(len(bbox), len(label), len(flag))
        bbox, label, flag = bbox[:n], label[:n], flag[:n]
        boxes = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=1)
        ok = (np.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
              & (label >= 0) & (label < self.num_classes))
        self.dropped += int((~ok).sum())
        return boxes[ok].astype(np.float32), label[ok].astype(np.int32), flag[ok]

    def coco_ground_truth(self) -> dict[str, Any]:
        """COCO-format ground truth of the whole split at original resolution (built once)."""
        if self._gt is None:
            images, anns = [], []
            for i in range(len(self)):
                ex = self[i]
                h, w = ex["image"].shape[:2]
                images.append({"id": ex["image_id"], "height": h, "width": w})
                for box, label, crowd in zip(ex["boxes"], ex["labels"], ex["iscrowd"], strict=True):
                    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
                    anns.append({"id": len(anns) + 1, "image_id": ex["image_id"],
                                 "category_id": self.category_ids[int(label)],
                                 "bbox": [float(box[0]), float(box[1]), bw, bh], "area": bw * bh,
                                 "iscrowd": int(crowd)})
            cats = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)]
            self._gt = {"images": images, "annotations": anns, "categories": cats}
        return self._gt


def _factory(kind: str, default_name: str):
    def factory(data_config: Any, split: str) -> TfdsDetection:
        name = cfg_get(data_config, "tfds_name", default_name) or default_name
        train, val = DEFAULT_SPLITS[kind]
        data_dir = cfg_get(data_config, "tfds_data_dir") or None
        if split_id(split) == 0:
            tfds_split = cfg_get(data_config, "train_split", train)
            parts = [(name, tfds_split)]
            extra = cfg_get(data_config, "extra_train", "")
            if extra:
                parts.append((extra, tfds_split))
        else:
            parts = [(name, cfg_get(data_config, "eval_split", val))]
        return TfdsDetection(kind, parts, data_dir)

    factory.__doc__ = f"tfds {default_name}-style detection source (see the module docstring for the fields)."
    return factory


DATASETS.register("voc", _factory("voc", "voc/2007"))
DATASETS.register("coco", _factory("coco", "coco/2017"))
