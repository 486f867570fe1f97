"""Datasets (random-access sources), transforms and the batch loader. See `jaxcv.data.base`."""

from jaxcv.registry import Registry

# name -> callable(data_config: ConfigDict, split: str) -> Source
DATASETS = Registry("dataset")
# name -> the `config.data` keys that dataset reads, beyond the common ones (a key no one reads is a typo).
DATASET_KEYS: dict[str, frozenset[str]] = {}
# `config.data` keys of every dataset: read by the tasks, transforms and loader.
COMMON_DATA_KEYS = frozenset(
    {"name", "image_size", "num_classes", "bad_input", "num_threads", "augment", "max_boxes", "label_map"}
)
TFDS_KEYS = ("tfds_name", "tfds_data_dir", "train_split", "eval_split")


def register_dataset(name: str, factory, keys=()) -> None:
    """Registers `factory(data_config, split) -> Source` as `name`, reading `config.data.KEY` for `keys`."""
    DATASETS.register(name, factory)
    DATASET_KEYS[name] = frozenset(keys)


def check_data_keys(data_config) -> None:
    """Fails naming a `config.data` key that dataset `data_config.name` does not read (e.g. a misspelling)."""
    name = data_config.name
    if name not in DATASET_KEYS:
        DATASETS.get(name)  # the unknown-dataset error, listing the registered ones
    known = COMMON_DATA_KEYS | DATASET_KEYS[name]
    unknown = sorted(set(data_config) - known)
    if unknown:
        import difflib

        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                 for k in unknown]
        raise ValueError(f"config.data has keys dataset {name!r} does not read: {', '.join(hints)}; "
                         f"its keys: {', '.join(sorted(known))}")

# Source modules register themselves on import.
from jaxcv.data import classification, coco_json, detection, hf, segmentation, shapes, tfds_detection  # noqa: E402,F401,I001
