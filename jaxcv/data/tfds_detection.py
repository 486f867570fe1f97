"""PASCAL VOC and COCO from tensorflow-datasets, random access through `tfds.data_source`.

Prepare once (needs a network): `tfds build voc/2007 --file_format=array_record` (also `voc/2012`,
`coco/2017`), or `tfds.builder(name).download_and_prepare(file_format="array_record")`. Config:
`data.name = "voc" | "coco"`, `data.tfds_name` (e.g. "voc/2007"), `data.extra_train` (another tfds
name whose train split is added, e.g. "voc/2012" for VOC 07+12), `data.train_split`,
`data.eval_split` (defaults: VOC "train+validation" / "test", COCO "train" / "validation"),
`data.tfds_data_dir`.

Why `data_source` only: array_record gives O(1) random access, which the resumable loader needs,
and `tfds.testing.mock_data` mocks it (with the default and the USE_CODE policies; coco/2017, whose
tfds code needs TensorFlow, with its saved metadata in tests/data/tfds_metadata), so the tests
exercise the real code path offline. Without TensorFlow a prepared coco/2017 is read from the
metadata saved beside it (`open_tfds`). Data prepared as TFRecord is not read by materialising the
whole split in memory (COCO train would not fit); the DataError says how to convert it
(`tfds convert_format --out_file_format=array_record`) or rebuild it. Missing data raises a DataError
with the `tfds build` command, never a download attempt.

tfds boxes are normalized [ymin, xmin, ymax, xmax]; here they become xyxy pixels (VOC's are its
1-based pixel coordinates, as tfds divides them by the size unchanged). Records are sanitized rather
than trusted (tfds' mock data has inverted boxes and object fields of different lengths): fields are
cut to the shortest length, boxes are clipped to the image, and boxes with NaN, no area (inverted,
empty, fully outside) or a label outside [0, num_classes) are dropped; `source.dropped` counts the
objects dropped and `source.drop_reasons` why ("length_mismatch", "invalid_box", "bad_label"),
over the items this process has read.

Examples carry `iscrowd` bool [N]: COCO's `is_crowd`; for VOC the `is_difficult` flags, so training
skips difficult objects (as mmdetection's VOC pipeline ignores them) and COCO-style evaluation
neither rewards nor penalizes detections on them (as the VOC devkit). VOC examples also carry
`difficult` bool [N]; COCO examples carry `area` float32 [N] (the segment area from the annotation
file, which COCO's small/medium/large ranges use).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np

from jaxcv.data import TFDS_KEYS, register_dataset
from jaxcv.data.base import DataError, cfg_get, open_tfds, split_id

# Official COCO category ids of tfds' 80 contiguous labels (the 2017 detection categories, sorted).
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]
# Their names, in the same order (tfds takes them from the annotation file; its mock data has "0".."79").
COCO_CLASS_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
DEFAULT_SPLITS = {"voc": ("train+validation", "test"), "coco": ("train", "validation")}


class TfdsDetection:
    """One or more tfds detection splits as a random-access source of raw examples.

    `kind` is "voc" or "coco"; `parts` are (tfds name, tfds split) pairs, concatenated in order.
    """

    def __init__(self, kind: str, parts: list[tuple[str, str]], data_dir: str | None = None):
        if kind not in DEFAULT_SPLITS:
            raise ValueError(f"kind must be one of {sorted(DEFAULT_SPLITS)}, got {kind!r}")
        self.kind = kind
        self.parts = list(parts)
        self._sources = [open_tfds(name, split, data_dir) for name, split in parts]
        info = self._sources[0][1]
        feature = info.features["objects"]["label"]
        names = getattr(feature, "names", None) or [str(i) for i in range(feature.num_classes)]
        self.num_classes = len(names)
        if kind == "coco" and self.num_classes == len(COCO_CATEGORY_IDS):
            self.category_ids = list(COCO_CATEGORY_IDS)
            self.class_names = list(COCO_CLASS_NAMES)
        else:
            self.category_ids = list(range(1, self.num_classes + 1))
            self.class_names = list(names)
        self._offsets = np.cumsum([0] + [len(s) for s, _ in self._sources])
        self.dropped = 0
        self.drop_reasons: Counter[str] = Counter()
        self._lock = threading.Lock()  # the loader reads items from several threads
        self._gt: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _record(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples of {self.parts}")
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return self._sources[part][0][int(index - self._offsets[part])]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        rec = self._record(index)
        image = np.asarray(rec["image"])
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        image = image[..., :3].astype(np.uint8)
        h, w = image.shape[:2]
        ex = {"image": image, **self._objects(rec, h, w), "image_id": self._image_id(rec, index)}
        if self.kind == "voc":
            ex["difficult"] = ex["iscrowd"].copy()
        return ex

    def _image_id(self, rec: dict[str, Any], index: int) -> int:
        if self.kind == "coco" and "image/id" in rec:
            return int(rec["image/id"])
        return index + 1  # VOC has no numeric id

    def _count(self, reason: str, n: int) -> None:
        if n:
            with self._lock:
                self.dropped += n
                self.drop_reasons[reason] += n

    def _objects(self, rec: dict[str, Any], h: int, w: int) -> dict[str, np.ndarray]:
        """boxes [N, 4] xyxy pixels, labels int32 [N], iscrowd bool [N] (+ area [N] for COCO)."""
        obj = rec["objects"]
        bbox = np.asarray(obj["bbox"], np.float32).reshape(-1, 4)
        label = np.asarray(obj["label"], np.int64).reshape(-1)
        flag_key = "is_crowd" if "is_crowd" in obj else "is_difficult" if "is_difficult" in obj else None
        flag = np.asarray(obj[flag_key], bool).reshape(-1) if flag_key else np.zeros(len(bbox), bool)
        fields = [bbox, label, flag]
        if self.kind == "coco" and "area" in obj:
            fields.append(np.asarray(obj["area"], np.float32).reshape(-1))
        n = min(len(f) for f in fields)
        self._count("length_mismatch", max(len(f) for f in fields) - n)
        fields = [f[:n] for f in fields]
        bbox, label, flag = fields[:3]
        raw = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=1)
        finite = np.isfinite(raw).all(1)
        boxes = np.clip(np.where(finite[:, None], raw, 0), 0, [w, h, w, h])
        box_ok = finite & (raw[:, 2] > raw[:, 0]) & (raw[:, 3] > raw[:, 1])
        box_ok &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        label_ok = (label >= 0) & (label < self.num_classes)
        self._count("invalid_box", int((~box_ok).sum()))
        self._count("bad_label", int((box_ok & ~label_ok).sum()))
        ok = box_ok & label_ok
        out = {"boxes": boxes[ok].astype(np.float32), "labels": label[ok].astype(np.int32), "iscrowd": flag[ok]}
        if len(fields) == 4:
            out["area"] = fields[3][ok]
        return out

    def coco_ground_truth(self) -> dict[str, Any]:
        """COCO-format ground truth of the whole split at original resolution (built once, reading
        every example: about a minute for COCO val2017 or VOC07 test). `area` is COCO's segment area
        where the data has it, else the box area; VOC annotations also get `difficult`."""
        if self._gt is None:
            images, anns = [], []
            for i in range(len(self)):
                ex = self[i]
                h, w = ex["image"].shape[:2]
                images.append({"id": ex["image_id"], "height": h, "width": w})
                areas = ex.get("area")
                for j, (box, label, crowd) in enumerate(zip(ex["boxes"], ex["labels"], ex["iscrowd"], strict=True)):
                    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
                    ann = {"id": len(anns) + 1, "image_id": ex["image_id"],
                           "category_id": self.category_ids[int(label)],
                           "bbox": [float(box[0]), float(box[1]), bw, bh],
                           "area": float(areas[j]) if areas is not None and areas[j] > 0 else bw * bh,
                           "iscrowd": int(crowd)}
                    if self.kind == "voc":
                        ann["difficult"] = int(crowd)
                    anns.append(ann)
            ids = [im["id"] for im in images]
            if len(set(ids)) != len(ids):
                raise DataError(f"tfds {self.parts}: duplicate image ids; evaluate one dataset at a time")
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


register_dataset("voc", _factory("voc", "voc/2007"), (*TFDS_KEYS, "extra_train"))
register_dataset("coco", _factory("coco", "coco/2017"), (*TFDS_KEYS, "extra_train"))
