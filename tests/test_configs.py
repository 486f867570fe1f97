"""Every file in configs/ builds its task, model and input pipeline (smoke size); overrides are checked.

scenic once shipped a config naming a trainer that did not exist: this test makes that impossible.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import mock_tfds
from PIL import Image

from jaxcv.config import load_config_file, validate_config
from jaxcv.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))


def load_config(path: Path, arg: str | None = "smoke"):
    return load_config_file(f"{path}:{arg}" if arg else path)


def make_user_data(tmp: Path) -> dict[str, str]:
    """Tiny COCO-JSON and CamVid-style folders so the user-data configs can build their pipelines."""
    rng = np.random.default_rng(0)
    images = tmp / "images"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}]}
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{i}.png", "height": 40, "width": 50})
        coco["annotations"].append(
            {"id": i + 1, "image_id": i + 1, "category_id": 7 if i % 2 else 1, "bbox": [5, 5, 20, 10],
             "area": 200.0, "iscrowd": 0}
        )
    (tmp / "ann.json").write_text(json.dumps(coco))
    seg = tmp / "camvid"
    (seg / "images").mkdir(parents=True)
    (seg / "labels").mkdir()
    (seg / "codes.txt").write_text("Sky\nRoad\nVoid\n")
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(seg / "images" / f"f{i}.png")
        Image.fromarray(rng.integers(0, 3, (32, 48), dtype=np.uint8)).save(seg / "labels" / f"f{i}_P.png")
    (seg / "valid.txt").write_text("f0.png\nf1.png\n")
    return {"json": str(tmp / "ann.json"), "images": str(images), "seg": str(seg)}


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    for required in ("shapes_retinanet", "voc_retinanet_r50", "coco_retinanet_r50_1x", "coco_json_retinanet",
                     "cifar10_resnet18", "eurosat_transfer", "shapes_unet", "pets_unet_r34", "mask_folder_unet"):
        assert required in names


def mock_kwargs(config) -> dict:
    """tfds' random pets trimaps hold values 0..254, which real trimaps never do: make them 1..3."""
    if config.data.name != "pets":
        return {}

    def as_data_source(self, split, **kwargs):
        gen = tfds.testing.mocking.RandomFakeGenerator(self.info.features, 4)
        return [{**ex, "segmentation_mask": ex["segmentation_mask"] % 3 + 1} for ex in gen]

    return {"as_data_source_fn": as_data_source}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_model_and_pipeline(path: Path, tmp_path: Path):
    config = load_config(path)
    assert config.is_locked, f"{path.name}: get_config must return a locked config"
    user = make_user_data(tmp_path)
    with config.unlocked():
        if config.data.name == "coco_json":
            config.data.train_json = config.data.val_json = user["json"]
            config.data.train_images = config.data.val_images = user["images"]
        if config.data.name == "mask_folder":
            config.data.train_dir = user["seg"]
            config.data.valid_list = "valid.txt"
            config.data.void_class = "Void"
    validate_config(config)  # includes: every config.data key is one its dataset reads
    with mock_tfds(4, **mock_kwargs(config)):  # coco/2017 from its saved metadata
        task = create_task(config)
        task.validate()
        task.evaluator_specs()
        model = task.create_model()
        variables = jax.eval_shape(
            lambda: model.init(jax.random.key(0), task.dummy_input(), train=False)
        )
        assert variables["params"]
        for split, train in (("train", True), ("validation", False)):
            example = task.make_transform(train)(task.source(split)[0], np.random.default_rng(0))
            s = config.data.image_size
            assert example["image"].shape == (s, s, 3), (path.name, split)
            assert np.isfinite(example["image"]).all()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_rejects_an_unknown_argument(path: Path):
    with pytest.raises(ValueError, match=r"unknown config argument\(s\) \['smok'\]; this config knows: .*smoke"):
        load_config(path, "smok")


def test_misspelt_data_key_in_a_config_file_fails():
    config = load_config(ROOT / "configs" / "shapes_retinanet.py")
    with config.unlocked():
        config.data.min_objets = 2  # a config file's typo: ConfigDicts accept new keys while unlocked
    with pytest.raises(ValueError, match=r"'min_objets' \(did you mean 'min_objects'\?\)"):
        validate_config(config)


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxcv.main", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_override_typo_names_key(tmp_path: Path):
    proc = run_main("--config=configs/shapes_retinanet.py:smoke", f"--workdir={tmp_path}",
                    "--config.optimizer.learning_rat=0.1")
    assert proc.returncode != 0
    assert "learning_rat" in proc.stderr
    assert "learning_rate" in proc.stderr  # the valid siblings are listed


def test_unknown_model_lists_registered(tmp_path: Path):
    proc = run_main("--config=configs/synthetic_classification.py:smoke", f"--workdir={tmp_path}",
                    "--config.model.name=resnet17")
    assert proc.returncode == 1
    assert "resnet17" in proc.stderr and "resnet18" in proc.stderr
