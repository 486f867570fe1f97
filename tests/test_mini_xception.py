"""keras-io mini Xception: parity with the Keras 3 fixture (../shared/fixtures/backbones), levels, strict importer,
headless import and training-mode BatchNorm updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, load_io, load_regenerable
from flax.traverse_util import flatten_dict

import jaxcv.models.mini_xception as mx
from jaxcv.models.backbones import BACKBONES, IMPORTERS, create_backbone


@pytest.fixture(scope="module")
def run() -> dict:
    """The fixture's weights imported and run once (inference, jitted) on the stored raw-pixel input."""
    weights = load_regenerable("backbones", "mini_xception")
    io = load_io("backbones", "mini_xception")
    module, variables = IMPORTERS.get("keras:mini_xception")(weights)
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, io["input_nhwc"])
    return {"module": module, "variables": variables, "weights": weights, "io": io, "out": jax.device_get(out)}


def test_parity_with_keras_every_array(run: dict) -> None:
    io, out = run["io"], run["out"]
    assert run["module"].num_classes == 1  # keras-io's Dense(1) for two classes
    ours = {"block1": out["C2"], "logits": out["logits"]}  # block1 = layer `add`, the first residual block
    assert set(ours) == {k for k in io if k != "input_nhwc"}
    errors = {k: assert_close_rel(v, io[k], 1e-4, f"mini_xception/{k}") for k, v in ours.items()}
    print("mini_xception relative max errors:", {k: f"{e:.2e}" for k, e in errors.items()})
    assert out["logits"].dtype == np.float32


def test_levels_follow_feature_info(run: dict) -> None:
    out, info = run["out"], run["module"].feature_info()
    assert {k: (v.channels, v.stride) for k, v in info.items()} == {
        "C1": (128, 2), "C2": (256, 4), "C3": (512, 8), "C4": (1024, 16)}
    for lvl, level in info.items():  # input 64x64
        assert out[lvl].shape == (2, 64 // level.stride, 64 // level.stride, level.channels), lvl
    assert set(out) == {*info, "logits", "pre_logits"} and out["pre_logits"].shape == (2, 1024)
    # 'same' on odd sizes: ceil(H / stride); headless builds return only the levels
    assert "mini_xception" in BACKBONES
    module = create_backbone("mini_xception")
    x = jax.ShapeDtypeStruct((1, 37, 50, 3), jnp.float32)
    shapes, _ = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x, train=False), x)
    assert {k: v.shape for k, v in shapes.items()} == {
        k: (1, -(-37 // lvl.stride), -(-50 // lvl.stride), lvl.channels) for k, lvl in info.items()}


def test_variables_map_to_keras_paths(run: dict) -> None:
    params = run["variables"]["params"]
    assert params["separable_conv2d"]["depthwise"]["kernel"].shape == (3, 3, 1, 128)
    assert "bias" not in params["separable_conv2d"]["depthwise"]
    assert params["conv2d_1"]["kernel"].shape == (1, 1, 128, 256)  # the first residual projection
    assert mx.keras_key(("params", "separable_conv2d_6", "pointwise", "bias")) == "separable_conv2d_6/bias"
    assert mx.keras_key(("params", "separable_conv2d", "depthwise", "kernel")) == "separable_conv2d/depthwise_kernel"
    assert mx.keras_key(("params", "batch_normalization_7", "bias")) == "batch_normalization_7/beta"
    assert mx.keras_key(("batch_stats", "batch_normalization", "var")) == "batch_normalization/moving_variance"
    assert mx.keras_key(("params", "dense", "kernel")) == "dense/kernel"
    n = sum(int(np.prod(np.shape(v))) for v in run["weights"].values())
    assert n == sum(int(np.prod(v.shape)) for v in jax.tree.leaves(run["variables"]))


def _expect_error(weights: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        IMPORTERS.get("keras:mini_xception")(weights)


def test_importer_is_strict(run: dict) -> None:
    w = run["weights"]
    _expect_error({k: v for k, v in w.items() if k != "separable_conv2d_3/bias"}, "separable_conv2d_3/bias")
    _expect_error({**w, "conv2d_9/kernel": np.zeros((1,), np.float32)}, "conv2d_9/kernel")
    _expect_error({**w, "separable_conv2d_2/depthwise_kernel": np.zeros((5, 5, 256, 1), np.float32)},
                  "separable_conv2d_2/depthwise_kernel")
    _expect_error({**w, "batch_normalization_4/gamma": np.zeros((7,), np.float32)}, "batch_normalization_4/gamma")


def test_headless_import_without_dense(run: dict) -> None:
    w = {k: v for k, v in run["weights"].items() if not k.startswith("dense/")}
    module, variables = IMPORTERS.get("keras:mini_xception")(w)
    assert module.num_classes == 0 and "dense" not in variables["params"]
    w = {**run["weights"], "dense/kernel": np.zeros((1024, 5), np.float32), "dense/bias": np.zeros((5,), np.float32)}
    assert IMPORTERS.get("keras:mini_xception")(w)[0].num_classes == 5


def test_training_forward_updates_batch_stats(run: dict) -> None:
    module, variables = run["module"], run["variables"]
    x = run["io"]["input_nhwc"][:, :32, :32]
    fwd = jax.jit(lambda v, x, key: module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}))
    out, new = fwd(variables, x, jax.random.key(0))
    assert out["logits"].shape == (2, 1)
    old_flat, new_flat = flatten_dict(variables["batch_stats"]), flatten_dict(new["batch_stats"])
    assert old_flat.keys() == new_flat.keys() and len(old_flat) == 16
    assert [k for k in old_flat if np.allclose(old_flat[k], new_flat[k])] == []
    # momentum 0.99: moving = 0.99 * moving + 0.01 * batch mean (stem BN, from the rescaled stem conv's output)
    p = variables["params"]["conv2d"]
    y = jax.lax.conv_general_dilated(x * np.float32(1 / 255), p["kernel"], (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
    expected = 0.99 * old_flat[("batch_normalization", "mean")] + 0.01 * np.asarray(y).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(new_flat[("batch_normalization", "mean")], expected, rtol=1e-5, atol=1e-6)
    # dropout is active only in training
    a = fwd(variables, x, jax.random.key(1))[0]["logits"]
    assert not np.allclose(a, out["logits"])
