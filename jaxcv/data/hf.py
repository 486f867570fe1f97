"""Hugging Face `datasets` as a source: classification, detection and segmentation, random access through Arrow.

Config (`data.name = "hf"`):
- `data.hf_path`: a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (opened with
  `datasets.load_from_disk`, memory-mapped, no network), or anything `datasets.load_dataset` takes: a Hub name
  ("cppe-5", "beans", "scene_parse_150"; needs a network the first time, then the HF cache) or a local data folder;
  `data.hf_config`: the dataset's configuration name (`load_dataset(path, name)`), "" for none.
- `data.train_split` ("train"), `data.eval_split` ("validation", else "test" when the dataset has no validation
  split). A split may be sliced as `datasets` writes it: "train[:80%]", "train[80%:]", "test[:100]". A directory
  holding a single `Dataset` (not a dict) is every split's data: slice it ("train[:90%]" / "train[90%:]").
- `data.image_field` ("image"): an `Image()` column (bytes or path, decoded here with Pillow to uint8 RGB) or an
  array column [H, W(, C)].
- The task follows the configured fields: `data.objects_field` set (e.g. "objects") -> detection, `data.mask_field`
  set (e.g. "annotation", "mask") -> segmentation, neither -> classification by `data.label_field` ("label").
- Detection: each row's objects are a list of dicts or a dict of lists (`Sequence({...})`) with `data.bbox_field`
  ("bbox") in `data.bbox_format` ("xywh", COCO's and the Hub's detection datasets', or "xyxy") pixels and
  `data.category_field` ("category"), a class id in [0, K); optional `iscrowd`/`is_crowd` and `area` sub-fields.
  Examples: `image`, `boxes` float32 [N, 4] xyxy pixels, `labels` int32 [N], `iscrowd` bool [N], `image_id` (the
  `image_id` column when its values are unique integers, else the row). `category_ids[label] = label + 1`;
  `coco_ground_truth()` is the split's COCO dict of the kept objects, for the COCO evaluator.
- Segmentation: the mask column is a single-channel image (mode L/P/I) or an array [H, W] of stored values;
  `data.class_names`, `data.void_class`, `data.void_value` (255 by default) map them to class ids as the mask
  folders' `codes.txt` does (`segmentation.mask_lut`).
- Class names: `data.class_names` (a sequence or "a,b,c") if set, else the `ClassLabel` names of the label or
  category feature, else "0".."K-1" from `data.num_classes`.

Bad input, as the other sources (`data.bad_input`): labels and objects are checked when the source is made, from
their columns alone (no image is decoded): a missing or out-of-range label, a bbox that is not 4 finite numbers or
has no area, a category outside [0, K) fail naming the dataset, split, row and field, or with "skip" the row (a
label) or the object is dropped, listed in `source.skipped` and counted in `source.skip_reasons`. An unreadable
image or mask, a mask value that is no class, a mask of another size than its image and a box more than a pixel
outside its image (often the wrong `bbox_format`) raise DataError when the row is read; the Loader applies the
policy. Multi-host sharding is the Loader's (each process reads its slice of every global batch by index).
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from jaxcv.data import register_dataset
from jaxcv.data.base import IGNORE_INDEX, DataError, cfg_get, split_id
from jaxcv.data.segmentation import mask_lut

Example = dict[str, Any]
BBOX_FORMATS = ("xywh", "xyxy")
TOLERANCE = 1.0  # pixels a box may reach past its image (the transform clips it), as coco_json
_SPLIT = re.compile(r"^([^\[\]]+?)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def _datasets() -> Any:
    """The `datasets` module, imported on use: it is an optional dependency (the `hf` extra)."""
    try:
        import datasets
    except ImportError as e:
        raise ValueError("data.name='hf' needs the Hugging Face datasets library: pip install 'jaxcv[hf]'") from e
    return datasets


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    """"train[10%:90%]" -> ("train", "10%", "90%"); "test" -> ("test", None, None)."""
    m = _SPLIT.match(split.strip())
    if not m:
        raise DataError(f"split {split!r} is not NAME or NAME[START:STOP] (e.g. 'train[:80%]')")
    return m.group(1), m.group(2), m.group(3)


def _bound(value: str | None, n: int) -> int | None:
    if value is None:
        return None
    return int(round(n * float(value[:-1]) / 100)) if value.endswith("%") else int(value)


def open_split(path: str, config_name: str, split: str | None) -> tuple[Any, str]:
    """The `datasets.Dataset` of `split` (None: "validation", else "test") and its split string.

    A `save_to_disk` directory is opened with `load_from_disk`; anything else with `load_dataset(path, name)`,
    which prepares every split (as `load_dataset` with `split=` would) and keeps them in the HF cache.
    """
    ds_lib = _datasets()
    local = Path(path).expanduser()
    saved = (local / "dataset_dict.json").is_file() or (local / "state.json").is_file()
    try:
        data = ds_lib.load_from_disk(str(local)) if saved else ds_lib.load_dataset(path, config_name or None)
    except Exception as e:
        how = "datasets.load_from_disk" if saved else "datasets.load_dataset (a Hub name needs a network or the cache)"
        raise DataError(f"cannot open Hugging Face dataset {path!r} with {how}: {type(e).__name__}: {e}") from e
    if split is None:
        split = "test" if isinstance(data, ds_lib.DatasetDict) and "validation" not in data else "validation"
    name, start, stop = parse_split(split)
    if isinstance(data, ds_lib.DatasetDict):
        if name not in data:
            raise DataError(f"Hugging Face dataset {path!r} has no split {name!r}; its splits: {sorted(data)}")
        data = data[name]
    if start is not None or stop is not None:
        n = len(data)
        data = data.select(range(n)[slice(_bound(start, n), _bound(stop, n))])
    return data, split


def _class_label_names(feature: Any) -> list[str] | None:
    """The names of a `ClassLabel` feature, looking through `List`/`Sequence` wrappers; None if it is none."""
    ds_lib = _datasets()
    while feature is not None and not isinstance(feature, ds_lib.ClassLabel):
        feature = getattr(feature, "feature", None)
    return list(feature.names) if feature is not None else None


def _sub_feature(feature: Any, key: str) -> Any:
    """`feature[key]` of a dict feature, possibly inside a `List`/`Sequence` (objects as a list of dicts)."""
    while feature is not None and not isinstance(feature, dict):
        feature = getattr(feature, "feature", None)
    return feature.get(key) if isinstance(feature, dict) else None


def _object_rows(value: Any) -> list[dict[str, Any]]:
    """One row's objects as a list of dicts, from a list of dicts or a dict of equally long lists."""
    if value is None:
        return []
    if isinstance(value, dict):
        n = max((len(v) for v in value.values() if isinstance(v, list)), default=0)
        return [{k: v[j] if isinstance(v, list) and j < len(v) else None for k, v in value.items()} for j in range(n)]
    if isinstance(value, list) and all(isinstance(o, dict) for o in value):
        return value
    raise TypeError(f"objects {str(value)[:60]!r} are neither a list of dicts nor a dict of lists")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def object_problem(bbox: Any, category: Any, bbox_format: str, num_classes: int) -> tuple[str, str]:
    """("", "") when `bbox` (in `bbox_format`) and `category` make a detection target, else (reason, problem)."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        return "bad_bbox", f"bbox {bbox} is not 4 finite numbers"
    x1, y1, a, b = (float(v) for v in bbox)
    x2, y2 = (x1 + a, y1 + b) if bbox_format == "xywh" else (a, b)
    if x2 <= x1 or y2 <= y1:
        return "empty_bbox", f"bbox {bbox} ({bbox_format}) has no area"
    if not _is_int(category) or not 0 <= int(category) < num_classes:
        return "bad_category", f"category {category!r} is not a class id in [0, {num_classes})"
    return "", ""


def _decode(value: Any, where: str, mask: bool) -> np.ndarray:
    """An `Image()` cell ({"bytes", "path"}) or array cell -> uint8 [H, W, 3] RGB, or with `mask` int64 [H, W]."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            src = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
            if not src:
                raise DataError(f"{where}: the cell has neither image bytes nor a path")
            with Image.open(src) as im:
                im.load()
                if not mask:
                    return np.asarray(im.convert("RGB"), np.uint8)
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    raise DataError(f"{where}: mask has mode {im.mode}; expected a single-channel index image")
                return np.asarray(im).astype(np.int64)
        array = np.asarray(value)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, TypeError) as e:
        raise DataError(f"{where}: cannot decode ({type(e).__name__}: {e})") from e
    if mask:
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"{where}: mask array of shape {array.shape} and dtype {array.dtype}, expected int [H, W]")
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 255:
        array = array.astype(np.uint8)  # Arrow gives list cells back as Python ints
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or array.dtype != np.uint8:
        raise DataError(f"{where}: image array of shape {array.shape} and dtype {array.dtype}, "
                        "expected uint8 [H, W, 1 | 3 | 4]")
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else np.ascontiguousarray(array[..., :3])


class HFSource:
    """One split of a Hugging Face dataset as a random-access source (see the module docstring).

    Args:
      dataset: a `datasets.Dataset` (memory-mapped Arrow); row `i` is read with `dataset.with_format("arrow")[i]`,
        so only the row's cells are touched and images are decoded here, with errors naming the row.
      where: how messages name the split, e.g. "hf dataset 'cppe-5'[train]".
      task: "classification", "detection" or "segmentation".
    """

    def __init__(self, dataset: Any, where: str, task: str, *, image_field: str = "image",
                 label_field: str = "label", objects_field: str = "", bbox_field: str = "bbox",
                 category_field: str = "category", bbox_format: str = "xywh", mask_field: str = "",
                 class_names: list[str] | None = None, num_classes: int = 0, void_class: str | None = None,
                 void_value: int | None = IGNORE_INDEX, bad_input: str = "fail"):
        if bad_input not in ("fail", "skip"):
            raise ValueError(f"data.bad_input must be 'fail' or 'skip', got {bad_input!r}")
        if bbox_format not in BBOX_FORMATS:
            raise ValueError(f"data.bbox_format={bbox_format!r}; known: {', '.join(BBOX_FORMATS)}")
        self.where, self.task, self.bad_input = where, task, bad_input
        self.image_field, self.mask_field = image_field, mask_field
        self.skipped: list[str] = []
        self.skip_reasons: Counter[str] = Counter()
        column = {"classification": label_field, "detection": objects_field, "segmentation": mask_field}[task]
        missing = [f for f in (image_field, column) if f not in dataset.column_names]
        if missing:
            raise DataError(f"{where}: no column(s) {missing}; its columns: {dataset.column_names} "
                            "(set data.image_field / label_field / objects_field / mask_field)")
        if not len(dataset):
            raise DataError(f"{where}: the split has no rows")
        feature = dataset.features[column]
        if task == "detection":
            feature = _sub_feature(feature, category_field)
        names = list(class_names or []) or (_class_label_names(feature) if task != "segmentation" else None)
        if not names and num_classes:
            names = [str(i) for i in range(num_classes)]
        if not names:
            raise DataError(f"{where}: field {column!r} names no classes (no ClassLabel): set data.class_names "
                            "or data.num_classes")
        if task == "segmentation":
            if void_class is not None and void_class not in names:
                raise DataError(f"{where}: void class {void_class!r} is not among the class names {names}")
            self.lut = mask_lut(names, void_class, void_value)
            names = [n for n in names if n != void_class]
        self.class_names, self.num_classes = names, len(names)
        self.rows = np.arange(len(dataset))
        cells = dataset.select_columns([column]).with_format("arrow")[:].column(0).to_pylist()
        if task == "classification":
            ok = [self._check(row, label_field, "bad_label", "" if _is_int(v) and 0 <= v < self.num_classes else
                              f"label {v!r} is not a class id in [0, {self.num_classes})", "rows")
                  for row, v in enumerate(cells)]
            self.rows = self.rows[np.asarray(ok, bool)]
            self.labels = np.asarray([cells[r] for r in self.rows], np.int32)
            if not len(self.rows):
                raise DataError(f"{where}: no row has a usable label")
        elif task == "detection":
            self._read_objects(dataset, cells, objects_field, bbox_field, category_field, bbox_format)
        self._arrow = dataset.select_columns([image_field, *([mask_field] if task == "segmentation" else [])]
                                             ).with_format("arrow")

    def _check(self, row: int, field: str, reason: str, problem: str, what: str) -> bool:
        """Whether `problem` is ""; else raises (bad_input="fail") or records the skip (`what` is dropped)."""
        if not problem:
            return True
        msg = f"{self.where} row {row} field {field!r}: {problem}"
        if self.bad_input == "fail":
            raise DataError(f"{msg} (set data.bad_input=skip to drop such {what})")
        self.skipped.append(msg)
        self.skip_reasons[reason] += 1
        return False

    def _read_objects(self, dataset: Any, cells: list[Any], field: str, bbox_field: str, category_field: str,
                      bbox_format: str) -> None:
        """Per row: boxes float32 [N, 4] xyxy, labels int32 [N], iscrowd bool [N] of the valid objects; the
        image ids; and the COCO ground truth of the kept objects."""
        self.category_ids = list(range(1, self.num_classes + 1))
        self.image_ids = list(range(len(dataset)))
        if "image_id" in dataset.column_names:
            ids = dataset.select_columns(["image_id"]).with_format("arrow")[:].column(0).to_pylist()
            if all(_is_int(i) for i in ids) and len(set(ids)) == len(ids):
                self.image_ids = [int(i) for i in ids]
        self.objects: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        anns: list[dict[str, Any]] = []
        for row, cell in enumerate(cells):
            try:
                objs = _object_rows(cell)
            except TypeError as e:
                self._check(row, field, "bad_objects", str(e), "objects")
                objs = []
            boxes, labels, crowd = [], [], []
            for j, obj in enumerate(objs):
                bbox, cat = obj.get(bbox_field), obj.get(category_field)
                reason, problem = object_problem(bbox, cat, bbox_format, self.num_classes)
                sub = bbox_field if "bbox" in reason else category_field
                if problem and not self._check(row, f"{field}.{sub}", reason, f"object {j}: {problem}", "objects"):
                    continue
                x, y, a, b = (float(v) for v in bbox)
                box = [x, y, x + a, y + b] if bbox_format == "xywh" else [x, y, a, b]
                flag = bool(obj.get("iscrowd", obj.get("is_crowd")) or 0)
                area = obj.get("area")
                w, h = box[2] - box[0], box[3] - box[1]
                anns.append({"id": len(anns) + 1, "image_id": self.image_ids[row],
                             "category_id": self.category_ids[int(cat)], "bbox": [box[0], box[1], w, h],
                             "area": float(area) if isinstance(area, (int, float)) and area > 0 else w * h,
                             "iscrowd": int(flag)})
                boxes.append(box)
                labels.append(int(cat))
                crowd.append(flag)
            self.objects.append((np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32),
                                 np.asarray(crowd, bool)))
        cats = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)]
        self._gt = {"images": [{"id": i} for i in self.image_ids], "annotations": anns, "categories": cats}

    def coco_ground_truth(self) -> dict[str, Any]:
        """The split as a COCO dict of the kept objects (detection only): what the COCO evaluator compares to."""
        if self.task != "detection":
            raise AttributeError(f"{self.where} is a {self.task} source: it has no COCO ground truth")
        return self._gt

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Example:
        row = int(self.rows[index])
        cells = self._arrow[row].to_pylist()[0]
        image = _decode(cells[self.image_field], f"{self.where} row {row} field {self.image_field!r}", mask=False)
        h, w = image.shape[:2]
        if self.task == "classification":
            return {"image": image, "label": int(self.labels[index])}
        if self.task == "detection":
            boxes, labels, crowd = self.objects[row]
            outside = (boxes[:, :2] < -TOLERANCE).any(1) | (boxes[:, 2] > w + TOLERANCE) | (boxes[:, 3] > h + TOLERANCE)
            if outside.any():
                raise DataError(f"{self.where} row {row} field 'bbox': box {boxes[outside][0].tolist()} (xyxy) lies "
                                f"outside its {w}x{h} image (is data.bbox_format right?)")
            return {"image": image, "boxes": boxes.copy(), "labels": labels.copy(), "iscrowd": crowd.copy(),
                    "image_id": self.image_ids[row]}
        where = f"{self.where} row {row} field {self.mask_field!r}"
        raw = _decode(cells[self.mask_field], where, mask=True)
        bad = raw[(raw < 0) | (raw >= len(self.lut))]
        if not bad.size:
            mapped = self.lut[raw]
            bad = raw[mapped < 0]
        if bad.size:
            raise DataError(f"{where}: value {int(bad[0])} is not a class id (0..{len(self.lut) - 1} from the "
                            "class names) nor void")
        if raw.shape != (h, w):
            raise DataError(f"{where}: mask is {raw.shape[1]}x{raw.shape[0]} but the image is {w}x{h}")
        return {"image": image, "mask": mapped.astype(np.uint8)}


def _names(value: Any) -> list[str] | None:
    if not value:
        return None
    return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else [str(n) for n in value]


def hf(data_config: Any, split: str) -> HFSource:
    """Factory for `data.name = "hf"` (see the module docstring for the fields)."""
    path = cfg_get(data_config, "hf_path")
    if not path:
        raise DataError("data.name='hf' needs data.hf_path: a Hub dataset name (e.g. 'cppe-5') or a directory "
                        "written by save_to_disk")
    wanted = cfg_get(data_config, "train_split", "train") if split_id(split) == 0 else cfg_get(data_config,
                                                                                                "eval_split")
    dataset, used = open_split(str(path), cfg_get(data_config, "hf_config", ""), wanted or None)
    objects_field, mask_field = cfg_get(data_config, "objects_field", ""), cfg_get(data_config, "mask_field", "")
    if objects_field and mask_field:
        raise ValueError("data.objects_field (detection) and data.mask_field (segmentation) are both set: set one")
    task = "detection" if objects_field else "segmentation" if mask_field else "classification"
    return HFSource(
        dataset, f"hf dataset {str(path)!r}[{used}]", task,
        image_field=cfg_get(data_config, "image_field", "image"),
        label_field=cfg_get(data_config, "label_field", "label"),
        objects_field=objects_field, mask_field=mask_field,
        bbox_field=cfg_get(data_config, "bbox_field", "bbox"),
        category_field=cfg_get(data_config, "category_field", "category"),
        bbox_format=cfg_get(data_config, "bbox_format", "xywh"),
        class_names=_names(cfg_get(data_config, "class_names")),
        num_classes=int(cfg_get(data_config, "num_classes", 0)),
        void_class=cfg_get(data_config, "void_class"),
        void_value=cfg_get(data_config, "void_value", IGNORE_INDEX),
        bad_input=cfg_get(data_config, "bad_input", "fail"),
    )


HF_KEYS = ("hf_path", "hf_config", "train_split", "eval_split", "image_field", "label_field", "objects_field",
           "bbox_field", "category_field", "bbox_format", "mask_field", "class_names", "void_class", "void_value")
register_dataset("hf", hf, HF_KEYS)
