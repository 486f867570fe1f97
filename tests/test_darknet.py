"""Darknet cfg/weights import (jaxcv.models.darknet) against OpenCV DNN 4.14 (../shared/fixtures/yolo), OpenCV's
in-layer yolo post-processing (jaxcv.ops.darknet_post), the real yolov3/yolov3-tiny cfgs, and clear errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, fixture_path, load_io

import jaxcv.models.darknet as darknet
from jaxcv.models.backbones import IMPORTERS
from jaxcv.ops.darknet_post import host_detections, nms_boxes, opencv_outputs, opencv_yolo_rows

YOLO_NAMES = ("yolo_13", "yolo_20")
CONV_NAMES = ("conv_12", "conv_19")


@pytest.fixture(scope="module")
def io():
    return load_io("yolo", "darknet")


@pytest.fixture(scope="module")
def mini():
    module, variables = darknet.from_darknet(fixture_path("yolo/yolov3-mini.cfg"),
                                             fixture_path("yolo/yolov3-mini.weights"))
    return module, variables, jax.jit(lambda v, x: module.apply(v, x, train=False))


@pytest.fixture(scope="module")
def outputs(mini, io):
    _, variables, apply = mini
    return {blob: apply(variables, jnp.asarray(io[blob].transpose(0, 2, 3, 1))) for blob in ("blob", "blob_rect")}


@pytest.mark.parametrize("blob,prefix", [("blob", ""), ("blob_rect", "rect_")])
def test_yolo_rows_match_opencv(outputs, io, blob, prefix):
    out = outputs[blob]
    assert len(out["yolo"]) == len(out["raw"]) == 2
    for k, (conv, yolo) in enumerate(zip(CONV_NAMES, YOLO_NAMES, strict=True)):
        rows = out["yolo"][k]
        ref = io[prefix + yolo]
        assert rows.shape == (1, *ref.shape) and rows.dtype == jnp.float32
        assert_close_rel(rows[0], ref, 1e-4, prefix + yolo)
        raw = np.asarray(out["raw"][k])  # [B, rows, cols, A, 5 + C] -> OpenCV's NCHW conv output
        b, h, w, a, c = raw.shape
        assert (a, c) == (3, 8)
        assert_close_rel(raw.reshape(b, h, w, a * c).transpose(0, 3, 1, 2), io[prefix + conv], 1e-4, prefix + conv)


def test_batch_and_module_facts(mini):
    module, variables, _ = mini
    out = jax.eval_shape(lambda x: module.apply(variables, x), jax.ShapeDtypeStruct((2, 96, 160, 3), jnp.float32))
    assert [o.shape for o in out["yolo"]] == [(2, 6 * 10 * 3, 8), (2, 12 * 20 * 3, 8)]
    assert [o.shape for o in out["raw"]] == [(2, 6, 10, 3, 8), (2, 12, 20, 3, 8)]
    assert module.size_multiple() == 16
    with pytest.raises(ValueError, match="multiples of 16"):
        jax.eval_shape(lambda x: module.apply(variables, x), jax.ShapeDtypeStruct((1, 100, 160, 3), jnp.float32))
    meta = json.loads(fixture_path("yolo/yolov3-mini.meta.json").read_text())
    header, state = darknet.read_darknet_weights(fixture_path("yolo/yolov3-mini.weights"),
                                                 darknet.parse_cfg(fixture_path("yolo/yolov3-mini.cfg")))
    assert list(header.values()) == meta["weights_file"]["read_back"]
    assert sum(v.size for v in state.values()) == meta["weights_file"]["floats"]
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == 63432
    np.testing.assert_array_equal(np.asarray(variables["params"]["conv_3"]["kernel"]),
                                  state["conv_3.weights"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["bn_3"]["var"]), state["conv_3.rolling_variance"])
    np.testing.assert_array_equal(np.asarray(variables["params"]["conv_12"]["bias"]), state["conv_12.biases"])
    specs = module.yolo_specs()
    assert [s.mask for s in specs] == [(3, 4, 5), (0, 1, 2)]
    assert [(s.thresh, s.nms_threshold) for s in specs] == [(0.0, 0.0)] * 2


def test_importer_registered(mini):
    import jaxcv.interop

    assert IMPORTERS.get("darknet") is darknet.from_darknet
    module, variables = jaxcv.interop.from_darknet(fixture_path("yolo/yolov3-mini.cfg"),
                                                   fixture_path("yolo/yolov3-mini.weights"))
    assert module == mini[0]
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, mini[1]))


@pytest.mark.parametrize("prefix,thresh,nms", [("default_", 0.2, 0.0), ("nms_", 0.2, 0.4)])
def test_in_layer_postprocess_on_opencv_rows(io, prefix, thresh, nms):
    """OpenCV's own pure-decode rows through our threshold / per-class NMS give its default_* / nms_* rows."""
    post = jax.jit(lambda r: opencv_yolo_rows(r, thresh, nms))
    for name in YOLO_NAMES:
        # a batch of two images: the rows, and the rows reversed (no equal scores, so NMS's order is the same)
        ours = np.asarray(post(jnp.stack([io[name], io[name][::-1]])))
        np.testing.assert_array_equal(ours[0], io[prefix + name], err_msg=prefix + name)
        np.testing.assert_array_equal(ours[1], io[prefix + name][::-1], err_msg=prefix + name)
    assert [int((io[prefix + n][:, 5:] > 0).sum()) for n in YOLO_NAMES] == ([633, 2579] if nms == 0 else [205, 1769])


@pytest.mark.parametrize("cfg,prefix", [("yolov3-mini-default-thresh.cfg", "default_"),
                                        ("yolov3-mini-nms.cfg", "nms_")])
def test_in_layer_postprocess_end_to_end(outputs, io, cfg, prefix):
    """Our rows with the cfg's own thresh / nms_threshold: equal to OpenCV's but where a score lies within the
    parity tolerance of the threshold (a score of 0.2 +- 4e-7 falls on either side)."""
    specs = [s.spec for s in darknet.parse_cfg(fixture_path(f"yolo/{cfg}")) if s.kind == "yolo"]
    assert [(s.thresh, s.nms_threshold) for s in specs] == [(0.2, 0.0 if prefix == "default_" else 0.4)] * 2
    for rows, name in zip(opencv_outputs(outputs["blob"]["yolo"], specs), YOLO_NAMES, strict=True):
        rows, ref, pure = np.asarray(rows)[0], io[prefix + name], io[name]
        differ = (rows != 0) != (ref != 0)
        borderline = np.abs(pure - 0.2) <= 1e-4 * np.abs(pure).max()
        assert not np.any(differ & ~borderline), f"{prefix + name}: {np.argwhere(differ & ~borderline)[:5]}"
        assert differ.sum() <= 2
        assert_close_rel(np.where(differ, 0, rows), np.where(differ, 0, ref), 1e-4, prefix + name)


def test_host_nms_boxes_and_detections():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.9], np.float32)
    # stable order 0, 3, 1, 2; box 3 equals box 0; box 1 overlaps box 0 by 81 / 119 = 0.68
    assert nms_boxes(boxes, scores, 0.5, 0.4).tolist() == [0, 2]
    assert nms_boxes(boxes, scores, 0.5, 0.68).tolist() == [0, 2]
    assert nms_boxes(boxes, scores, 0.5, 0.69).tolist() == [0, 1, 2]
    assert nms_boxes(boxes, scores, 0.75, 0.69).tolist() == [0, 1]
    assert nms_boxes(boxes, scores, 0.85, 0.4, top_k=1).tolist() == [0]
    rows = np.zeros((3, 8), np.float32)
    rows[0] = [0.5, 0.5, 0.2, 0.4, 0.9, 0.1, 0.8, 0.0]
    rows[1] = [0.51, 0.5, 0.2, 0.4, 0.9, 0.0, 0.7, 0.0]  # same object, lower score: suppressed
    rows[2] = [0.1, 0.1, 0.1, 0.1, 0.9, 0.0, 0.0, 0.3]  # below conf_threshold
    det = host_detections([rows[None]], (200, 100), 0.5, 0.4)
    assert det["class_ids"].tolist() == [1] and det["confidences"].tolist() == [np.float32(0.8)]
    assert det["boxes"].tolist() == [[80, 30, 40, 40]]  # int(cx*W - int(w*W)/2), int(w*W), ...


@pytest.mark.parametrize("cfg", ["yolov3.cfg", "yolov3-tiny.cfg"])
def test_real_cfgs_build(cfg):
    facts = json.loads(fixture_path("yolo/yolov3-mini.meta.json").read_text())["real_cfgs"][cfg]
    sections = darknet.parse_cfg(fixture_path(f"yolo/{cfg}"))
    assert len(sections) - 1 == facts["darknet_layers"]
    assert sum(s.kind == "convolutional" for s in sections) == facts["conv_layers"]
    assert darknet.weights_size(sections) == (facts["weights_file_floats"], facts["learnable_params"])
    assert 20 + 4 * facts["weights_file_floats"] == facts["weights_file_bytes"]
    module = darknet.Darknet(tuple(sections))
    out, variables = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x),
                                    jax.ShapeDtypeStruct((1, 416, 416, 3), jnp.float32))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == facts["learnable_params"]
    assert [tuple(o.shape) for o in out["yolo"]] == [(1, *s) for s in facts["yolo_output_shapes_416"].values()]
    raw_shapes = [(1, s[2], s[3], 3, 85) for s in facts["raw_conv_shapes_416"].values()]
    assert [tuple(o.shape) for o in out["raw"]] == raw_shapes
    yolo_sections = [s for s in sections if s.kind == "yolo"]
    assert [f"yolo_{s.index}" for s in yolo_sections] == facts["unconnected_out_layers"]
    for s, ref in zip(yolo_sections, facts["yolo_layers"], strict=True):
        assert list(s.spec.mask) == ref["mask"] and [list(a) for a in s.spec.masked_anchors] == ref["anchors"]
        assert (s.spec.classes, len(s.spec.anchors), s.spec.thresh, s.spec.nms_threshold) == (
            ref["classes"], ref["num"], ref["thresh"], ref["nms_threshold"])
    conv_before = [f"conv_{s.index - 1}" for s in yolo_sections]
    assert conv_before == list(facts["raw_conv_shapes_416"])


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture()
def weights_copy(tmp_path):
    def make(edit):
        data = fixture_path("yolo/yolov3-mini.weights").read_bytes()
        path = tmp_path / "edited.weights"
        path.write_bytes(edit(data))
        return path

    return make


@pytest.mark.parametrize("edit,message", [
    (lambda d: d[:-4], r"short for .*yolov3-mini.cfg.*holds 64007 float32 values, but .* need 64008"),
    (lambda d: d[:-6], r"short .*64006 float32 values and 2 stray bytes"),
    (lambda d: d + bytes(4), r"long for .*holds 64009 float32 values, but .* need 64008"),
    (lambda d: d + bytes(3), r"long .*64008 float32 values and 3 stray bytes"),
    (lambda d: d[:18], r"too short for its 20-byte header"),
    (lambda d: d[:10], r"too short for a darknet weights header"),
])
def test_bad_weights_files(weights_copy, edit, message):
    path = weights_copy(edit)
    with pytest.raises(ValueError, match=message) as err:
        darknet.from_darknet(fixture_path("yolo/yolov3-mini.cfg"), path)
    assert "edited.weights" in str(err.value)


def test_weights_of_another_cfg(tmp_path):
    with pytest.raises(ValueError, match=r"yolov3-mini.weights: short for .*yolov3-tiny.cfg.* need 8858734"):
        darknet.from_darknet(fixture_path("yolo/yolov3-tiny.cfg"), fixture_path("yolo/yolov3-mini.weights"))
    # the right size but not this cfg's layout: BN variances that come out negative
    data = bytearray(fixture_path("yolo/yolov3-mini.weights").read_bytes())
    floats = np.frombuffer(bytes(data[20:]), "<f4").copy()
    floats[8 * 3: 8 * 4] = -1.0  # conv_0's rolling variances
    bad = tmp_path / "negvar.weights"
    bad.write_bytes(bytes(data[:20]) + floats.tobytes())
    with pytest.raises(ValueError, match=r"negvar.weights: conv layer 0 .*negative or non-finite rolling variances"):
        darknet.from_darknet(fixture_path("yolo/yolov3-mini.cfg"), bad)


def _mini_text() -> str:
    return fixture_path("yolo/yolov3-mini.cfg").read_text()


@pytest.mark.parametrize("old,new,message", [
    ("# 7\n[maxpool]", "# 7\n[maxpol]", r"section 7 \[maxpol\] \(line \d+\): unknown section type"),
    ("filters=32\nsize=1", "filters=32", r"section 10 \[convolutional\] \(line \d+\), key 'size': missing required"),
    ("filters=64\nsize=3", "filters=6x4\nsize=3",
     r"section 8 \[convolutional\] \(line \d+\), key 'filters' = '6x4' \(line \d+\): bad value: expected an integer"),
    ("layers = -1, 6", "layers = -1, 17",
     r"section 17 \[route\] \(line \d+\), key 'layers' = '-1,17' \(line \d+\): layer 17 resolves to 17, outside"),
    ("layers = -4", "layers = -15", r"section 14 \[route\] \(line \d+\), key 'layers' = '-15' .*resolves to -1"),
    ("from=-3", "from=-6", r"section 5 \[shortcut\] \(line \d+\), key 'from' = '-6' .*resolves to -1"),
    ("activation=leaky", "activation=swishy", r"section 0 \[convolutional\] \(line \d+\), key 'activation' = 'swishy'"),
    ("mask = 3,4,5", "mask = 3,4,6", r"section 13 \[yolo\] \(line \d+\), key 'mask' = '3,4,6'"),
    ("classes=3\nnum=6", "classes=4\nnum=6", r"section 13 \[yolo\] .*24 channels, but 3 anchors x \(5 \+ 4"),
    ("num=6", "num=5", r"section 13 \[yolo\] \(line \d+\), key 'anchors' .*12 numbers, expected 2 \* num = 10"),
    ("[net]", "[network]", r"the first section must be \[net\]"),
    ("pad=1\nactivation=leaky", "pad=1\nactivation leaky", r"line \d+: expected key=value"),
])
def test_bad_cfgs(tmp_path, old, new, message):
    text = _mini_text()
    assert old in text
    path = tmp_path / "broken.cfg"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=message) as err:
        darknet.parse_cfg(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=message):
        darknet.from_darknet(path, fixture_path("yolo/yolov3-mini.weights"))


def test_cfg_text_and_missing_files(tmp_path):
    sections = darknet.parse_cfg(_mini_text())
    assert [s.kind for s in sections[:4]] == ["net", "convolutional", "maxpool", "convolutional"]
    assert sections[1].spec == darknet.ConvSpec(8, 3, 1, 1, 1, True, "leaky", 3)
    assert sections[2].spec == darknet.MaxPoolSpec(2, 2, 1)
    assert sections[18].spec.sources == (16, 6) and sections[18].channels == 48
    with pytest.raises(ValueError, match="<cfg text>: section 0"):
        darknet.parse_cfg(_mini_text().replace("filters=8", "filters=0", 1))
    with pytest.raises(ValueError, match="nothere.cfg' does not exist"):
        darknet.parse_cfg(str(tmp_path / "nothere.cfg"))
    shutil.copy(fixture_path("yolo/yolov3-mini.cfg"), tmp_path / "a.cfg")
    with pytest.raises(ValueError, match="nothere.weights' does not exist"):
        darknet.from_darknet(tmp_path / "a.cfg", tmp_path / "nothere.weights")


FEATURES_CFG = """[net]
width=16
height=16
channels=3

[convolutional]
filters=8
size=3
pad=1
activation=mish

[maxpool]
size=3
stride=1

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=6
size=3
stride=2
pad=1
activation=swish

[convolutional]
filters=4
size=1
activation=logistic

[shortcut]
from=-2
alpha=0.5
activation=leaky

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
filters=12
size=1
groups=2

[yolo]
mask=2,0
anchors=2,3, 4,5, 6,7
classes=1
num=3
scale_x_y=1.1
"""


def _np_conv(x, kernel, bias, stride, pad, groups=1):
    """x [H, W, C], kernel HWIO [k, k, C / groups, O] -> [H', W', O] (cross-correlation, zero padding)."""
    k = kernel.shape[0]
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    ho, wo = (xp.shape[0] - k) // stride + 1, (xp.shape[1] - k) // stride + 1
    cin, cout = kernel.shape[2], kernel.shape[3]
    out = np.zeros((ho, wo, cout))
    for g in range(groups):
        xs = xp[..., g * cin:(g + 1) * cin]
        ks = kernel[..., g * (cout // groups):(g + 1) * (cout // groups)]
        for dy in range(k):
            for dx in range(k):
                patch = xs[dy:dy + stride * ho:stride, dx:dx + stride * wo:stride]
                out[..., g * (cout // groups):(g + 1) * (cout // groups)] += patch @ ks[dy, dx]
    return out + (0 if bias is None else bias)


def test_other_layer_kinds_against_numpy():
    """mish, swish, logistic, leaky; maxpool 3/1 (padding 1 each side); route groups/group_id; shortcut with
    alpha and fewer channels than its source; upsample; grouped conv; yolo with scale_x_y and a reordered mask."""
    sections = darknet.parse_cfg(FEATURES_CFG)
    assert [s.channels for s in sections[1:]] == [8, 8, 4, 6, 4, 4, 4, 12, 12, 12]
    module = darknet.Darknet(tuple(sections))
    x = np.asarray(jax.random.uniform(jax.random.key(0), (1, 16, 16, 3)), np.float64)
    v = jax.tree.map(np.asarray, module.init(jax.random.key(1), jnp.asarray(x, jnp.float32)))
    rng = np.random.default_rng(0)
    v["batch_stats"]["bn_3"] = {"mean": rng.normal(0, 0.3, 6).astype(np.float32),
                                "var": rng.uniform(0.5, 2, 6).astype(np.float32)}
    v["params"]["bn_3"] = {"scale": rng.uniform(0.5, 1.5, 6).astype(np.float32),
                           "bias": rng.normal(0, 0.2, 6).astype(np.float32)}
    out = jax.jit(module.apply)(v, jnp.asarray(x, jnp.float32))
    p, st = v["params"], v["batch_stats"]

    def sig(z):
        return 1 / (1 + np.exp(-z))

    h0 = _np_conv(x[0], p["conv_0"]["kernel"], p["conv_0"]["bias"], 1, 1)
    h0 = h0 * np.tanh(np.log1p(np.exp(h0)))
    padded = np.pad(h0, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h1 = np.max([padded[dy:dy + 16, dx:dx + 16] for dy in range(3) for dx in range(3)], axis=0)
    h2 = h1[..., 4:]
    h3 = _np_conv(h2, p["conv_3"]["kernel"], None, 2, 1)
    bn = st["bn_3"]
    h3 = p["bn_3"]["scale"] * (h3 - bn["mean"]) / np.sqrt(bn["var"] + 1e-6) + p["bn_3"]["bias"]
    h3 = h3 * sig(h3)
    h4 = sig(_np_conv(h3, p["conv_4"]["kernel"], p["conv_4"]["bias"], 1, 0))
    h5 = 0.5 * h4 + h3[..., :4]
    h5 = np.where(h5 > 0, h5, 0.1 * h5)
    h6 = h5.repeat(2, 0).repeat(2, 1)
    h7 = np.concatenate([h6, h0], -1)
    t = _np_conv(h7, p["conv_8"]["kernel"], p["conv_8"]["bias"], 1, 0, groups=2).reshape(16, 16, 2, 6)
    assert_close_rel(out["raw"][0][0], t, 1e-5, "raw")
    sxy = (sig(t[..., :2]) - 0.5) * 1.1 + 0.5
    anchors = np.array([[6, 7], [2, 3]], np.float64)
    ys, xs = np.mgrid[0:16, 0:16]
    cx, cy = (xs[..., None] + sxy[..., 0]) / 16, (ys[..., None] + sxy[..., 1]) / 16
    obj = sig(t[..., 4:5])
    rows = np.concatenate([cx[..., None], cy[..., None], np.exp(t[..., 2:4]) * anchors / 16, obj,
                           obj * sig(t[..., 5:])], -1)
    assert_close_rel(out["yolo"][0][0], rows.reshape(16 * 16 * 2, 6), 1e-5, "yolo")
