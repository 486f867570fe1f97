"""RetinaNet/FPN: parity with torchvision's retinanet_resnet50_fpn, output layout, init, BN freezing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path

from jaxcv.interop import from_torchvision, load_safetensors
from jaxcv.models import create_model
from jaxcv.models.fpn import resize_nearest, torch_nearest_indices

FEATURES = ["feature_0", "feature_1", "feature_2", "feature_p6", "feature_p7"]


@pytest.fixture(scope="module")
def reference():
    """One jitted forward of the converted torchvision model on the fixture image."""
    state_dict = load_safetensors(fixture_path("retinanet_r50_fpn.safetensors"))
    io = dict(np.load(fixture_path("retinanet_io.npz")))
    model, variables = from_torchvision("retinanet_resnet50_fpn", state_dict)
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, io["input_nchw"].transpose(0, 2, 3, 1))
    return model, jax.tree.map(np.asarray, out), io


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_config_inferred_from_state_dict(reference) -> None:
    model, _, _ = reference
    assert (model.num_classes, model.num_anchors, model.fpn_channels) == (91, 9, 256)
    assert model.p6_from == "p5" and not model.head_norm and model.backbone == "resnet50"


def test_fpn_features_match_torchvision(reference) -> None:
    _, out, io = reference
    errors = {}
    for name, ours in zip(FEATURES, out["features"], strict=True):
        got = ours.transpose(0, 3, 1, 2)
        assert got.shape == io[name].shape, (name, got.shape, io[name].shape)
        errors[name] = _rel_err(got, io[name])
    print("retinanet feature relative max errors:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert all(e < 1e-4 for e in errors.values()), errors


@pytest.mark.parametrize("name", ["cls_logits", "bbox_regression"])
def test_head_outputs_match_torchvision(reference, name: str) -> None:
    _, out, io = reference
    assert out[name].dtype == np.float32 and out[name].shape == io[name].shape
    err = _rel_err(out[name], io[name])
    print(f"retinanet {name} relative max error: {err:.2e}")
    assert err < 1e-4


def test_flattening_matches_anchor_order(reference) -> None:
    _, out, io = reference
    per_level = [f.shape[1] * f.shape[2] * 9 for f in out["features"]]
    np.testing.assert_array_equal(per_level, io["num_anchors_per_level"])
    assert sum(per_level) == io["anchors"].shape[0] == out["cls_logits"].shape[1]


def test_torch_nearest_rule() -> None:
    # F.interpolate(arange(3), size=7, mode="nearest") -> floor(i * 3 / 7)
    np.testing.assert_array_equal(torch_nearest_indices(3, 7), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(torch_nearest_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(torch_nearest_indices(5, 9), [0, 0, 1, 1, 2, 2, 3, 3, 4])
    x = jnp.arange(6.0).reshape(1, 2, 3, 1)
    y = resize_nearest(x, (3, 7))
    np.testing.assert_array_equal(y[0, :, :, 0], [[0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2, 2], [3, 3, 3, 4, 4, 5, 5]])


SMALL = dict(backbone="resnet18", num_classes=3, num_anchors=2, fpn_channels=32)


@pytest.fixture(scope="module")
def small():
    """A small randomly initialized RetinaNet and its outputs on an odd-sized input (one compile)."""
    model = create_model("retinanet", **SMALL)
    x = jax.random.normal(jax.random.key(1), (1, 65, 97, 3))
    # rbg keys: XLA compiles the init's RNG in a fraction of threefry's time on CPU.
    out, variables = jax.jit(model.init_with_output)(jax.random.key(0, impl="rbg"), x)
    return variables, out


def test_odd_input_size_shapes_and_init(small) -> None:
    variables, out = small
    # conv arithmetic: 65x97 -> /2 33x49 -> /4 17x25 -> /8 9x13 -> /16 5x7 -> /32 3x4 -> P6 2x2 -> P7 1x1
    assert [f.shape[1:] for f in out["features"]] == [(9, 13, 32), (5, 7, 32), (3, 4, 32), (2, 2, 32), (1, 1, 32)]
    total = 2 * (9 * 13 + 5 * 7 + 3 * 4 + 2 * 2 + 1)
    assert out["cls_logits"].shape == (1, total, 3) and out["bbox_regression"].shape == (1, total, 4)
    head = variables["params"]["head"]
    cls = head["classification_head"]
    np.testing.assert_allclose(cls["cls_logits"]["bias"], -math.log(99.0), rtol=1e-6)
    assert float(jnp.abs(head["regression_head"]["bbox_reg"]["bias"]).max()) == 0.0
    assert abs(float(cls["conv_0"]["kernel"].std()) - 0.01) < 0.001
    assert float(jnp.abs(cls["conv_0"]["bias"]).max()) == 0.0
    fpn = variables["params"]["fpn"]
    assert fpn["p6"]["kernel"].shape == (3, 3, 32, 32)  # P6 from P5 (torchvision v1)
    # kaiming_uniform(a=1): U(+-sqrt(3 / fan_in)), fan_in = 512 for the C5 lateral of resnet18
    assert float(jnp.abs(fpn["inner_blocks_2"]["kernel"]).max()) <= math.sqrt(3 / 512)


def test_v2_options_p6_from_c5_and_group_norm_head() -> None:
    model = create_model("retinanet", backbone="resnet18", num_classes=2, p6_from="c5", head_norm=True,
                         fpn_channels=64)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    params = variables["params"]
    assert params["fpn"]["p6"]["kernel"].shape == (3, 3, 512, 64)  # from C5
    tower = params["head"]["regression_head"]
    assert set(tower["conv_0"]) == {"kernel"} and set(tower["norm_0"]) == {"scale", "bias"}


@pytest.mark.parametrize("freeze", [True, False])
def test_backbone_bn_freezing(small, freeze: bool) -> None:
    variables, _ = small
    model = create_model("retinanet", **SMALL, freeze_backbone_bn=freeze)
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), variables["batch_stats"],
                                        updates["batch_stats"]))
    assert all(same) if freeze else not any(same)


def test_bfloat16_outputs_float32(small) -> None:
    variables, ref = small
    model = create_model("retinanet", **SMALL, dtype=jnp.bfloat16)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert {p.dtype for p in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(model.apply)(variables, jax.random.normal(jax.random.key(1), (1, 65, 97, 3)))
    assert out["cls_logits"].dtype == jnp.float32 and out["bbox_regression"].dtype == jnp.float32
    assert out["features"][0].dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(out["cls_logits"])))
    assert _rel_err(np.asarray(out["bbox_regression"]), np.asarray(ref["bbox_regression"])) < 0.1
