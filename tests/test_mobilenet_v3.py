"""MobileNetV3 small / large: parity with torchvision fixtures (../shared/fixtures/backbones), levels, dilation,
strict importers, headless import and training-mode BatchNorm updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, load_io, load_regenerable
from flax.traverse_util import flatten_dict

import jaxcv.models.mobilenet_v3 as mnv3
from jaxcv.models.backbones import BACKBONES, IMPORTERS, create_backbone

# The fixture's stride-end indices of `features` (README / meta `stride_end_indices`); the last is `features`.
STRIDE_ENDS = {"mobilenet_v3_small": (0, 1, 3, 8, 12), "mobilenet_v3_large": (1, 3, 6, 12, 16)}
# torchvision's parameter counts (weights, biases, BN affine; running statistics are buffers).
PARAM_COUNTS = {"mobilenet_v3_small": 2_542_856, "mobilenet_v3_large": 5_483_032}


def _run(name: str) -> dict:
    """Imports fixture `name` and runs it once (eval, jitted) on the stored input."""
    state_dict = load_regenerable("backbones", name)
    io = load_io("backbones", name)
    module, variables = IMPORTERS.get(f"torchvision:{name}")(state_dict)
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, io["input_nchw"].transpose(0, 2, 3, 1))
    return {"module": module, "variables": variables, "state_dict": state_dict, "io": io, "out": jax.device_get(out)}


@pytest.fixture(scope="module")
def small() -> dict:
    return _run("mobilenet_v3_small")


@pytest.fixture(scope="module")
def large() -> dict:
    return _run("mobilenet_v3_large")


def _nchw(a) -> np.ndarray:
    a = np.asarray(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


@pytest.mark.parametrize("fixture_name", ["small", "large"])
def test_parity_with_torchvision_every_array(fixture_name: str, request) -> None:
    run = request.getfixturevalue(fixture_name)
    name = f"mobilenet_v3_{fixture_name}"
    io, out = run["io"], run["out"]
    assert run["module"].num_classes == 1000
    *inner, _ = STRIDE_ENDS[name]
    ours = {f"features_{i}": out[f"C{k}"] for k, i in enumerate(inner, start=1)}
    ours.update(features=out["C5"], pooled=out["pre_logits"], logits=out["logits"])
    expected = {k for k in io if k != "input_nchw"}
    assert set(ours) == expected, (set(ours), expected)
    errors = {k: assert_close_rel(_nchw(v), io[k], 1e-4, f"{name}/{k}") for k, v in ours.items()}
    print(f"{name} relative max errors:", {k: f"{e:.2e}" for k, e in errors.items()})
    assert out["logits"].dtype == np.float32


@pytest.mark.parametrize("fixture_name", ["small", "large"])
def test_levels_follow_feature_info(fixture_name: str, request) -> None:
    run = request.getfixturevalue(fixture_name)
    out, info = run["out"], run["module"].feature_info()
    assert list(info) == ["C1", "C2", "C3", "C4", "C5"]
    assert [lvl.stride for lvl in info.values()] == [2, 4, 8, 16, 32]
    for lvl, level in info.items():  # input 160x192
        assert out[lvl].shape == (2, 160 // level.stride, 192 // level.stride, level.channels), lvl
    assert set(out) == {*info, "logits", "pre_logits"}


def test_param_counts_and_mapping(small: dict) -> None:
    for arch, count in PARAM_COUNTS.items():
        assert arch in BACKBONES and f"torchvision:{arch}" in IMPORTERS
        x = jax.ShapeDtypeStruct((1, 33, 47, 3), jnp.float32)  # odd sizes: ceil(H / stride)
        module = create_backbone(arch, num_classes=1000)
        out, variables = jax.eval_shape(lambda x, m=module: m.init_with_output(jax.random.key(0), x, train=False), x)
        assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == count, arch
        for lvl, level in module.feature_info().items():
            assert out[lvl].shape == (1, -(-33 // level.stride), -(-47 // level.stride), level.channels), (arch, lvl)
    params = small["variables"]["params"]
    assert params["features_1"]["block_1"]["fc1"]["kernel"].shape == (1, 1, 16, 8)  # squeeze 16 // 4 -> 8
    assert params["features_1"]["block_0_0"]["kernel"].shape == (3, 3, 1, 16)  # no expand conv: depthwise first
    assert set(params["features_2"]) == {"block_0_0", "block_0_1", "block_1_0", "block_1_1", "block_2_0", "block_2_1"}
    assert mnv3.torchvision_key(("params", "features_3", "block_0_0", "kernel")) == "features.3.block.0.0.weight"
    assert mnv3.torchvision_key(("batch_stats", "features_12_1", "var")) == "features.12.1.running_var"
    assert mnv3.make_divisible(72 // 4) == 24 and mnv3.make_divisible(16 // 4) == 8


def test_dilated_keeps_stride_16(small: dict) -> None:
    module, variables = IMPORTERS.get("torchvision:mobilenet_v3_small")(small["state_dict"], dilated=True)
    info = module.feature_info()
    assert info["C5"].stride == 16 and info["C4"].stride == 16 and info["C3"].stride == 8
    x = small["io"]["input_nchw"][:1, :, :64, :96].transpose(0, 2, 3, 1)
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    for lvl, level in info.items():
        assert out[lvl].shape == (1, 64 // level.stride, 96 // level.stride, level.channels), lvl
    assert out["logits"].shape == (1, 1000)


def _expect_error(state_dict: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        IMPORTERS.get("torchvision:mobilenet_v3_small")(state_dict)


def test_importer_is_strict(small: dict) -> None:
    sd = small["state_dict"]
    _expect_error({k: v for k, v in sd.items() if k != "features.4.block.2.fc1.bias"}, "features.4.block.2.fc1.bias")
    _expect_error({**sd, "features.13.0.weight": np.zeros((1,), np.float32)}, "features.13.0.weight")
    _expect_error({**sd, "features.2.block.1.0.weight": np.zeros((72, 1, 5, 5), np.float32)},
                  "features.2.block.1.0.weight")
    with pytest.raises(ValueError, match="missing keys"):  # a small state dict is not a large one
        IMPORTERS.get("torchvision:mobilenet_v3_large")(sd)


def test_headless_import_without_classifier_keys(small: dict) -> None:
    sd = {k: v for k, v in small["state_dict"].items() if not k.startswith("classifier.")}
    module, variables = IMPORTERS.get("torchvision:mobilenet_v3_small")(sd)
    assert module.num_classes == 0
    assert not any(k.startswith("classifier") for k in variables["params"])
    sd = {**small["state_dict"], "classifier.3.weight": np.zeros((7, 1024), np.float32),
          "classifier.3.bias": np.zeros((7,), np.float32)}
    assert IMPORTERS.get("torchvision:mobilenet_v3_small")(sd)[0].num_classes == 7


def test_training_forward_updates_batch_stats(small: dict) -> None:
    module, variables = small["module"], small["variables"]
    x = small["io"]["input_nchw"][:, :, :32, :32].transpose(0, 2, 3, 1)
    fwd = jax.jit(lambda v, x, key: module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}))
    out, new = fwd(variables, x, jax.random.key(0))
    assert out["logits"].shape == (2, 1000)
    old_stats, new_stats = variables["batch_stats"], new["batch_stats"]
    assert jax.tree.structure(old_stats) == jax.tree.structure(new_stats)
    old_flat, new_flat = flatten_dict(old_stats), flatten_dict(new_stats)
    # Every variance moves. A mean can stay put: a BN after a 1x1 expand conv of the previous block's BN output
    # sees a batch mean fixed by that BN's bias (train-mode BN output has mean = bias; the conv is linear), which
    # the fixture's running means already hold.
    assert all(not np.allclose(old_flat[k], new_flat[k]) for k in old_flat if k[-1] == "var")
    assert sum(not np.allclose(old_flat[k], new_flat[k]) for k in old_flat if k[-1] == "mean") >= len(old_flat) // 4
    # torch momentum 0.01: running = 0.99 * running + 0.01 * batch mean (stem BN, from the stem conv's output)
    kernel = variables["params"]["features_0_0"]["kernel"]
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected = 0.99 * old_stats["features_0_1"]["mean"] + 0.01 * np.asarray(y).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(new_stats["features_0_1"]["mean"], expected, rtol=1e-5, atol=1e-6)
