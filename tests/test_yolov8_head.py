"""The `yolov8` head (jaxcv/detectors/yolov8.py) through the detection task: its config sections and named errors,
loss = `yolov8_loss` called directly (padding-invariant, one trace for any real-box count), fixed-shape decoding =
`yolov8_nms` with ultralytics' validation settings, and the `:smoke` config end to end, learning a fixed batch."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcv.config import detection_config, load_config_file
from jaxcv.ops.yolov8_loss import yolov8_loss, yolov8_nms
from jaxcv.tasks import create_task
from jaxcv.train import TRACE_COUNTS, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "configs" / "shapes_yolov8n.py"
A64 = 8 * 8 + 4 * 4 + 2 * 2  # anchor points of a 64 px input (strides 8, 16, 32)


def smoke_config():
    return load_config_file(f"{SHAPES}:smoke")


@pytest.fixture(scope="module")
def task():
    t = create_task(smoke_config())
    t.validate()
    return t


def random_outputs(rng: np.random.Generator, b: int = 2, k: int = 3) -> dict[str, np.ndarray]:
    """Model-shaped outputs for a 64 px input: DFL logits, class logits and decoded boxes / probabilities."""
    cxcy = rng.uniform(4, 60, (b, A64, 2))
    wh = rng.uniform(6, 40, (b, A64, 2))
    probs = rng.uniform(0, 1, (b, A64, k)) ** 3
    return {"boxes": rng.normal(size=(b, A64, 64)).astype(np.float32),
            "scores": rng.normal(size=(b, A64, k)).astype(np.float32) - 2,
            "decoded": np.concatenate([cxcy, wh, probs], -1).astype(np.float32)}


def test_default_config_and_model_kwargs(task):
    c = detection_config(head="yolov8")
    assert c.model.name == "yolov8" and c.model.scale == "n" and c.head == "yolov8"
    assert (c.loss.box, c.loss.cls, c.loss.dfl, c.loss.topk, c.loss.alpha, c.loss.beta) == (7.5, 0.5, 1.5, 10, 0.5, 6.0)
    pc = c.postprocess
    assert (pc.conf_thres, pc.iou_thres, pc.max_det, pc.multi_label) == (0.001, 0.7, 300, True)
    kwargs = task.model_kwargs()
    assert kwargs["num_classes"] == 3 and kwargs["reg_max"] == 16 and kwargs["scale"] == "n"


@pytest.mark.parametrize("key,value,match", [
    ("data.image_size", 80, r"config\.data\.image_size=80: must be a multiple of 32"),
    ("model.reg_max", 1, r"config\.model\.reg_max=1"),
    ("loss.box", -1.0, r"config\.loss\.box=-1\.0"),
    ("loss.topk", 0, r"config\.loss\.topk=0"),
    ("loss.alpha", -0.5, r"config\.loss\.alpha=-0\.5"),
    ("postprocess.conf_thres", 1.0, r"config\.postprocess\.conf_thres=1\.0"),
    ("postprocess.iou_thres", 1.5, r"config\.postprocess\.iou_thres=1\.5"),
    ("postprocess.max_det", 0, r"config\.postprocess\.max_det=0"),
])
def test_bad_settings_fail_naming_the_key(key, value, match):
    config = smoke_config()
    section, leaf = key.split(".")
    with config.unlocked():
        config[section][leaf] = value
    with pytest.raises(ValueError, match=match):
        create_task(config).validate()


def test_loss_is_yolov8_loss_and_traced_once(task):
    rng = np.random.default_rng(0)
    out = random_outputs(rng)
    g = task.config.data.max_boxes
    xy = rng.uniform(0, 40, (2, g, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(6, 24, (2, g, 2))], -1).astype(np.float32)
    labels = rng.integers(0, 3, (2, g)).astype(np.int32)
    traces = []

    def loss(outputs, batch):
        traces.append(1)
        return task.loss(outputs, batch)

    jitted = jax.jit(loss)
    direct = jax.jit(lambda bx, sc, gb, gl, gm: yolov8_loss(bx, sc, gb, gl, gm, image_hw=(64, 64)))
    for real in ((1, 0), (3, 5), (g, 2)):
        mask = np.arange(g)[None] < np.asarray(real)[:, None]
        total, terms = jitted(out, {"boxes": boxes, "labels": labels, "box_mask": mask})
        n = max(real)  # the direct call sees only as much padding as its batch needs
        ref = direct(out["boxes"], out["scores"], boxes[:, :n], labels[:, :n], mask[:, :n])
        assert set(terms) == {"box_loss", "cls_loss", "dfl_loss"}
        np.testing.assert_allclose(float(total), float(ref["loss"]), rtol=1e-5)
        for k in terms:
            np.testing.assert_allclose(float(terms[k]), float(ref[k]), rtol=1e-5, err_msg=k)
        np.testing.assert_allclose(float(total), 2 * sum(float(v) for v in terms.values()), rtol=1e-5)
        assert np.isfinite(float(total)) and (float(ref["num_fg"]) > 0) == (sum(real) > 0)
    assert len(traces) == 1, f"the task's loss traced {len(traces)} times for different numbers of boxes"
    with pytest.raises(ValueError, match="expects"):  # outputs of another class count
        jax.eval_shape(task.loss, {**out, "scores": out["scores"][..., :2]}, {"boxes": boxes, "labels": labels,
                                                                             "box_mask": mask})


def test_predict_gives_fixed_shape_detections(task):
    out = random_outputs(np.random.default_rng(1))
    det = jax.device_get(jax.jit(task.predict)(out, {}))
    d = task.config.postprocess.max_det
    assert det["boxes"].shape == (2, d, 4) and det["scores"].shape == det["labels"].shape == det["valid"].shape
    assert det["labels"].dtype == np.int32 and det["valid"].dtype == bool
    ref, _, kept = jax.device_get(yolov8_nms(out["decoded"], conf_thres=0.001, iou_thres=0.7, max_det=d,
                                             multi_label=True))
    np.testing.assert_array_equal(det["valid"], kept)
    np.testing.assert_array_equal(det["boxes"], ref[..., :4])
    np.testing.assert_array_equal(det["scores"], ref[..., 4])
    np.testing.assert_array_equal(det["labels"], ref[..., 5].astype(np.int32))
    for b in range(2):
        n = int(det["valid"][b].sum())
        assert n > A64  # multi-label: one candidate per (anchor, class), more than one per anchor
        assert det["valid"][b, :n].all() and not det["scores"][b, n:].any()
        assert (np.diff(det["scores"][b, :n]) <= 0).all() and (det["scores"][b, :n] > 0.001).all()
        xyxy = det["boxes"][b, :n]
        assert (xyxy[:, 2:] > xyxy[:, :2]).all()


def test_smoke_config_trains_evaluates_and_learns_a_fixed_batch(tmp_path):
    """The `:smoke` config end to end (trainer, loader, COCO evaluation), on 8 training images without
    augmentation, so every step sees the same batch: 40 AdamW steps. The box term is 7.5 x the target-score
    weighted mean of (1 - CIoU) over the assigned anchors, which only better boxes lower (a random init starts
    near 1 - CIoU = 0.9): it must halve, as must the total. The class term alone could fall by lowering every
    logit, so it is not relied on."""
    config = smoke_config()
    with config.unlocked():
        config.data.num_train, config.data.num_val = 8, 8
        config.data.augment.hflip, config.data.augment.scale_jitter = False, ()
        config.num_train_steps, config.log_every, config.checkpoint_every = 40, 5, 40
    before = TRACE_COUNTS["train_step"]
    result = train_and_evaluate(config, tmp_path)
    assert TRACE_COUNTS["train_step"] - before == 1
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for m in ("AP", "AP50", "AR100"):
        assert 0.0 <= result[m] <= 1.0 and m in saved, result
    assert (tmp_path / "eval" / "detections.json").exists()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert len(train) == 8 and all(np.isfinite(x["loss"]) and "dfl_loss" in x for x in train)
    first, last = train[0], train[-1]
    print(f"loss {first['loss']:.1f} -> {last['loss']:.1f}, box {first['box_loss']:.3f} -> {last['box_loss']:.3f}, "
          f"dfl {first['dfl_loss']:.3f} -> {last['dfl_loss']:.3f}")
    assert last["loss"] < 0.5 * first["loss"]
    assert last["box_loss"] < 0.5 * first["box_loss"]
