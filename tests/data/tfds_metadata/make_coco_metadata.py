"""Writes tests/data/tfds_metadata/coco/2017/VERSION/{dataset_info.json, features.json}: the metadata
that `tfds build coco/2017 --file_format=array_record` saves, from tfds' own Coco builder run on three
train and two validation examples made here (so no download). Needs TensorFlow (the `tfds-build`
extra): `.venv/bin/python tests/data/tfds_metadata/make_coco_metadata.py`."""

import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.object_detection import coco

OUT = Path(__file__).resolve().parent


def examples(n: int, first_id: int):
    """`n` COCO-format examples (1..n objects each) with image ids from `first_id`."""
    rng = np.random.default_rng(first_id)
    for i in range(n):
        k = i + 1
        y0, x0 = rng.uniform(0, 0.4, k), rng.uniform(0, 0.4, k)
        yield str(first_id + i), {
            "image": rng.integers(0, 255, (40 + 8 * i, 60, 3), dtype=np.uint8),
            "image/filename": f"{first_id + i:012d}.jpg",
            "image/id": first_id + i,
            "objects": {"id": np.arange(k), "area": np.full(k, 50), "label": np.arange(k),
                        "bbox": np.stack([y0, x0, y0 + 0.3, x0 + 0.5], 1).astype(np.float32),
                        "is_crowd": np.zeros(k, bool)},
        }


def main() -> None:
    def split_generators(self, dl_manager):
        return {"train": examples(3, 1000), "validation": examples(2, 2000)}

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(coco.Coco, "_split_generators", split_generators):
        builder = tfds.builder("coco/2017", data_dir=tmp, file_format="array_record")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        out = OUT / "coco" / "2017" / str(builder.version)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("dataset_info.json", "features.json"):
            shutil.copy(Path(builder.data_dir) / name, out / name)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
