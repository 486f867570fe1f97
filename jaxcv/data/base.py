"""Data interfaces shared by every source and transform.

A *source* is random access: `len(source)` and `source[i]` give one raw, decoded example as a dict
of numpy arrays. Random access (rather than a stream) is what makes resume exact: the loader derives
the order of epoch `e` and the augmentation randomness of item `i` from `(seed, e, i)` alone.

Raw examples, by task:
- classification: `image` uint8 [H, W, 3], `label` int (or `labels` int32 [L] for multi-label).
- detection: `image` uint8 [H, W, 3], `boxes` float32 [N, 4] xyxy pixels, `labels` int32 [N] in
  [0, num_classes), `image_id` int, optional `iscrowd` bool [N] and `masks` uint8 [N, H, W].
- segmentation: `image` uint8 [H, W, 3], `mask` uint8 [H, W] class ids (IGNORE_INDEX = void).

A *transform* `(example, rng: np.random.Generator) -> example` maps a raw example to fixed shapes,
so every batch of a split has one shape and the jitted step compiles once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

IGNORE_INDEX = 255
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class DataError(ValueError):
    """Bad input data. The message names the file (or dataset/index) and the problem."""


class Source(Protocol):
    """Random-access dataset of raw examples (see module docstring)."""

    num_classes: int
    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image file as uint8 [H, W, 3] RGB; raises DataError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 scaled to [0, 1] then standardized with ImageNet mean/std
    (torchvision's GeneralizedRCNNTransform and classification presets do the same)."""
    return ((image.astype(np.float32) / 255.0) - IMAGENET_MEAN) / IMAGENET_STD


def denormalize(image: np.ndarray) -> np.ndarray:
    """Inverse of `normalize`, to uint8 for drawing."""
    x = (np.asarray(image, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_IDS = {"train": 0, "validation": 1}


def cfg_get(config: Any, name: str, default: Any = None) -> Any:
    """`config.name` if set (and not None) on a ConfigDict/dict, else `default`."""
    if config is None:
        return default
    value = config.get(name, default)
    return default if value is None else value


def split_id(split: str) -> int:
    """"train" -> 0, "validation" -> 1 (the only split names factories accept)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    return SPLIT_IDS[split]


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted), by extension, case-insensitive."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


# dataset base name -> (train split, eval split) used when data.train_split / data.eval_split are unset.
DEFAULT_TFDS_SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "eurosat": ("train[:80%]", "train[80%:]"),  # EuroSAT has only a train split
    "oxford_iiit_pet": ("train", "test"),
}


def tfds_split(data_config: Any, name: str, split: str) -> str:
    """The TFDS split string for "train"/"validation": `data.train_split`/`data.eval_split` or a
    per-dataset default (`DEFAULT_TFDS_SPLITS`, else "train"/"test")."""
    base = name.split(":")[0].split("/")[0]
    train, val = DEFAULT_TFDS_SPLITS.get(base, ("train", "test"))
    if split_id(split) == 0:
        return cfg_get(data_config, "train_split", train)
    return cfg_get(data_config, "eval_split", val)


def _missing_tensorflow(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it came from, is the failed import of TensorFlow.

    Some tfds dataset code needs TensorFlow just to be set up (coco's `_info` reads `tf.int64`), and
    jaxcv installs TensorFlow only with the `tfds-build` extra. Only this import error is matched, so
    every other failure still reports the dataset as not prepared.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImportError) and (
            error.name == "tensorflow" or "No module named 'tensorflow'" in str(error)
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def _not_prepared(name: str, split: str, data_dir: str | None, reason: str) -> DataError:
    """The DataError for a tfds split that cannot be read: `reason`, and the command preparing it."""
    where = f" --data_dir={data_dir}" if data_dir else ""
    return DataError(
        f"tfds dataset {name!r} split {split!r} is not available for random access"
        f"{' in ' + str(data_dir) if data_dir else ''} ({reason}). Prepare it once as "
        f"array_record: `tfds build {name.split(':')[0]} --file_format=array_record{where}` (or "
        f"`tfds.builder({name!r}, file_format='array_record').download_and_prepare()`), which needs "
        "TensorFlow: `pip install -e '.[tfds-build]'`; data already prepared as TFRecord can be "
        "converted with `tfds convert_format --out_file_format=array_record`."
    )


def open_tfds(name: str, split: str, data_dir: str | None = None) -> tuple[Any, Any]:
    """Random-access TFDS split via `tfds.data_source` (array_record files; no download).

    Returns `(data_source, dataset_info)`. When the dataset's code cannot be set up without
    TensorFlow (coco), the prepared dataset is read from its saved metadata instead
    (`dataset_info.json`, `features.json`): the builder tfds itself uses for datasets whose code is
    absent (`read_only_builder.builder_from_files`, which finds the prepared version under `data_dir`).
    A dataset that is not prepared (or prepared only as TFRecord) raises DataError with the command
    that prepares it.
    """
    import tensorflow_datasets as tfds

    try:
        tfds.builder_cls(name.split(":")[0].split("/")[0])
    except Exception as e:  # DatasetNotFoundError
        raise DataError(f"unknown tfds dataset {name!r}") from e
    builder = None
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
        if not _missing_tensorflow(e):
            raise _not_prepared(name, split, data_dir, f"{type(e).__name__}: {e}") from e
        try:
            builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
            source = builder.as_data_source(split)
        except Exception as e_files:
            first_line = (str(e_files).splitlines() or [""])[0]
            reason = f"{type(e_files).__name__}: {first_line} Its tfds code needs TensorFlow, not installed"
            raise _not_prepared(name, split, data_dir, reason) from e_files
    info = getattr(source, "dataset_info", None)
    if info is None:
        info = (builder or tfds.builder(name, data_dir=data_dir)).info
    return source, info
