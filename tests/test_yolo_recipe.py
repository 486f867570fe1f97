"""The YOLO training and prediction recipe around the models: mosaic wired into training (and closed for the last
epochs, exactly on resume), YOLOv8's initial head biases (ultralytics' `Detect.bias_init`), the [0, 1] input with
grey letterbox padding the converted weights expect, and darknet YOLOv3 predicting end to end from `--mode=predict`
(configs/darknet_yolov3_predict.py on the fixture's yolov3-mini, ../shared/fixtures/yolo)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import fixture_path, load_regenerable
from PIL import Image

from jaxcv.config import load_config_file
from jaxcv.data.detection import make_detection_transform
from jaxcv.data.loader import Loader
from jaxcv.data.mosaic import loader_epoch, make_mosaic_transform
from jaxcv.models.backbones import IMPORTERS
from jaxcv.models.yolov8 import STRIDES, DetectHead
from jaxcv.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]


def config(name: str, arg: str | None = "smoke", **overrides):
    """configs/NAME.py[:arg] with overrides given as key__sub=value."""
    spec = f"{ROOT}/configs/{name}.py" + (f":{arg}" if arg else "")
    return load_config_file(spec, {k.replace("__", "."): v for k, v in overrides.items()})


# ---- mosaic in training ---------------------------------------------------------------------------------------

def mosaic_config(**overrides):
    """shapes YOLOv8n at 64 px on 64 images, batch 8: 8 steps an epoch, 24 steps = 3 epochs."""
    return config("shapes_yolov8n", data__augment__mosaic=1.0, data__augment__close_mosaic=1, num_train_steps=24,
                  **overrides)


def test_mosaic_training_transform_and_close_mosaic():
    c = mosaic_config()
    task = create_task(c)
    task.validate()
    source = task.source("train")
    assert task.mosaic_close_epoch() == 2  # 3 epochs, the last one closed
    transform = task.make_transform(True)
    aug = c.data.augment
    common = {"scale": tuple(aug.scale_jitter), "hflip": True, "hsv": (0.0, 0.0, 0.0)}  # photometric is off
    on = make_mosaic_transform(source, 64, c.data.max_boxes, prob=1.0, **common)
    off = make_mosaic_transform(source, 64, c.data.max_boxes, prob=0.0, **common)
    for epoch, expected in ((0, on), (1, on), (2, off), (7, off)):
        for i in (0, 5):
            rng = [c.seed, epoch, i]
            got = transform(source[i], np.random.default_rng(rng))
            want = expected(source[i], np.random.default_rng(rng))
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"epoch {epoch} item {i} {k}")
    rng = [c.seed, 0, 0]
    assert not np.array_equal(on(source[0], np.random.default_rng(rng))["image"],
                              off(source[0], np.random.default_rng(rng))["image"])  # the two paths differ
    assert loader_epoch(np.random.default_rng(rng)) == 0
    assert loader_epoch(np.random.default_rng(3)) is None  # not a Loader's rng: the mosaic stays on
    np.testing.assert_array_equal(transform(source[0], np.random.default_rng(3))["image"],
                                  on(source[0], np.random.default_rng(3))["image"])


def test_mosaic_off_by_default_is_the_plain_transform():
    c = config("shapes_yolov8n")
    assert c.data.augment.mosaic == 0.0 and c.data.augment.close_mosaic == 0
    assert c.preprocess.normalize == "imagenet" and c.preprocess.pad_value == -1
    task = create_task(c)
    source = task.source("train")
    aug = c.data.augment
    plain = make_detection_transform(64, c.data.max_boxes, True, hflip=True, scale_jitter=tuple(aug.scale_jitter))
    got = task.make_transform(True)(source[3], np.random.default_rng([0, 1, 3]))
    want = plain(source[3], np.random.default_rng([0, 1, 3]))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_mosaic_batches_resume_exactly_across_the_close():
    """Batch s is a function of (seed, s) alone, before, at and after the epoch where the mosaic closes (step 16)."""
    c = mosaic_config()
    task = create_task(c)

    def loader():
        return Loader(task.source("train"), task.make_transform(True), global_batch_size=8, seed=0, prefetch=0,
                      num_threads=2)

    it = loader().train_batches(0)
    ref = [next(it) for _ in range(18)]
    for start in (7, 15, 16):
        resumed = loader().train_batches(start)
        for s in range(start, 18):
            batch = next(resumed)
            for k in ref[s]:
                np.testing.assert_array_equal(batch[k], ref[s][k], err_msg=f"step {s} (resumed at {start}) {k}")


@pytest.mark.parametrize("key, value, message", [
    ("data.augment.mosaic", 1.5, r"config\.data\.augment\.mosaic=1\.5: must be a probability in \[0, 1\]"),
    ("data.augment.mosaic", -0.1, r"config\.data\.augment\.mosaic=-0\.1"),
    ("data.augment.close_mosaic", -1, r"config\.data\.augment\.close_mosaic=-1: must be an integer >= 0"),
    ("preprocess.normalize", "bgr", r"config\.preprocess\.normalize='bgr': unknown; known: imagenet, unit"),
    ("preprocess.pad_value", 300.0, r"config\.preprocess\.pad_value=300\.0: must be a grey level"),
])
def test_recipe_keys_are_validated_naming_the_key(key, value, message):
    task = create_task(config("shapes_yolov8n", **{key.replace(".", "__"): value}))
    with pytest.raises(ValueError, match=message):
        task.validate()


def test_coco_yolov8n_is_ultralytics_pipeline():
    c = config("coco_yolov8n", arg=None)
    assert (c.data.augment.mosaic, c.data.augment.close_mosaic) == (1.0, 10)
    assert tuple(c.data.augment.scale_jitter) == (0.5, 1.5) and c.data.augment.photometric and c.data.augment.hflip


# ---- YOLOv8 head bias init ---------------------------------------------------------------------------------------

def test_yolov8_head_biases_start_as_ultralytics_bias_init():
    """The head of `YOLOv8` (its submodule `head`) for COCO's 80 classes, initialized on the P3..P5 maps of a
    64 px yolov8n input."""
    num_classes = 80
    feats = [np.zeros((1, 64 // s, 64 // s, c), np.float32) for s, c in zip(STRIDES, (64, 128, 256), strict=True)]
    head = jax.jit(lambda: DetectHead(num_classes).init(jax.random.key(0, impl="rbg"), feats)["params"])()
    for i, stride in enumerate(STRIDES):
        box, cls = np.asarray(head[f"cv2_{i}_2"]["bias"]), np.asarray(head[f"cv3_{i}_2"]["bias"])
        assert box.shape == (64,) and cls.shape == (num_classes,)
        np.testing.assert_array_equal(box, np.float32(1.0))
        np.testing.assert_allclose(cls, math.log(5 / num_classes / (640 / stride) ** 2), rtol=1e-6)
    assert abs(float(np.asarray(head["cv3_0_2"]["bias"])[0]) - (-11.5366)) < 1e-4  # log(5 / 80 / 80^2)


def test_loaded_yolov8_weights_keep_their_biases():
    sd = load_regenerable("yolo", "yolov8n")
    _, variables = IMPORTERS.get("ultralytics:yolov8n")(sd)
    head = variables["params"]["head"]
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(head[f"cv2_{i}_2"]["bias"]), sd[f"model.22.cv2.{i}.2.bias"])
        np.testing.assert_array_equal(np.asarray(head[f"cv3_{i}_2"]["bias"]), sd[f"model.22.cv3.{i}.2.bias"])


# ---- input normalization of the converted-weight configs ------------------------------------------------------------

def write_coco_json(tmp: Path) -> tuple[str, str]:
    images = tmp / "images"
    images.mkdir()
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(images / "0.png")
    coco = {"images": [{"id": 1, "file_name": "0.png", "height": 40, "width": 50}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10], "area": 200.0,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "a"}]}
    (tmp / "ann.json").write_text(json.dumps(coco))
    return str(tmp / "ann.json"), str(images)


@pytest.mark.parametrize("name, grey", [("coco_yolov8n", 114.0), ("coco_json_yolov8n", 114.0),
                                        ("darknet_yolov3_predict", 127.5)])
def test_converted_weight_configs_feed_unit_rgb_with_grey_letterbox(name, grey, tmp_path):
    """ultralytics' and darknet's weights expect RGB / 255 with grey letterbox padding (ultralytics 114, darknet's
    `letterbox_image` 0.5): the configs say so, and the prediction/eval transform gives exactly that."""
    c = config(name, arg=None)
    assert (c.preprocess.normalize, c.preprocess.pad_value) == ("unit", grey)
    ann, images = write_coco_json(tmp_path)
    task = create_task(config("coco_json_yolov8n", data__train_json=ann, data__val_json=ann,
                              data__train_images=images, data__val_images=images, preprocess__pad_value=grey))
    task.validate()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)  # 64 px long side: no resize at 64
    x, meta = task.prepare_input(image)
    assert x.shape == (64, 64, 3) and meta["scale"] == 1.0
    np.testing.assert_array_equal(x[:32], image.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(x[32:], np.float32(grey) / np.float32(255))
    ex = task.make_transform(False)(task.source("validation")[0], np.random.default_rng(0))
    assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0


# ---- darknet YOLOv3 prediction demo ----------------------------------------------------------------------------------

def test_darknet_predict_config_draws_class_names_end_to_end(tmp_path):
    """`jaxcv.convert --arch darknet` then `jaxcv.main --mode=predict` with configs/darknet_yolov3_predict.py on the
    fixture's yolov3-mini (3 classes, 160 px; the config's COCO names replaced by 3 of them): the annotated picture
    and detections.json with class names, equal to the converted network run by hand on the letterboxed [0, 1]
    input with the config's confidence 0.5 and NMS 0.4."""
    from jaxcv.convert import main as convert_main
    from jaxcv.detectors.yolov3 import select_detections
    from jaxcv.models.darknet import from_darknet

    cfg, weights = fixture_path("yolo/yolov3-mini.cfg"), fixture_path("yolo/yolov3-mini.weights")
    convert_main(["--arch", "darknet", "--cfg", str(cfg), "--weights", str(weights), "--out", str(tmp_path / "w")])
    y, x = np.mgrid[0:120, 0:200]
    image = np.stack([(x * 1.2) % 256, (y * 2) % 256, ((x + y) * 0.7) % 256], -1).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "street.png")
    names = ["person", "bicycle", "car"]
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcv.main", "--config=configs/darknet_yolov3_predict.py",
         f"--workdir={tmp_path / 'run'}", "--mode=predict", f"--config.predict.inputs={tmp_path / 'street.png'}",
         f"--config.model.cfg={cfg}", f"--config.init_from={tmp_path / 'w'}", "--config.data.image_size=160",
         f"--config.data.class_names={','.join(names)}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run" / "predict"
    drawn = np.asarray(Image.open(out / "street_det.png").convert("RGB"))
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
    found = json.loads((out / "detections.json").read_text())
    assert found and {r["class"] for r in found} <= set(names)
    assert all(names[r["category_id"] - 1] == r["class"] and r["score"] >= 0.5 for r in found)

    # By hand: resize the long side to 160 (Pillow bilinear), pad the bottom with darknet's 0.5 grey, RGB / 255.
    net = np.full((160, 160, 3), 0.5, np.float32)
    net[:96] = np.asarray(Image.fromarray(image).resize((160, 96), Image.BILINEAR), np.float32) / np.float32(255)
    module, variables = from_darknet(cfg, weights)
    rows = np.concatenate([np.asarray(r) for r in module.apply(variables, net[None], train=False)["yolo"]], 1)
    cxcy, wh = rows[..., :2] * 160, rows[..., 2:4] * 160  # OpenCV's rows: normalized cx, cy, w, h, obj, scores
    boxes = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], -1)
    det = jax.tree.map(np.asarray, select_detections(boxes, rows[..., 5:], (160, 160), 0.5, 1000, 0.4, 100))
    keep = det["valid"][0]
    xyxy = np.clip(det["boxes"][0][keep] / 0.8, 0, [200, 120, 200, 120])
    got = np.asarray([r["bbox"] for r in found], np.float64)
    np.testing.assert_allclose(got, np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1), atol=2e-3)
    np.testing.assert_allclose([r["score"] for r in found], det["scores"][0][keep], atol=1e-5)
    assert [r["class"] for r in found] == [names[k] for k in det["labels"][0][keep]]
