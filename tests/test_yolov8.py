"""YOLOv8 parity with ultralytics 8.4 (../shared/fixtures/yolo, Part B): head outputs and decode, NMS in both
`multi_label` modes, the task-aligned assigner and the training loss; the strict importer; scales; shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, load_io, load_regenerable

import jaxcv.models.yolov8 as yolov8_module
from jaxcv.interop import abstract_variables
from jaxcv.models import MODELS, create_model
from jaxcv.models.backbones import BACKBONES, IMPORTERS, create_backbone
from jaxcv.ops.tal import task_aligned_assign
from jaxcv.ops.yolov8_loss import decode_outputs, dfl_expectation, make_anchors, yolov8_loss, yolov8_nms_jit

NCHW_TO_NHWC = (0, 2, 3, 1)


@pytest.fixture(scope="module")
def io() -> dict:
    return load_io("yolo", "yolov8")


@pytest.fixture(scope="module")
def state_dict() -> dict:
    return load_regenerable("yolo", "yolov8n")


@pytest.fixture(scope="module")
def model(state_dict):
    return IMPORTERS.get("ultralytics:yolov8n")(state_dict)


@pytest.fixture(scope="module")
def outputs(model, io) -> dict:
    module, variables = model
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, io["input"].transpose(NCHW_TO_NHWC))
    return jax.tree.map(np.asarray, out)


def _head(io) -> tuple[np.ndarray, np.ndarray]:
    """The reference head outputs, anchor-major: boxes [B, A, 64], scores [B, A, K]."""
    return io["train_boxes"].transpose(0, 2, 1), io["train_scores"].transpose(0, 2, 1)


def _padded_targets(io, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixture's targets (batch_idx, cls, xywh normalized) as padded [B, g, 4] xyxy px, [B, g], [B, g]."""
    b, size = io["input"].shape[0], io["input"].shape[2]
    boxes, labels, mask = np.zeros((b, g, 4), np.float32), np.zeros((b, g), np.int32), np.zeros((b, g), bool)
    for i in range(b):
        rows = np.nonzero(io["batch_idx"] == i)[0]
        xywh = io["bboxes"][rows] * np.float32(size)
        half = xywh[:, 2:] / 2
        boxes[i, : len(rows)] = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], 1)
        labels[i, : len(rows)] = io["cls"][rows, 0]
        mask[i, : len(rows)] = True
    return boxes, labels, mask


def test_head_outputs_and_decoded_match_ultralytics(outputs, io, model) -> None:
    errors = {}
    for i in (3, 4, 5):
        errors[f"raw_p{i}"] = assert_close_rel(outputs[f"raw_p{i}"], io[f"raw_p{i}"].transpose(NCHW_TO_NHWC),
                                               1e-4, f"raw_p{i}")
    boxes, scores = _head(io)
    errors["boxes"] = assert_close_rel(outputs["boxes"], boxes, 1e-4, "boxes")
    errors["scores"] = assert_close_rel(outputs["scores"], scores, 1e-4, "scores")
    errors["decoded"] = assert_close_rel(outputs["decoded"], io["y"].transpose(0, 2, 1), 1e-4, "decoded")
    print("yolov8n relative max errors:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert model[0].num_classes == 3 and all(v.dtype == np.float32 for v in outputs.values())


def test_anchors_and_dfl_decode_match_ultralytics(io) -> None:
    points, strides = make_anchors([(20, 20), (10, 10), (5, 5)], (8, 16, 32))
    np.testing.assert_array_equal(np.asarray(points), io["make_anchors_points"])
    np.testing.assert_array_equal(np.asarray(strides), io["make_anchors_strides"][:, 0])
    boxes, scores = _head(io)
    assert_close_rel(dfl_expectation(jnp.asarray(boxes)), io["dfl_ltrb"].transpose(0, 2, 1), 1e-6, "dfl_ltrb")
    assert_close_rel(decode_outputs(jnp.asarray(boxes), jnp.asarray(scores), points, strides),
                     io["y"].transpose(0, 2, 1), 1e-6, "decode of the reference head outputs")


@pytest.mark.parametrize("multi_label", [False, True])
def test_nms_matches_ultralytics(io, outputs, multi_label: bool) -> None:
    key = "nms_ml" if multi_label else "nms"
    kw = {"conf_thres": 0.001, "iou_thres": 0.7, "max_det": 300, "multi_label": multi_label}
    # On the reference's own y: the very same rows, in the same order, bit for bit.
    det, idx, valid = map(np.asarray, yolov8_nms_jit(jnp.asarray(io["y"].transpose(0, 2, 1)), **kw))
    for b in range(2):
        ref, ref_idx = io[f"{key}_{b}"], io[f"{key}_idx_{b}"]
        assert valid[b].sum() == len(ref)
        np.testing.assert_array_equal(idx[b][: len(ref)], ref_idx)
        np.testing.assert_array_equal(det[b][: len(ref)], ref)
    # On our decode: the same detections (anchor, class); rows equal to the forward's tolerance. Only the order
    # of scores equal to float32 round-off may differ.
    det, idx, valid = map(np.asarray, yolov8_nms_jit(jnp.asarray(outputs["decoded"]), **kw))
    for b in range(2):
        ref, ref_idx = io[f"{key}_{b}"], io[f"{key}_idx_{b}"]
        rows = det[b][valid[b]]
        ours = {(int(i), int(r[5])): r for i, r in zip(idx[b][valid[b]], rows, strict=True)}
        theirs = {(int(i), int(r[5])): r for i, r in zip(ref_idx, ref, strict=True)}
        assert ours.keys() == theirs.keys()
        keys = sorted(theirs)
        assert_close_rel(np.stack([ours[k] for k in keys]), np.stack([theirs[k] for k in keys]), 1e-4, f"{key}_{b}")


def _check_assignment(asg, io, rtol: float = 1e-5) -> None:
    np.testing.assert_array_equal(np.asarray(asg.fg_mask), io["tal_fg_mask"])
    np.testing.assert_array_equal(np.asarray(asg.gt_idx), io["tal_target_gt_idx"])
    np.testing.assert_array_equal(np.asarray(asg.labels), io["tal_target_labels"])
    assert_close_rel(asg.boxes, io["tal_target_bboxes"], rtol, "target boxes")
    assert_close_rel(asg.scores, io["tal_target_scores"], rtol, "target scores")


@pytest.mark.parametrize("pad_to", [3, 8])
def test_assigner_matches_ultralytics(io, pad_to: int) -> None:
    g = io["tal_in_gt_bboxes"].shape[1]
    boxes = np.zeros((2, pad_to, 4), np.float32)
    labels = np.zeros((2, pad_to), np.int32)
    mask = np.zeros((2, pad_to), bool)
    boxes[:, :g], labels[:, :g] = io["tal_in_gt_bboxes"], io["tal_in_gt_labels"][..., 0]
    mask[:, :g] = io["tal_in_mask_gt"][..., 0] > 0
    asg = jax.jit(task_aligned_assign)(io["tal_in_pd_scores"], io["tal_in_pd_bboxes"], io["tal_in_anc_points"],
                                       labels, boxes, mask)
    _check_assignment(asg, io)
    assert int(np.asarray(asg.fg_mask).sum()) == 36


@pytest.fixture(scope="module")
def counted_loss():
    """A jitted loss + gradient with a trace counter (one trace = one compilation)."""
    traces = []

    def fn(boxes, scores, gt_boxes, gt_labels, gt_mask):
        traces.append(1)

        def total(bs):
            out = yolov8_loss(*bs, gt_boxes, gt_labels, gt_mask, image_hw=(160, 160))
            return out["loss"], out

        (_, out), grads = jax.value_and_grad(total, has_aux=True)((boxes, scores))
        return out, grads

    return jax.jit(fn), traces


def test_loss_matches_ultralytics_and_compiles_once_for_any_gt_count(io, outputs, counted_loss) -> None:
    loss_fn, traces = counted_loss
    boxes, scores = _head(io)
    gt_boxes, gt_labels, gt_mask = _padded_targets(io, 8)  # 3 + 2 real boxes, padded to 8 per image
    np.testing.assert_allclose(gt_boxes[:, :3], io["tal_in_gt_bboxes"], rtol=0, atol=1e-5)
    out, grads = loss_fn(boxes, scores, gt_boxes, gt_labels, gt_mask)
    errs = [assert_close_rel(out["loss_items"][i], io["loss_items"][i], 1e-5, n)
            for i, n in enumerate(("box_loss", "cls_loss", "dfl_loss"))]
    print("yolov8 loss relative errors:", [f"{e:.1e}" for e in errs])
    assert_close_rel(out["loss"], io["loss"].sum(), 1e-5, "loss = items x batch size")
    _check_assignment(out["assignment"], io)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # Fewer real boxes (none at all, then one per image): same compiled function, finite loss and gradients.
    for keep in (np.zeros_like(gt_mask), gt_mask & (np.arange(8) < 1)):
        out2, grads2 = loss_fn(boxes, scores, gt_boxes, gt_labels, keep)
        assert np.isfinite(float(out2["loss"])) and all(np.isfinite(np.asarray(g)).all() for g in grads2)
    assert float(out2["num_fg"]) > 0
    assert len(traces) == 1, f"the loss compiled {len(traces)} times for different numbers of boxes"
    # End to end from our forward: within the forward's own tolerance.
    out3, _ = loss_fn(outputs["boxes"], outputs["scores"], gt_boxes, gt_labels, gt_mask)
    assert_close_rel(out3["loss_items"], io["loss_items"], 1e-4, "loss from jaxcv's forward")
    assert len(traces) == 1


def test_importer_is_strict(state_dict) -> None:
    importer = IMPORTERS.get("ultralytics:yolov8n")
    cases = {
        "model.4.m.1.cv2.bn.weight": {k: v for k, v in state_dict.items() if k != "model.4.m.1.cv2.bn.weight"},
        "model.23.extra.weight": {**state_dict, "model.23.extra.weight": np.zeros(3, np.float32)},
        "model.0.conv.weight": {**state_dict, "model.0.conv.weight": np.zeros((16, 3, 5, 5), np.float32)},
        "model.22.dfl.conv.weight": {k: v for k, v in state_dict.items() if k != "model.22.dfl.conv.weight"},
    }
    for key, sd in cases.items():
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            importer(sd)
    with pytest.raises(ValueError, match=r"model\.22\.dfl\.conv\.weight"):
        importer({**state_dict, "model.22.dfl.conv.weight": np.ones((1, 16, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"model\.22\.cv3\.0\.2\.weight"):
        importer(state_dict, num_classes=80)  # explicit num_classes that the weights contradict
    with pytest.raises(ValueError, match=r"model\.0\.conv\.weight"):
        IMPORTERS.get("ultralytics:yolov8s")(state_dict)  # the wrong scale


@pytest.mark.parametrize("scale,expected", [("n", 3_157_200), ("s", 11_166_560), ("m", 25_902_640),
                                            ("l", 43_691_520), ("x", 68_229_648)])
def test_scales_match_ultralytics_parameter_counts(scale: str, expected: int) -> None:
    """ultralytics' model summaries of yolov8{scale}.yaml at 80 classes (their count includes the 16 fixed DFL
    weights, a constant here)."""
    variables = abstract_variables(create_model("yolov8", scale=scale, num_classes=80), 64)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) + 16 == expected


@pytest.mark.parametrize("scale", ["n", "m"])
def test_backbone_feature_info_agrees_with_outputs(scale: str) -> None:
    name = f"csp_darknet_yolov8{scale}"
    assert name in BACKBONES and name in MODELS and "yolov8" in MODELS
    backbone = create_backbone(name)
    x = jax.ShapeDtypeStruct((2, 100, 72, 3), jnp.float32)
    out = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x, train=False)[0], x)
    info = backbone.feature_info()
    assert list(info) == ["C1", "C2", "C3", "C4", "C5"] and list(out) == list(info)
    for level, spec in info.items():
        assert out[level].shape == (2, -(-100 // spec.stride), -(-72 // spec.stride), spec.channels), level


def test_detector_shapes_train_mode_and_input_size_check() -> None:
    module = yolov8_module.YOLOv8(scale="s", num_classes=5)
    x = jax.ShapeDtypeStruct((1, 96, 128, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    out, _ = jax.eval_shape(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    a = 12 * 16 + 6 * 8 + 3 * 4
    assert out["raw_p3"].shape == (1, 12, 16, 69) and out["raw_p5"].shape == (1, 3, 4, 69)
    assert out["boxes"].shape == (1, a, 64) and out["scores"].shape == (1, a, 5)
    assert out["decoded"].shape == (1, a, 9)
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(lambda x: module.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 80, 80, 3), jnp.float32))
