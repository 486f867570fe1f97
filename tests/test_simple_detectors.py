"""The teaching detectors: largest-object localization (task, metric, model) and the SSD-style grid
detector (anchor count and layout, bce/focal switch), each config trained a few steps and evaluated."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcv.detectors.ssd  # noqa: F401  (registers the ssd_grid model)
from jaxcv.config import load_config_file
from jaxcv.data.loader import Loader
from jaxcv.models import create_model
from jaxcv.models.simple_detectors import relative_boxes
from jaxcv.ops.anchors import grid_anchors
from jaxcv.ops.matching import detection_targets
from jaxcv.tasks import create_task
from jaxcv.tasks.localization import (
    LocalizationEvaluator,
    largest_box,
    make_localization_transform,
    paired_box_iou,
)
from jaxcv.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def rbg_key(seed: int) -> jax.Array:
    """rbg keys: XLA compiles an init's RNG on CPU much faster than with threefry."""
    return jax.random.key(seed, impl="rbg")


def load_config(name: str, arg: str | None = "smoke"):
    return load_config_file(f"{ROOT}/configs/{name}.py" + (f":{arg}" if arg else ""))


# ---- localization: metric, targets, transform --------------------------------------------------


def test_paired_iou_hand_cases():
    a = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 2], [1, 1, 1, 3]], np.float64)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [2, 2, 3, 3], [1, 0, 3, 2], [0, 0, 2, 2]], np.float64)
    # overlap 1x1 over 4 + 4 - 1; identical; disjoint; 2x2 inside 4x2 -> 4 / 8; zero-width box
    expected = [1 / 7, 1.0, 0.0, 0.5, 0.0]
    np.testing.assert_allclose(paired_box_iou(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(paired_box_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))),
                               expected, rtol=1e-6)
    # IoU does not change when both boxes are scaled per axis (so relative coordinates are fine)
    s = np.array([640, 480, 640, 480])
    np.testing.assert_allclose(paired_box_iou(a * s, b * s), expected, rtol=1e-12)


def test_evaluator_hand_batch():
    ev = LocalizationEvaluator(["a", "b", "c"])
    gt = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.2, 0.2], [0.5, 0.5, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], np.float32)
    pred = np.array([[0, 0, 0.5, 0.3], [0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]],
                    np.float32)
    batch = {"box": gt, "label": np.array([0, 1, 2, 0, 0]), "has_box": np.array([1, 1, 1, 0, 1], bool),
             "valid": np.array([1, 1, 1, 1, 0], bool), "image": np.zeros((5, 8, 8, 3), np.float32)}
    preds = {"boxes": pred, "labels": np.array([0, 1, 1, 0, 0]), "scores": np.full(5, 0.9, np.float32)}
    ev.update(batch, preds)
    r = ev.result()
    # images 3 (no box) and 4 (padding) do not count; IoUs 0.6, 1/7, 1; classes right, right, wrong
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["mean_iou"] == pytest.approx((0.6 + 1 / 7 + 1.0) / 3, rel=1e-6)
    assert r["acc_iou50"] == pytest.approx(2 / 3)
    assert r["loc_accuracy"] == pytest.approx(1 / 3)


def test_largest_box_and_transform_flip():
    boxes = np.array([[0, 0, 10, 10], [10, 10, 50, 30], [5, 5, 25, 25]], np.float32)  # areas 100, 800, 400
    box, label, found = largest_box(boxes, np.array([2, 1, 0]))
    assert found and label == 1
    np.testing.assert_array_equal(box, boxes[1])
    assert largest_box(np.zeros((0, 4)), np.zeros(0))[2] is False

    image = np.zeros((40, 80, 3), np.uint8)
    image[10:30, 10:50] = 255  # the largest box, white
    crowd = {"image": image, "boxes": np.array([[0, 0, 80, 40], *boxes]), "labels": np.array([0, 2, 1, 0]),
             "iscrowd": np.array([1, 0, 0, 0])}
    ex = {"image": image, "boxes": boxes, "labels": np.array([2, 1, 0]), "image_id": 7}
    plain = make_localization_transform(32, train=False)(ex, np.random.default_rng(0))
    np.testing.assert_array_equal(make_localization_transform(32, train=False)(crowd, None)["box"], plain["box"])
    np.testing.assert_allclose(plain["box"], [10 / 80, 10 / 40, 50 / 80, 30 / 40])
    assert plain["image"].shape == (32, 32, 3) and plain["label"] == 1 and plain["has_box"]
    flips = [make_localization_transform(32, train=True)(ex, np.random.default_rng(s)) for s in range(8)]
    flipped = [f for f in flips if not np.allclose(f["box"], plain["box"])]
    assert 0 < len(flipped) < 8
    f = flipped[0]
    np.testing.assert_allclose(f["box"], [1 - 50 / 80, 10 / 40, 1 - 10 / 80, 30 / 40])
    np.testing.assert_allclose(f["image"], plain["image"][:, ::-1])  # image flipped with its box


def test_relative_boxes_are_valid():
    raw = jax.random.normal(jax.random.key(0), (64, 4)) * 3
    for fmt in ("cxcywh", "xyxy"):
        b = np.asarray(relative_boxes(raw, fmt))
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert np.asarray(relative_boxes(raw, "xyxy")).min() >= 0 and np.asarray(relative_boxes(raw, "xyxy")).max() <= 1
    logit = np.log(np.array([0.5, 0.5, 0.2, 0.4]) / (1 - np.array([0.5, 0.5, 0.2, 0.4])))
    np.testing.assert_allclose(relative_boxes(jnp.asarray(logit), "cxcywh"), [0.4, 0.3, 0.6, 0.7], atol=1e-6)
    np.testing.assert_allclose(relative_boxes(jnp.asarray(logit), "xyxy"), [0.2, 0.4, 0.5, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="box_format"):
        relative_boxes(raw, "xywh")
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(KeyError, match="unknown backbone"):
        m = create_model("ssd_grid", num_classes=2, backbone="no_such_net")
        jax.eval_shape(lambda: m.init(jax.random.key(0), x))


def test_localization_loss_falls_over_30_steps():
    """A small-CNN localizer fits one fixed batch of shapes: total, box and class losses all fall."""
    config = load_config("shapes_localization")
    with config.unlocked():
        config.model.backbone = "small_cnn"
        config.model.backbone_kwargs = {"widths": (16, 32), "hidden": 64, "dropout_rate": 0.0}
        config.model.dropout_rate = 0.0
        config.data.image_size = 32
    task = create_task(config)
    model = task.create_model()
    batch = next(Loader(task.source("train"), task.make_transform(False), global_batch_size=8).eval_batches())
    assert batch["has_box"].all()
    batch = {k: jnp.asarray(batch[k]) for k in task.device_keys}
    params = jax.jit(model.init)(rbg_key(0), batch["image"])["params"]
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            return task.loss(model.apply({"params": p}, batch["image"], train=False), batch)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, terms

    history = []
    for _ in range(30):
        params, opt_state, loss, terms = step(params, opt_state)
        history.append((float(loss), float(terms["box_loss"]), float(terms["cls_loss"])))
    first, last = np.array(history[:3]).mean(0), np.array(history[-3:]).mean(0)
    assert np.isfinite(history).all()
    assert last[0] < 0.5 * first[0], history
    assert last[1] < first[1] and last[2] < first[2], history


# ---- SSD-style grid detector -------------------------------------------------------------------


@pytest.mark.parametrize("size,grids", [(128, (4, 2, 1)), (96, (8, 4, 2, 1)), (64, (3, 1))])
def test_ssd_grid_outputs_match_anchor_count(size, grids):
    anchors, per_grid = grid_anchors((size, size), grids)
    assert per_grid == [k * k * 9 for k in grids]
    m = create_model("ssd_grid", num_classes=5, num_anchors=9, grid_sizes=grids, channels=16)
    x = jnp.zeros((2, size, size, 3))
    out = jax.eval_shape(lambda: m.apply(m.init(jax.random.key(0), x), x))
    assert out["cls_logits"].shape == (2, len(anchors), 5)
    assert out["bbox_regression"].shape == (2, len(anchors), 4)


def test_ssd_grid_channel_layout_matches_anchor_order():
    """Anchor i of a cell is channel block i of the head conv (channel a * K + c), cells row-major,
    as grid_anchors orders them (zoom-major within a cell)."""
    m = create_model("ssd_grid", num_classes=3, num_anchors=9, grid_sizes=(2, 1), channels=8, backbone="conv",
                     backbone_kwargs={"widths": (8, 8, 8)})
    x = jnp.zeros((1, 32, 32, 3))
    v = jax.jit(m.init)(rbg_key(0), x)
    params = jax.tree_util.tree_map(lambda p: p, v["params"])
    for i in range(2):
        params[f"cls_{i}"] = {"kernel": jnp.zeros_like(params[f"cls_{i}"]["kernel"]),
                              "bias": jnp.arange(27, dtype=jnp.float32) + 100 * i}
        params[f"box_{i}"] = {"kernel": jnp.zeros_like(params[f"box_{i}"]["kernel"]),
                              "bias": jnp.arange(36, dtype=jnp.float32)}
    out = jax.jit(m.apply)({**v, "params": params}, x)
    a = np.arange(9)
    expected_cls = np.concatenate([np.tile(a[:, None] * 3 + np.arange(3), (4, 1)),  # 2x2 cells
                                   100 + a[:, None] * 3 + np.arange(3)])  # 1x1 cell
    np.testing.assert_array_equal(np.asarray(out["cls_logits"][0]), expected_cls)
    np.testing.assert_array_equal(np.asarray(out["bbox_regression"][0]),
                                  np.tile(a[:, None] * 4 + np.arange(4), (5, 1)))


def test_detection_task_grid_anchors_and_bce_switch():
    config = load_config("shapes_ssd")
    task = create_task(config)
    task.validate()
    anchors, per_grid = grid_anchors((64, 64), (4, 2, 1), (0.75, 1.0, 1.3), (1.0, 2.0, 0.5))
    np.testing.assert_array_equal(task.head.anchors, anchors)
    assert task.head.num_anchors_per_level == per_grid
    kwargs = task.model_kwargs()
    assert kwargs["num_anchors"] == 9 and kwargs["grid_sizes"] == (4, 2, 1)

    rng = np.random.default_rng(0)
    a, k = len(anchors), task.num_classes
    outputs = {"cls_logits": jnp.asarray(rng.normal(size=(2, a, k)), jnp.float32),
               "bbox_regression": jnp.asarray(rng.normal(size=(2, a, 4)) * 0.1, jnp.float32)}
    batch = {"boxes": jnp.asarray([[[4, 4, 30, 30], [30, 10, 60, 50], [0, 0, 0, 0]],
                                   [[10, 20, 20, 28], [0, 0, 0, 0], [0, 0, 0, 0]]], jnp.float32),
             "labels": jnp.asarray([[0, 2, 0], [1, 0, 0]], jnp.int32),
             "box_mask": jnp.asarray([[1, 1, 0], [1, 0, 0]], bool)}
    focal, focal_terms = jax.jit(task.loss)(outputs, batch)
    with config.unlocked():
        config.loss.classification = "bce"
    bce, bce_terms = jax.jit(task.loss)(outputs, batch)  # a new jit: the config is read when tracing
    # bce: sigmoid BCE summed over classes and non-ignored anchors, per image / #foreground, averaged
    t = jax.jit(detection_targets)(anchors, batch["boxes"], batch["labels"], batch["box_mask"])
    fg, valid = np.asarray(t["fg_mask"]), np.asarray(t["valid_mask"])
    assert fg.sum(-1).min() >= 1  # every image has foreground anchors, so the check is not trivial
    onehot = np.eye(k)[np.where(fg, np.asarray(t["cls_targets"]), 0)] * fg[..., None]
    logits = np.asarray(outputs["cls_logits"], np.float64)
    per_anchor = (np.logaddexp(0, logits) - logits * onehot).sum(-1)  # BCE with logits, by hand
    per_image = np.where(valid, per_anchor, 0).sum(-1) / np.maximum(fg.sum(-1), 1)
    assert float(bce_terms["cls_loss"]) == pytest.approx(float(per_image.mean()), rel=1e-5)
    assert float(bce_terms["box_loss"]) == pytest.approx(float(focal_terms["box_loss"]), rel=1e-6)
    assert float(bce_terms["cls_loss"]) > 2 * float(focal_terms["cls_loss"])  # focal down-weights easy anchors
    assert math.isfinite(float(bce)) and math.isfinite(float(focal))

    wrong = {k: v[:, :-9] for k, v in outputs.items()}
    with pytest.raises(ValueError, match="anchors"):
        jax.eval_shape(task.loss, wrong, batch)
    with config.unlocked():
        config.loss.classification = "softmax"
    with pytest.raises(ValueError, match="loss.classification"):
        task.validate()


# ---- both configs: a few steps, then evaluation --------------------------------------------------


@pytest.mark.parametrize("name,metrics,artifact", [
    ("shapes_localization", ("accuracy", "mean_iou", "acc_iou50", "loc_accuracy"), "localization.json"),
    ("shapes_ssd", ("AP", "AP50", "AR100"), "detections.json"),
])
def test_smoke_config_trains_and_evaluates(name, metrics, artifact, tmp_path):
    """The `:smoke` config end to end (trainer, checkpoints, evaluator, artifacts). The ResNet-18 is
    swapped for a tiny conv backbone to keep this fast on a shared CPU; tests/test_configs.py builds
    the configs' own models."""
    config = load_config(name)
    with config.unlocked():
        config.model.backbone = "conv"
        config.model.backbone_kwargs = {"widths": (16, 32, 32, 32, 32)}  # stride 32, like C5
        config.num_train_steps = 3
        config.log_every = 3
        config.checkpoint_every = 3
        config.data.num_val = 8
    result = train_and_evaluate(config, tmp_path)
    for m in metrics:
        assert m in result and 0.0 <= result[m] <= 1.0, result
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) <= set(saved)
    assert (tmp_path / "eval" / artifact).exists()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert train and all(np.isfinite(x["loss"]) for x in train)
    assert any(x["split"] == "eval" and x["step"] == 3 for x in lines)
