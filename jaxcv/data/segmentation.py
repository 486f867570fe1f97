"""Semantic-segmentation sources (Oxford-IIIT Pet via TFDS, CamVid-style mask folders, synthetic
shapes) and the segmentation transform.

Raw examples are `{"image": uint8 [H, W, 3], "mask": uint8 [H, W]}` with class ids in
[0, num_classes) and `IGNORE_INDEX` (255) for void pixels. As in `jaxcv.data.classification`, a
source's `__getitem__` raises `DataError` naming the file(s) of a bad item and the loader applies
`data.bad_input` ("skip" replaces it by the next readable item and counts it in `Loader.skipped`).
Problems found while indexing a folder are handled by the source: with "fail" they raise, with "skip"
the pair is left out and its reason appended to `source.skipped`.

Instance masks from a mask folder (`data.instances`, for `task="promptable_segmentation"`): "components" makes
each connected region (4-connected, `scipy.ndimage.label`) of each class an instance, but for the classes named in
`data.stuff_classes` (e.g. ("background", "sky")) and void; "ids" reads an instance-id PNG per image from
`instances/` beside `images/` and `labels/` (`data.instance_pattern`, default "{stem}.png"; 0 = no instance,
each other value one instance, labelled with its pixels' most common class). Examples then also carry `masks`
uint8 [N, H, W], `boxes` float32 [N, 4] xyxy (pixel edges: x2 = last column + 1) and `labels` int32 [N];
instances smaller than `data.min_instance_area` pixels (default 1) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxcv.data import TFDS_KEYS, register_dataset
from jaxcv.data.base import (
    IGNORE_INDEX,
    DataError,
    cfg_get,
    list_images,
    load_image,
    normalize,
    open_tfds,
    split_id,
    tfds_split,
)
from jaxcv.data.shapes import SHAPES_KEYS

Example = dict[str, Any]
Transform = Callable[[Example, np.random.Generator], Example]


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of `mask: uint8 [h, w]` to [height, width] (Pillow NEAREST)."""
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


# --------------------------------------------------------------------------------------------------
# Oxford-IIIT Pet (TFDS)
# --------------------------------------------------------------------------------------------------

PET_CLASSES = ["pet", "background", "border"]


class PetsSegmentation:
    """Oxford-IIIT Pet trimaps from TFDS `oxford_iiit_pet` (4.x) as 3-class segmentation.

    `segmentation_mask` trimap values 1 (pet), 2 (background), 3 (border) become classes 0, 1, 2,
    as in the Keras "image segmentation" example (subtract 1). A mask whose size differs from its
    image is resized to it (nearest). Any other trimap value is a DataError naming the item.
    Preparation: `tfds build oxford_iiit_pet --file_format=array_record [--data_dir=DIR]`.
    """

    num_classes = 3
    class_names = PET_CLASSES

    def __init__(self, name: str, split: str, *, data_dir: str | None = None):
        self.name, self.split = name, split
        self._source, _ = open_tfds(name, split, data_dir)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        where = f"tfds {self.name}[{self.split}] item {index}"
        try:
            ex = self._source[index]
        except Exception as e:
            raise DataError(f"{where}: cannot decode ({e})") from e
        if "file_name" in ex:
            where += f" ({ex['file_name']})"
        image = np.asarray(ex["image"], np.uint8)
        trimap = np.asarray(ex["segmentation_mask"], np.uint8)
        trimap = trimap[..., 0] if trimap.ndim == 3 else trimap
        trimap = resize_mask(trimap, image.shape[0], image.shape[1])
        bad = trimap[(trimap < 1) | (trimap > 3)]
        if bad.size:
            raise DataError(f"{where}: trimap value {int(bad[0])} not in {{1, 2, 3}}")
        return {"image": image, "mask": trimap - 1}


def pets(data_config: Any, split: str) -> PetsSegmentation:
    """Oxford-IIIT Pet segmentation source.

    Config: `data.tfds_name` ("oxford_iiit_pet:4.*.*"), `data.tfds_data_dir` (TFDS default when
    unset), `data.train_split` ("train"), `data.eval_split` ("test").
    """
    name = cfg_get(data_config, "tfds_name", "oxford_iiit_pet:4.*.*")
    return PetsSegmentation(name, tfds_split(data_config, name, split),
                            data_dir=cfg_get(data_config, "tfds_data_dir"))


# --------------------------------------------------------------------------------------------------
# Mask folder (CamVid layout)
# --------------------------------------------------------------------------------------------------


def read_codes(path: Path) -> list[str]:
    """Class names, one per line (fastai CamVid `codes.txt`); blank lines are ignored."""
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise DataError(f"cannot read class names {path}: {e}") from e
    if not names:
        raise DataError(f"class-name file {path} is empty")
    return names


def mask_lut(codes: list[str], void_class: str | None, void_value: int | None) -> np.ndarray:
    """int32 [V] lookup from stored mask value to class id: codes in order with the void class
    removed (later ids shift down), void -> IGNORE_INDEX, values that are neither -> -1 (bad)."""
    size = max(len(codes), (void_value + 1) if void_value is not None else 0)
    lut = np.full(size, -1, np.int32)
    next_id = 0
    for value, name in enumerate(codes):
        if name == void_class:
            lut[value] = IGNORE_INDEX
        else:
            lut[value] = next_id
            next_id += 1
    if void_value is not None:
        lut[void_value] = IGNORE_INDEX
    return lut


def load_mask(path: Path) -> np.ndarray:
    """A single-channel index mask (PNG mode L, P, I or I;16) as int64 [H, W]; palette images keep
    their indices. Raises DataError naming the file if unreadable or multi-channel."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"mask {path} has mode {im.mode}; expected a single-channel index image")
            return np.asarray(im).astype(np.int64)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from e


class MaskFolder:
    """Images paired with index masks (CamVid layout).

    Args:
      image_dir: folder of images (.jpg/.jpeg/.png/.bmp/.webp, recursive).
      label_dir: folder of masks; the mask of `image_dir/a/b.png` is
        `label_dir/a/<label_pattern.format(stem="b", name="b.png", ext=".png")>`.
      codes: class names, indexed by stored mask value.
      void_class: name in `codes` mapped to IGNORE_INDEX and dropped from `class_names`.
      void_value: a stored value (e.g. 255) also mapped to IGNORE_INDEX.
      stems: keep only images whose stem is in this set (fastai `valid.txt` split); None keeps all.
      exclude_stems: drop images whose stem is in this set.
      mask_mismatch: "fail": a mask of another size than its image is a DataError naming both files;
        "resize": it is resized to the image with nearest neighbour.
      bad_input: "fail": an image without mask raises DataError naming it; "skip": the image is left
        out and the reason is appended to `self.skipped`.

    A stored value that maps to no class (>= len(codes) and not void) is a DataError naming the
    mask file and the value.
    """

    def __init__(
        self,
        image_dir: str | Path,
        label_dir: str | Path,
        codes: list[str],
        *,
        label_pattern: str = "{stem}_P.png",
        void_class: str | None = None,
        void_value: int | None = None,
        stems: set[str] | None = None,
        exclude_stems: set[str] | None = None,
        mask_mismatch: str = "fail",
        bad_input: str = "fail",
        instances: str = "",
        stuff_classes: tuple[str, ...] = (),
        instance_dir: str | Path | None = None,
        instance_pattern: str = "{stem}.png",
        min_instance_area: int = 1,
    ):
        if instances not in ("", "components", "ids"):
            raise ValueError(f"data.instances must be '', 'components' or 'ids', got {instances!r}")
        if instances == "ids" and instance_dir is None:
            raise ValueError("data.instances='ids' needs an instance folder")
        unknown = sorted(set(stuff_classes) - set(codes))
        if unknown:
            raise DataError(f"data.stuff_classes {unknown} are not among the class names {codes}")
        if mask_mismatch not in ("fail", "resize"):
            raise ValueError(f"data.mask_mismatch must be 'fail' or 'resize', got {mask_mismatch!r}")
        if bad_input not in ("fail", "skip"):
            raise ValueError(f"data.bad_input must be 'fail' or 'skip', got {bad_input!r}")
        if void_class is not None and void_class not in codes:
            raise DataError(f"void class {void_class!r} is not among the class names {codes}")
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise DataError(f"segmentation folder {d} does not exist")
        self.class_names = [c for c in codes if c != void_class]
        self.num_classes = len(self.class_names)
        self.lut = mask_lut(codes, void_class, void_value)
        self.mask_mismatch = mask_mismatch
        self.instances = instances
        self.stuff_ids = {self.class_names.index(c) for c in stuff_classes if c in self.class_names}
        self.instance_dir = Path(instance_dir) if instance_dir is not None else None
        self.min_instance_area = int(min_instance_area)
        self.instance_masks: list[Path] = []
        self.skipped: list[str] = []
        self.images: list[Path] = []
        self.masks: list[Path] = []
        for image in list_images(self.image_dir):
            if (stems is not None and image.stem not in stems) or (exclude_stems and image.stem in exclude_stems):
                continue
            rel = image.parent.relative_to(self.image_dir)
            names = {"stem": image.stem, "name": image.name, "ext": image.suffix}
            mask = self.label_dir / rel / label_pattern.format(**names)
            inst = self.instance_dir / rel / instance_pattern.format(**names) if instances == "ids" else None
            missing = [f"{what} (expected {path})" for what, path in (("mask", mask), ("instance-id mask", inst))
                       if path is not None and not path.is_file()]
            if missing:
                msg = f"image {image} has no " + " and no ".join(missing)
                if bad_input == "fail":
                    raise DataError(msg)
                self.skipped.append(msg)
                continue
            if inst is not None:
                self.instance_masks.append(inst)
            self.images.append(image)
            self.masks.append(mask)
        if not self.images:
            raise DataError(f"segmentation folder {self.image_dir} has no usable images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Example:
        image_path, mask_path = self.images[index], self.masks[index]
        image = load_image(image_path)
        raw = load_mask(mask_path)
        bad = raw[(raw < 0) | (raw >= len(self.lut))]
        if not bad.size:
            mapped = self.lut[raw]
            bad = raw[mapped < 0]
        if bad.size:
            raise DataError(f"mask {mask_path}: value {int(bad[0])} is not a class id "
                            f"(0..{len(self.lut) - 1} from the class names) nor void")
        mask = mapped.astype(np.uint8)
        if mask.shape != image.shape[:2]:
            if self.mask_mismatch == "fail":
                raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} "
                                f"is {image.shape[1]}x{image.shape[0]} (set data.mask_mismatch='resize')")
            mask = resize_mask(mask, image.shape[0], image.shape[1])
        if not self.instances:
            return {"image": image, "mask": mask}
        if self.instances == "components":
            masks, labels = component_instances(mask, self.num_classes, self.stuff_ids)
        else:
            path = self.instance_masks[index]
            ids = load_mask(path)
            if ids.shape != mask.shape:
                raise DataError(f"instance mask {path} is {ids.shape[1]}x{ids.shape[0]} but mask {mask_path} is "
                                f"{mask.shape[1]}x{mask.shape[0]}")
            masks, labels = id_instances(ids, mask)
        area = masks.reshape(len(masks), -1).sum(axis=1)
        keep = area >= self.min_instance_area
        masks, labels = masks[keep], labels[keep]
        return {"image": image, "mask": mask, "masks": masks, "boxes": mask_boxes(masks), "labels": labels,
                "image_id": index}


def component_instances(mask: np.ndarray, num_classes: int, skip: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Class map uint8 [H, W] -> (masks uint8 [N, H, W], labels int32 [N]): the 4-connected regions of each class
    in [0, num_classes) not in `skip` (void, IGNORE_INDEX, is never an instance), by class then scan order."""
    from scipy import ndimage

    masks, labels = [], []
    for c in range(num_classes):
        if c in skip:
            continue
        regions, n = ndimage.label(mask == c)
        for r in range(1, n + 1):
            masks.append(regions == r)
            labels.append(c)
    h, w = mask.shape
    out = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), np.uint8)
    return out, np.asarray(labels, np.int32)


def id_instances(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance-id map [H, W] (0 = none) and class map -> (masks uint8 [N, H, W] in id order, labels int32 [N]:
    each instance's most common non-void class; an instance of void pixels only is dropped)."""
    masks, labels = [], []
    for i in np.unique(ids):
        if i == 0:
            continue
        m = ids == i
        classes = mask[m]
        classes = classes[classes != IGNORE_INDEX]
        if not classes.size:
            continue
        masks.append(m)
        labels.append(int(np.bincount(classes).argmax()))
    h, w = ids.shape
    out = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), np.uint8)
    return out, np.asarray(labels, np.int32)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] -> float32 [N, 4] xyxy boxes on pixel edges (x2 = last column + 1), as the shapes'."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for j, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        boxes[j] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def _find_codes(folder: Path, name: str) -> Path:
    for d in (folder, folder.parent):
        if (d / name).is_file():
            return d / name
    raise DataError(f"no class-name file {name!r} in {folder} or {folder.parent}")


def _read_stems(path: Path) -> set[str]:
    try:
        return {Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()}
    except OSError as e:
        raise DataError(f"cannot read validation list {path}: {e}") from e


def mask_folder(data_config: Any, split: str) -> MaskFolder:
    """CamVid-style mask folder source. Two layouts:

    - per-split folders: `data.train_dir` / `data.val_dir`, each holding `images/` and `labels/`;
    - fastai CamVid: `data.valid_list` set (a file of validation image names, one per line, e.g.
      `valid.txt`; relative paths are taken from `data.train_dir`): both splits read
      `data.train_dir/images` and `labels/`, validation = the listed stems, train = the rest.

    Other config: `data.label_pattern` ("{stem}_P.png"; also `{name}`, `{ext}`), `data.codes_file`
    ("codes.txt", looked up in the split folder, then its parent), `data.void_class` (e.g. "Void"),
    `data.void_value` (e.g. 255), `data.mask_mismatch` ("fail" | "resize"), `data.bad_input`
    ("fail" | "skip", for images without mask); instance masks (module docstring): `data.instances`
    ("" | "components" | "ids"), `data.stuff_classes`, `data.instance_pattern`, `data.min_instance_area`.
    """
    sid = split_id(split)
    valid_list = cfg_get(data_config, "valid_list")
    key = "train_dir" if sid == 0 or valid_list is not None else "val_dir"
    root = cfg_get(data_config, key)
    if root is None:
        raise DataError(f"mask_folder needs data.{key}")
    root = Path(root)
    stems = exclude = None
    if valid_list is not None:
        listed = _read_stems(Path(valid_list) if Path(valid_list).is_absolute() else root / valid_list)
        stems, exclude = (None, listed) if sid == 0 else (listed, None)
    return MaskFolder(
        root / "images",
        root / "labels",
        read_codes(_find_codes(root, cfg_get(data_config, "codes_file", "codes.txt"))),
        label_pattern=cfg_get(data_config, "label_pattern", "{stem}_P.png"),
        void_class=cfg_get(data_config, "void_class"),
        void_value=cfg_get(data_config, "void_value"),
        stems=stems,
        exclude_stems=exclude,
        mask_mismatch=cfg_get(data_config, "mask_mismatch", "fail"),
        bad_input=cfg_get(data_config, "bad_input", "fail"),
        instances=cfg_get(data_config, "instances", ""),
        stuff_classes=tuple(cfg_get(data_config, "stuff_classes", ())),
        instance_dir=root / "instances",
        instance_pattern=cfg_get(data_config, "instance_pattern", "{stem}.png"),
        min_instance_area=int(cfg_get(data_config, "min_instance_area", 1)),
    )


# --------------------------------------------------------------------------------------------------
# Synthetic shapes
# --------------------------------------------------------------------------------------------------


class ShapesSegmentation:
    """Semantic segmentation view of the synthetic shapes (`jaxcv.data.shapes.ShapesDetection`):
    `mask` is its `semantic` map, 0 = background and shape class c -> c + 1, so
    `num_classes = shape classes + 1`. Deterministic per (seed, split, index) like the shapes."""

    def __init__(self, shapes: Any):
        self.shapes = shapes
        self.num_classes = shapes.num_classes + 1
        self.class_names = ["background", *shapes.class_names]

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> Example:
        ex = self.shapes[index]
        return {"image": ex["image"], "mask": ex["semantic"]}


def shapes_segmentation(data_config: Any, split: str) -> ShapesSegmentation:
    """Synthetic shapes segmentation source. Config (see `jaxcv.data.shapes.shapes_config_from`):
    `data.image_size`, `data.num_train`, `data.num_val`, `data.min_objects`, `data.max_objects`,
    `data.shape_classes` (shape classes, without background), `data.seed`."""
    from jaxcv.data.shapes import ShapesDetection, shapes_config_from

    return ShapesSegmentation(ShapesDetection(shapes_config_from(data_config), split))


# --------------------------------------------------------------------------------------------------
# Transform
# --------------------------------------------------------------------------------------------------


def make_segmentation_transform(
    image_size: int,
    train: bool,
    *,
    hflip: bool = True,
    scale_jitter: tuple[float, float] | None = (0.75, 1.25),
) -> Transform:
    """Raw segmentation example -> `image` float32 [S, S, 3] (`base.normalize`d), `mask` int32 [S, S].

    Image and mask get identical geometry (image bilinear, mask NEAREST, same target size, crop and
    flip), so they stay aligned. Padding is 0 in the normalized image (the mean colour) and
    IGNORE_INDEX in the mask, so it never counts in losses or metrics.
    Train (like torchvision's segmentation reference RandomResize + RandomCrop + RandomHorizontalFlip):
    shorter side to S * U(scale_jitter) (S without jitter), pad to at least S x S, random S x S crop,
    flip with probability 1/2. Eval: longer side to S (whole image kept), padded bottom/right.
    """

    def transform(example: Example, rng: np.random.Generator) -> Example:
        image = np.asarray(example["image"], np.uint8)
        mask = np.asarray(example["mask"], np.uint8)
        h, w = image.shape[:2]
        if mask.shape != (h, w):
            raise DataError(f"mask shape {mask.shape} differs from image shape {(h, w)}")
        if train:
            s = rng.uniform(*scale_jitter) if scale_jitter is not None else 1.0
            scale = image_size * s / min(h, w)
        else:
            scale = image_size / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
            mask = resize_mask(mask, nh, nw)
        ph, pw = max(nh, image_size), max(nw, image_size)
        img = np.zeros((ph, pw, 3), np.float32)
        img[:nh, :nw] = normalize(image)
        msk = np.full((ph, pw), IGNORE_INDEX, np.int32)
        msk[:nh, :nw] = mask
        if train:
            top = int(rng.integers(0, ph - image_size + 1))
            left = int(rng.integers(0, pw - image_size + 1))
        else:
            top = left = 0
        img = img[top : top + image_size, left : left + image_size]
        msk = msk[top : top + image_size, left : left + image_size]
        if train and hflip and rng.random() < 0.5:
            img, msk = img[:, ::-1], msk[:, ::-1]
        return {"image": np.ascontiguousarray(img), "mask": np.ascontiguousarray(msk)}

    return transform


register_dataset("pets", pets, TFDS_KEYS)
register_dataset("mask_folder", mask_folder, ("train_dir", "val_dir", "valid_list", "codes_file", "label_pattern",
                                              "void_class", "void_value", "mask_mismatch", "instances",
                                              "stuff_classes", "instance_pattern", "min_instance_area"))
register_dataset("shapes_segmentation", shapes_segmentation, SHAPES_KEYS)
