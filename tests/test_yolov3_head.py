"""The `yolov3` head and `darknet` model builder (jaxcv/detectors/yolov3.py) through the detection task: the built-in
cfg is the public file, the cfg adaptation, loss = `yolov3_loss` called directly (one trace for any real-box count),
decoding against the model's OpenCV rows and a host NMS, named config errors, the `:smoke` config end to end, and
learning on a fixed batch."""

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import fixture_path

import jaxcv.detectors.yolov3 as yolo
from jaxcv.config import load_config_file
from jaxcv.losses_yolov3 import yolov3_loss
from jaxcv.models import create_model
from jaxcv.models.darknet import parse_cfg
from jaxcv.ops.darknet_post import nms_boxes
from jaxcv.tasks import create_task
from jaxcv.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "configs" / "shapes_yolov3_tiny.py"
TINY_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))


def smoke_config():
    return load_config_file(f"{SHAPES}:smoke")


@pytest.fixture(scope="module")
def smoke():
    """The `:smoke` task (64 px, width 0.25), its model, initialized variables and a fixed batch of 4 images."""
    config = smoke_config()
    task = create_task(config)
    task.validate()
    model = task.create_model()
    transform = task.make_transform(train=False)
    examples = [transform(task.source("train")[i], np.random.default_rng(i)) for i in range(4)]
    batch = {k: np.stack([ex[k] for ex in examples]) for k in ("image", "boxes", "labels", "box_mask")}
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(batch["image"])  # small: -O0 is faster
    return task, model, variables, batch


def test_builtin_cfg_is_the_public_file():
    text = yolo.BUILTIN_CFGS["yolov3-tiny"].encode()
    blob = hashlib.sha1(b"blob %d\0" % len(text) + text).hexdigest()
    assert blob == yolo.YOLOV3_TINY_GIT_BLOB
    assert text == fixture_path("yolo/yolov3-tiny.cfg").read_bytes()


def test_cfg_adapted_to_classes_anchors_masks_and_width():
    anchors, masks = ((20, 20), (30, 30), (40, 40), (50, 50)), ((2, 3), (0, 1))
    original = parse_cfg(yolo.YOLOV3_TINY_CFG)
    adapted = yolo.darknet_sections("yolov3-tiny", 3, anchors, masks)
    heads = {i - 1 for i, s in enumerate(adapted) if s.kind == "yolo"}
    specs = [s.spec for s in adapted if s.kind == "yolo"]
    expected = tuple((float(w), float(h)) for w, h in anchors)
    assert [(s.classes, s.mask, s.anchors) for s in specs] == [(3, m, expected) for m in masks]
    for i, (a, o) in enumerate(zip(adapted, original, strict=True)):
        assert a.kind == o.kind
        if i in heads:
            assert a.spec.filters == 2 * (3 + 5) and o.spec.filters == 255
        elif a.kind != "yolo":
            assert a.spec == o.spec, i  # everything else as written
    narrow = yolo.darknet_sections("yolov3-tiny", 3, width=0.25)
    for i, (a, o) in enumerate(zip(narrow, original, strict=True)):
        if a.kind == "convolutional":
            assert a.spec.filters == (24 if i in heads else o.spec.filters // 4), i
    mini = yolo.darknet_sections(fixture_path("yolo/yolov3-mini.cfg"), 2)  # a cfg file path
    assert [s.spec.filters for i, s in enumerate(mini) if i + 1 < len(mini) and mini[i + 1].kind == "yolo"] == [21, 21]
    with pytest.raises(ValueError, match="neither a file nor a built-in cfg"):
        yolo.darknet_sections("yolov3-tinny")
    with pytest.raises(ValueError, match="2 \\[yolo\\] sections but 1 anchor masks"):
        yolo.darknet_sections("yolov3-tiny", 3, anchors, ((0, 1, 2, 3),))
    model = create_model("darknet", cfg="yolov3-tiny", num_classes=3, anchors=anchors, masks=masks, width=0.25)
    x = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.key(0), x), x)
    assert [r.shape for r in out["raw"]] == [(2, 2, 2, 2, 8), (2, 4, 4, 2, 8)]


def test_head_config_and_model_kwargs():
    config = smoke_config()
    task = create_task(config)
    task.validate()
    kwargs = task.model_kwargs()
    assert kwargs["num_classes"] == 3 and kwargs["cfg"] == "yolov3-tiny" and kwargs["width"] == 0.25
    assert kwargs["anchors"] == tuple(tuple(a) for a in config.anchors.sizes)
    assert kwargs["masks"] == ((3, 4, 5), (0, 1, 2))
    with config.unlocked():  # () = the cfg's own anchors and masks
        config.anchors.sizes, config.anchors.masks = (), ()
    head = create_task(config).head
    assert head.anchors == tuple((float(w), float(h)) for w, h in TINY_ANCHORS)
    assert head.masks == ((3, 4, 5), (0, 1, 2))


@pytest.mark.parametrize("key,value,match", [
    ("data.image_size", 80, r"config\.data\.image_size=80: must be a multiple of 32"),
    ("anchors.masks", ((3, 4, 5),), r"config\.anchors\.masks=.*one mask per \[yolo\]"),
    ("anchors.masks", ((3, 4, 6), (0, 1, 2)), r"config\.anchors\.masks=.*indices must be in 0\.\.5"),
    ("anchors.masks", ((3, 4, 5), (0, 1, 1)), r"config\.anchors\.masks=.*appears twice"),
    ("anchors.sizes", ((10.0, 0.0), (20.0, 20.0)), r"config\.anchors\.sizes=.*must be > 0"),
    ("model.cfg", "no_such.cfg", r"config\.model\.cfg='no_such\.cfg'"),
    ("loss.box_loss", "l1", r"config\.loss\.box_loss='l1'"),
    ("loss.ignore_thresh", 1.5, r"config\.loss\.ignore_thresh=1\.5"),
    ("postprocess.nms_thresh", -0.1, r"config\.postprocess\.nms_thresh"),
])
def test_bad_settings_fail_naming_the_key(key, value, match):
    config = smoke_config()
    section, leaf = key.split(".")
    with config.unlocked():
        config[section][leaf] = value
    with pytest.raises(ValueError, match=match):
        create_task(config).validate()


def test_loss_is_yolov3_loss_traced_once(smoke):
    task, _, _, _ = smoke
    rng = np.random.default_rng(0)
    raw = [jnp.asarray(rng.normal(size=(2, r, r, 3, 8)) * 0.5, jnp.float32) for r in (2, 4)]
    g = task.config.data.max_boxes
    xy = rng.uniform(0, 40, (2, g, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 24, (2, g, 2))], -1).astype(np.float32)
    labels = rng.integers(0, 3, (2, g)).astype(np.int32)
    traces = []

    def loss(outputs, batch):
        traces.append(1)
        return task.loss(outputs, batch)

    jitted = jax.jit(loss)
    direct = jax.jit(lambda r, b, lab, m: yolov3_loss(
        r, b, lab, m, anchors=task.config.anchors.sizes, masks=((3, 4, 5), (0, 1, 2)), image_size=(64, 64),
        ignore_thresh=0.7))
    for real in ((1, 0), (3, 5), (g, 2)):
        mask = np.arange(g)[None] < np.asarray(real)[:, None]
        batch = {"boxes": boxes, "labels": labels, "box_mask": mask}
        total, terms = jitted({"raw": raw}, batch)
        ref = direct(raw, boxes, labels, mask)
        np.testing.assert_allclose(float(total), float(ref["loss"]), rtol=1e-6)
        assert set(terms) == {"xy_loss", "wh_loss", "obj_loss", "noobj_loss", "cls_loss"}
        for k in ("xy", "wh", "obj", "noobj", "cls"):
            np.testing.assert_allclose(float(terms[f"{k}_loss"]), float(ref[k]), rtol=1e-6, err_msg=k)
    assert len(traces) == 1
    with pytest.raises(ValueError, match="expects"):  # maps of another class count
        jax.eval_shape(task.loss, {"raw": [r[..., :7] for r in raw]}, batch)


def test_decode_matches_model_rows_and_host_nms(smoke):
    task, model, variables, batch = smoke
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch["image"][:2])
    head = task.head
    boxes, scores = jax.jit(yolo.yolo_boxes, static_argnums=(1, 2, 3))(out["raw"], head.anchors, head.masks, (64, 64))
    rows = np.concatenate([np.asarray(r) for r in out["yolo"]], 1)  # OpenCV's rows: fractions of the input
    cx, cy, w, h = (rows[..., i] * 64 for i in range(4))
    np.testing.assert_allclose(np.asarray(boxes), np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores), rows[..., 5:], rtol=1e-5, atol=1e-7)

    det = jax.device_get(jax.jit(task.predict)(out, {}))
    d = task.config.postprocess.detections_per_img
    assert det["boxes"].shape == (2, d, 4) and det["scores"].shape == det["labels"].shape == det["valid"].shape
    assert det["labels"].dtype == np.int32 and det["valid"].dtype == bool
    pc = task.config.postprocess
    clipped = np.clip(np.asarray(boxes), 0, 64)
    for b in range(2):  # host reference: cv2.dnn.NMSBoxes per class on the clipped boxes, merged best first
        found = []
        for c in range(3):
            s = np.asarray(scores[b, :, c])
            xywh = np.concatenate([clipped[b, :, :2], clipped[b, :, 2:] - clipped[b, :, :2]], 1)
            found += [(float(s[i]), c, i) for i in nms_boxes(xywh, s, pc.score_thresh, pc.nms_thresh)]
        found = sorted(found, key=lambda f: -f[0])[:d]
        n = int(det["valid"][b].sum())
        assert n == len(found) > 0
        np.testing.assert_allclose(det["scores"][b, :n], [f[0] for f in found], rtol=1e-6)
        np.testing.assert_array_equal(det["labels"][b, :n], [f[1] for f in found])
        np.testing.assert_allclose(det["boxes"][b, :n], clipped[b, [f[2] for f in found]], rtol=1e-6, atol=1e-5)
        assert not det["valid"][b, n:].any() and not det["scores"][b, n:].any()


def test_smoke_config_trains_and_evaluates(tmp_path):
    config = smoke_config()
    with config.unlocked():
        config.num_train_steps, config.log_every, config.checkpoint_every, config.data.num_val = 3, 3, 3, 8
    result = train_and_evaluate(config, tmp_path)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for m in ("AP", "AP50", "AR100"):
        assert 0.0 <= result[m] <= 1.0 and m in saved, result
    assert (tmp_path / "eval" / "detections.json").exists()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert train and all(np.isfinite(x["loss"]) and "noobj_loss" in x for x in train)


def test_learns_a_fixed_batch(smoke):
    """Adam memorizing one batch of 4 images. The negatives' objectness term dominates the loss at init and falls
    by lowering one bias, which raises the assigned slots' objectness term; so besides the total falling 5x, the
    assigned slots' terms (box, objectness, class) must fall 5x too, which only working targets and gradients
    give. Both bounds leave several times the margin of what a correct loss reaches in these steps."""
    task, model, variables, batch = smoke
    tx = optax.adam(3e-3)
    params, stats = variables["params"], variables["batch_stats"]

    def loss_fn(p, s):
        out, new = model.apply({"params": p, "batch_stats": s}, batch["image"], train=True, mutable=["batch_stats"])
        total, terms = task.loss(out, batch)
        return total, (terms, new["batch_stats"])

    @jax.jit
    def step(p, s, opt):
        (total, (terms, s)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), s, opt, total, terms

    def positives(terms):
        return sum(float(terms[k]) for k in ("xy_loss", "wh_loss", "obj_loss", "cls_loss"))

    opt = tx.init(params)
    history = []
    for _ in range(40):
        params, stats, opt, total, terms = step(params, stats, opt)
        history.append((float(total), positives(terms)))
    (first, first_pos), (last, last_pos) = history[0], history[-1]
    print(f"loss {first:.3f} -> {last:.3f}, assigned-slot terms {first_pos:.3f} -> {last_pos:.3f}")
    assert last < 0.2 * first
    assert last_pos < 0.2 * first_pos
