"""Image-classification sources (synthetic, image folders, TFDS) and the classification transform.

Every source is random access (see `jaxcv.data.base`) and yields raw examples
`{"image": uint8 [H, W, 3], "label": int}` or, multi-label, `{"image", "labels": int32 [L]}` (the
ids of the classes present). `make_classification_transform` maps them to fixed shapes.

Bad inputs: a source's `__getitem__` raises `DataError` naming the file (or dataset and index) of an
item it cannot decode; it never substitutes another item itself. The loader owns the policy
`data.bad_input`: "fail" lets the error through, "skip" replaces the item by the next readable one and
records the error in `Loader.skipped` (see `jaxcv.data.loader`). Problems found while indexing a
folder (an empty class folder, an unknown class) always raise, whatever the policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxcv.data import TFDS_KEYS, register_dataset
from jaxcv.data.base import (
    IMAGE_EXTENSIONS,
    DataError,
    cfg_get,
    list_images,
    load_image,
    normalize,
    open_tfds,
    split_id,
    tfds_split,
)

Example = dict[str, Any]
Transform = Callable[[Example, np.random.Generator], Example]






# --------------------------------------------------------------------------------------------------
# Synthetic classification
# --------------------------------------------------------------------------------------------------

_PALETTE = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 80, 235], [240, 220, 40], [220, 60, 220], [40, 220, 220]],
    np.float32,
)
_NUM_SHAPES = 8  # square, disk, ring, triangle, plus, diamond, X, stripes


def _shape_mask(kind: int, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of shape `kind` of radius `r`, from offsets to its centre `dy, dx: [S, S]`."""
    ay, ax = np.abs(dy), np.abs(dx)
    t = max(1.0, r / 3.0)  # stroke width
    if kind == 0:  # filled square
        return (ay <= r) & (ax <= r)
    if kind == 1:  # disk
        return dy**2 + dx**2 <= r**2
    if kind == 2:  # ring
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= r - t)
    if kind == 3:  # upward triangle
        return (dy <= r) & (dy >= -r) & (ax <= (dy + r) / 2.0)
    if kind == 4:  # plus
        return ((ay <= t / 2 + 0.5) & (ax <= r)) | ((ax <= t / 2 + 0.5) & (ay <= r))
    if kind == 5:  # diamond
        return ay + ax <= r
    if kind == 6:  # X
        return (np.abs(ay - ax) <= t / 2 + 0.5) & (ay <= r)
    # horizontal stripes in a square
    return (ay <= r) & (ax <= r) & (np.floor((dy + r) / t).astype(np.int64) % 2 == 0)


class SyntheticClassification:
    """Deterministic synthetic images: class-specific shapes on noise, for tests and smoke runs.

    Class `c` is a (shape, colour) pair, unique for up to 48 classes: shape `c % 8`, colour
    `(c % 8 + c // 8) % 6`. Each image is smooth random background plus noise with the object(s)
    at random positions and sizes, colours jittered, so the class is learnable but not given by
    a single pixel. Item `i` of a split depends only on `np.random.default_rng([seed, split_id, i])`.

    Multi-label: 1..`max_objects` objects of distinct classes; `labels` int32 [L] sorted class ids.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        num_examples: int = 1000,
        *,
        split: str = "train",
        seed: int = 0,
        multilabel: bool = False,
        max_objects: int = 3,
    ):
        if not 1 <= num_classes <= _NUM_SHAPES * len(_PALETTE):
            raise ValueError(f"num_classes must be in [1, {_NUM_SHAPES * len(_PALETTE)}], got {num_classes}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.num_classes = num_classes
        self.class_names = [f"class_{c}" for c in range(num_classes)]
        self.image_size = image_size
        self.num_examples = num_examples
        self.split_id = split_id(split)
        self.seed = seed
        self.multilabel = multilabel
        self.max_objects = max(1, min(max_objects, num_classes))

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng([self.seed, self.split_id, index])
        s = self.image_size
        # Background: a random colour gradient plus pixel noise.
        c0, c1 = rng.uniform(40, 200, size=(2, 3))
        ramp = np.linspace(0.0, 1.0, s, dtype=np.float32)
        ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        img = c0 + (c1 - c0) * ramp[..., None]
        img = img + rng.normal(0.0, 25.0, size=(s, s, 3))
        if self.multilabel:
            n = int(rng.integers(1, self.max_objects + 1))
            classes = rng.choice(self.num_classes, size=n, replace=False)
        else:
            classes = np.array([rng.integers(self.num_classes)])
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        for c in classes:
            r = rng.uniform(s / 8, s / 4 if self.multilabel else s / 3)
            cy, cx = rng.uniform(r, s - 1 - r, size=2)
            colour = _PALETTE[(c % _NUM_SHAPES + c // _NUM_SHAPES) % len(_PALETTE)]
            colour = colour * rng.uniform(0.75, 1.1) + rng.normal(0, 12, size=3)
            m = _shape_mask(int(c % _NUM_SHAPES), yy - cy, xx - cx, r)
            img[m] = colour + rng.normal(0.0, 10.0, size=(int(m.sum()), 3))
        image = np.clip(np.round(img), 0, 255).astype(np.uint8)
        if self.multilabel:
            return {"image": image, "labels": np.sort(classes).astype(np.int32)}
        return {"image": image, "label": int(classes[0])}


def synthetic_classification(data_config: Any, split: str) -> SyntheticClassification:
    """Synthetic classification source.

    Config: `data.num_classes` (10), `data.image_size` (32), `data.num_train` (1000),
    `data.num_val` (200), `data.seed` (0), `data.multilabel` (False), `data.max_objects` (3).
    """
    return SyntheticClassification(
        num_classes=cfg_get(data_config, "num_classes", 10),
        image_size=cfg_get(data_config, "image_size", 32),
        num_examples=cfg_get(data_config, "num_train" if split == "train" else "num_val",
                             1000 if split == "train" else 200),
        split=split,
        seed=cfg_get(data_config, "seed", 0),
        multilabel=cfg_get(data_config, "multilabel", False),
        max_objects=cfg_get(data_config, "max_objects", 3),
    )


def synthetic_multilabel(data_config: Any, split: str) -> SyntheticClassification:
    """`synthetic_classification` with `multilabel=True` (same config fields)."""
    source = synthetic_classification(data_config, split)
    source.multilabel = True
    source.max_objects = max(1, min(cfg_get(data_config, "max_objects", 3), source.num_classes))
    return source


# --------------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------------



class ImageFolder:
    """ImageNet-style folder `root/<class>/**/<image>`; class ids are the sorted folder names.

    Like torchvision's ImageFolder, but a class folder without images is an error (it would
    silently shift nothing yet leave a class that can never be predicted right). Images are decoded
    lazily with `base.load_image`; an unreadable file raises DataError naming it.

    Args:
      root: the split's folder.
      class_names: ids to use (e.g. the train split's, so validation ids agree); the folder's
        classes must be a subset of them. Default: the folder's own sorted class folders.
    """

    def __init__(self, root: str | Path, class_names: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"image folder {self.root} has no class subfolders")
        self.class_names = list(class_names) if class_names is not None else folders
        self.num_classes = len(self.class_names)
        ids = {name: i for i, name in enumerate(self.class_names)}
        unknown = [f for f in folders if f not in ids]
        if unknown:
            raise DataError(f"image folder {self.root}: class folders {unknown} are not among the classes "
                            f"{self.class_names}")
        self.files: list[Path] = []
        labels: list[int] = []
        for name in folders:
            files = list_images(self.root / name)
            if not files:
                raise DataError(f"class folder {self.root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.files += files
            labels += [ids[name]] * len(files)
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Example:
        return {"image": load_image(self.files[index]), "label": int(self.labels[index])}


def image_folder(data_config: Any, split: str) -> ImageFolder:
    """Image-folder source.

    Config: `data.train_dir`, `data.val_dir` (one subfolder per class, sorted names = class ids;
    .jpg/.jpeg/.png/.bmp/.webp). Validation uses the train folder's class list when `train_dir` is
    set, so ids agree even if a validation folder lacks a class.
    """
    key = "train_dir" if split_id(split) == 0 else "val_dir"
    root = cfg_get(data_config, key)
    if root is None:
        raise DataError(f"image_folder needs data.{key}")
    class_names = None
    train_dir = cfg_get(data_config, "train_dir")
    if key == "val_dir" and train_dir is not None and Path(train_dir).is_dir():
        class_names = sorted(p.name for p in Path(train_dir).iterdir()
                             if p.is_dir() and not p.name.startswith("."))
    return ImageFolder(root, class_names)


# --------------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------------


def _class_names(info: Any, key: str) -> list[str]:
    feature = info.features[key]
    names = getattr(feature, "names", None)
    return list(names) if names else [str(i) for i in range(feature.num_classes)]


class TfdsClassification:
    """Any TFDS image-classification dataset, random access through `tfds.data_source`.

    Preparation (once, needs network): `tfds build cifar10 --file_format=array_record` (likewise
    `eurosat/rgb`), optionally `--data_dir=DIR` matching `data.tfds_data_dir`. Grey images are
    repeated to 3 channels.
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        self.name, self.split = name, split
        self.image_key, self.label_key = image_key, label_key
        self._source, info = open_tfds(name, split, data_dir)
        self.class_names = _class_names(info, label_key)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        try:
            ex = self._source[index]
        except Exception as e:
            raise DataError(f"tfds {self.name}[{self.split}] item {index}: cannot decode ({e})") from e
        image = np.asarray(ex[self.image_key], np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return {"image": image, "label": int(ex[self.label_key])}


def tfds_classification(data_config: Any, split: str, default_name: str | None = None) -> TfdsClassification:
    """TFDS classification source.

    Config: `data.tfds_name` (e.g. "cifar10", "eurosat/rgb"), `data.tfds_data_dir` (TFDS default
    when unset), `data.train_split` / `data.eval_split` (TFDS split strings; defaults in
    `DEFAULT_TFDS_SPLITS`, e.g. EuroSAT "train[:80%]" / "train[80%:]"), `data.image_key` ("image"),
    `data.label_key` ("label").
    """
    name = cfg_get(data_config, "tfds_name", default_name)
    if name is None:
        raise DataError("tfds_classification needs data.tfds_name")
    return TfdsClassification(
        name,
        tfds_split(data_config, name, split),
        data_dir=cfg_get(data_config, "tfds_data_dir"),
        image_key=cfg_get(data_config, "image_key", "image"),
        label_key=cfg_get(data_config, "label_key", "label"),
    )


def cifar10(data_config: Any, split: str) -> TfdsClassification:
    """`tfds_classification` with `data.tfds_name` defaulting to "cifar10"."""
    return tfds_classification(data_config, split, "cifar10")


def eurosat(data_config: Any, split: str) -> TfdsClassification:
    """`tfds_classification` with `data.tfds_name` defaulting to "eurosat/rgb"."""
    return tfds_classification(data_config, split, "eurosat/rgb")


# --------------------------------------------------------------------------------------------------
# Transform
# --------------------------------------------------------------------------------------------------


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop, sampled like torchvision RandomResizedCrop.get_params: 10 tries
    of (area fraction ~ U(scale), log aspect ~ U(log ratio)), then a centre crop with clamped ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize_center_crop(image: np.ndarray, size: int, crop_ratio: float | None) -> np.ndarray:
    """Eval geometry. `crop_ratio` r: shorter side to round(size / r), then centre crop size x size
    (torchvision Resize(256) + CenterCrop(224) for r = 224/256). None: plain resize to size x size."""
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    if crop_ratio is None:
        return np.asarray(pil.resize((size, size), Image.BILINEAR)) if (h, w) != (size, size) else image
    short = int(round(size / crop_ratio))
    if h <= w:
        nh, nw = short, int(short * w / h)
    else:
        nh, nw = int(short * h / w), short
    if (nh, nw) != (h, w):
        pil = pil.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.asarray(pil.crop((left, top, left + size, top + size)))


def make_classification_transform(
    image_size: int,
    train: bool,
    *,
    hflip: bool = True,
    random_resized_crop: bool = True,
    crop_scale: tuple[float, float] = (0.25, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    eval_crop_ratio: float | None = 224 / 256,
    pad_crop: int = 0,
    rotation: float = 0.0,
    multilabel_classes: int | None = None,
) -> Transform:
    """Raw classification example -> `image` float32 [S, S, 3] (`base.normalize`d) and `label`
    int32 [] (or, with `multilabel_classes=K`, `labels` float32 [K] multi-hot).

    Train: RandomResizedCrop (torchvision sampling; `crop_scale` defaults to (0.25, 1) rather than
    ImageNet's (0.08, 1), kinder to 32-64 px images) else the eval geometry, then an optional
    CIFAR-style zero pad by `pad_crop` pixels and random S x S crop, then a random horizontal flip and
    a random rotation of up to `rotation` turns (Keras RandomRotation; corners filled black).
    Eval: `resize_center_crop(.., eval_crop_ratio)`; use `eval_crop_ratio=None` for small images.
    Bilinear resampling with Pillow. Deterministic given `rng`.
    """

    def transform(example: Example, rng: np.random.Generator) -> Example:
        image = np.asarray(example["image"], np.uint8)
        if train and random_resized_crop:
            top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, crop_scale, crop_ratio)
            image = np.asarray(
                Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR,
                                              box=(left, top, left + w, top + h))
            )
        else:
            image = resize_center_crop(image, image_size, eval_crop_ratio)
        if train and pad_crop > 0:
            padded = np.pad(image, ((pad_crop, pad_crop), (pad_crop, pad_crop), (0, 0)))
            y, x = rng.integers(0, 2 * pad_crop + 1, size=2)
            image = padded[y : y + image_size, x : x + image_size]
        if train and hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        if train and rotation > 0:  # Keras RandomRotation(rotation): uniform in +-rotation * 360 degrees
            angle = float(rng.uniform(-rotation, rotation)) * 360.0
            image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).rotate(angle, Image.BILINEAR))
        out: Example = {"image": normalize(np.ascontiguousarray(image))}
        if multilabel_classes is None:
            out["label"] = np.int32(example["label"])
        else:
            ids = np.atleast_1d(np.asarray(example["labels"] if "labels" in example else example["label"]))
            ids = ids.astype(np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= multilabel_classes):
                raise DataError(f"multi-label ids {ids.tolist()} outside [0, {multilabel_classes})")
            hot = np.zeros(multilabel_classes, np.float32)
            hot[ids] = 1.0
            out["labels"] = hot
        return out

    return transform


_SYNTHETIC_KEYS = ("num_train", "num_val", "seed", "multilabel", "max_objects")
_TFDS_CLS_KEYS = (*TFDS_KEYS, "image_key", "label_key")
register_dataset("synthetic_classification", synthetic_classification, _SYNTHETIC_KEYS)
register_dataset("synthetic_multilabel", synthetic_multilabel, _SYNTHETIC_KEYS)
register_dataset("image_folder", image_folder, ("train_dir", "val_dir"))
register_dataset("tfds_classification", tfds_classification, _TFDS_CLS_KEYS)
register_dataset("cifar10", cifar10, _TFDS_CLS_KEYS)
register_dataset("eurosat", eurosat, _TFDS_CLS_KEYS)
