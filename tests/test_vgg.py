"""VGG / AlexNet: parity with torchvision fixtures (../shared/fixtures/backbones), levels, strict importers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, load_io, load_regenerable

import jaxcv.models.vgg as vgg
from jaxcv.models.backbones import BACKBONES, IMPORTERS, create_backbone


def _run(name: str) -> dict:
    """Imports fixture `name`, runs it once (eval, jitted), returns outputs, intermediates, io and weights."""
    state_dict = load_regenerable("backbones", name)
    io = load_io("backbones", name)
    module, variables = IMPORTERS.get(f"torchvision:{name}")(state_dict)
    fwd = jax.jit(lambda v, x: module.apply(v, x, train=False, mutable=["intermediates"]))
    out, inter = fwd(variables, io["input_nchw"].transpose(0, 2, 3, 1))
    return {"module": module, "variables": variables, "state_dict": state_dict, "io": io,
            "out": jax.device_get(out), "avgpool": np.asarray(inter["intermediates"]["avgpool"][0])}


@pytest.fixture(scope="module")
def vgg16_bn() -> dict:
    return _run("vgg16_bn")  # full width at 160x192: the one heavy forward of this file


@pytest.fixture(scope="module")
def alexnet() -> dict:
    return _run("alexnet")


def _nchw(a) -> np.ndarray:
    a = np.asarray(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


@pytest.mark.parametrize("fixture_name", ["vgg16_bn", "alexnet"])
def test_parity_with_torchvision_every_array(fixture_name: str, request) -> None:
    run = request.getfixturevalue(fixture_name)
    io, out = run["io"], run["out"]
    assert run["module"].num_classes == 1000
    ours = {"features": out["C5"], "avgpool": run["avgpool"], "logits": out["logits"]}
    expected = {k for k in io if k != "input_nchw"}
    assert set(ours) == expected, (set(ours), expected)
    errors = {k: assert_close_rel(_nchw(v), io[k], 1e-4, f"{fixture_name}/{k}") for k, v in ours.items()}
    print(f"{fixture_name} relative max errors:", {k: f"{e:.2e}" for k, e in errors.items()})
    assert out["logits"].dtype == np.float32
    assert out["pre_logits"].shape == (2, 4096)


def test_vgg16_bn_levels_follow_feature_info(vgg16_bn: dict) -> None:
    out, info = vgg16_bn["out"], vgg16_bn["module"].feature_info()
    assert list(info) == ["C1", "C2", "C3", "C4", "C5"]
    for lvl, level in info.items():  # input 160x192
        assert out[lvl].shape == (2, 160 // level.stride, 192 // level.stride, level.channels), lvl
    assert [info[k].channels for k in info] == [128, 256, 512, 512, 512]


def test_alexnet_levels_follow_feature_info(alexnet: dict) -> None:
    out, info = alexnet["out"], alexnet["module"].feature_info()
    assert {k: (v.channels, v.stride) for k, v in info.items()} == {
        "C2": (64, 4), "C3": (192, 8), "C4": (256, 16), "C5": (256, 32)}
    # torch arithmetic at 224: conv 11/4 pad 2 -> 55, each unpadded 3x3/2 pool floors: 27, 13, 6
    assert {k: out[k].shape[1:] for k in info} == {
        "C2": (55, 55, 64), "C3": (27, 27, 192), "C4": (13, 13, 256), "C5": (6, 6, 256)}


def test_alexnet_dropout_only_in_training(alexnet: dict) -> None:
    module, variables, io = alexnet["module"], alexnet["variables"], alexnet["io"]
    x = io["input_nchw"].transpose(0, 2, 3, 1)
    fwd = jax.jit(lambda v, x, key: module.apply(v, x, train=True, rngs={"dropout": key})["logits"])
    a, b = fwd(variables, x, jax.random.key(0)), fwd(variables, x, jax.random.key(1))
    assert not np.allclose(a, b)
    assert not np.allclose(a, alexnet["out"]["logits"])


# torchvision's parameter counts (weights, biases, BN affine; running statistics are buffers).
PARAM_COUNTS = {
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "alexnet": 61_100_840,
}


def _shapes(module, h: int, w: int):
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    return jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x, train=False), x)


@pytest.mark.parametrize("arch", list(PARAM_COUNTS))
def test_param_counts_and_levels_of_every_arch(arch: str) -> None:
    assert arch in BACKBONES and f"torchvision:{arch}" in IMPORTERS
    module = create_backbone(arch, num_classes=1000)
    out, variables = _shapes(module, 67, 75)  # odd sizes: pools floor
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == PARAM_COUNTS[arch]
    assert ("batch_stats" in variables) == arch.endswith("_bn")
    for lvl, level in module.feature_info().items():
        assert out[lvl].shape[-1] == level.channels
        if arch != "alexnet":
            assert out[lvl].shape[1:3] == (67 // level.stride, 75 // level.stride), (arch, lvl)
    assert out["logits"].shape == (1, 1000) and out["pre_logits"].shape == (1, 4096)
    headless, _ = _shapes(create_backbone(arch), 64, 64)
    assert set(headless) == set(module.feature_info())


def _expect_error(state_dict: dict, name: str, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        IMPORTERS.get(f"torchvision:{name}")(state_dict)


def test_importer_is_strict(alexnet: dict) -> None:
    sd = alexnet["state_dict"]
    _expect_error({k: v for k, v in sd.items() if k != "features.8.bias"}, "alexnet", "features.8.bias")
    _expect_error({**sd, "features.99.weight": np.zeros((1,), np.float32)}, "alexnet", "features.99.weight")
    _expect_error({**sd, "features.3.weight": np.zeros((192, 64, 3, 3), np.float32)}, "alexnet", "features.3.weight")
    # an AlexNet state dict is not a VGG one
    with pytest.raises(ValueError, match="missing keys"):
        IMPORTERS.get("torchvision:vgg11")(sd)


def test_headless_import_without_classifier_keys(alexnet: dict) -> None:
    sd = {k: v for k, v in alexnet["state_dict"].items() if not k.startswith("classifier.")}
    module, variables = IMPORTERS.get("torchvision:alexnet")(sd)
    assert module.num_classes == 0
    assert not any(k.startswith("classifier") for k in variables["params"])
    # the class count comes from the last classifier weight
    sd = {**alexnet["state_dict"], "classifier.6.weight": np.zeros((7, 4096), np.float32),
          "classifier.6.bias": np.zeros((7,), np.float32)}
    assert IMPORTERS.get("torchvision:alexnet")(sd)[0].num_classes == 7


def test_vgg_bn_variables_map_to_torchvision_keys(vgg16_bn: dict) -> None:
    variables = vgg16_bn["variables"]
    assert variables["params"]["features_1"]["scale"].shape == (64,)
    assert variables["batch_stats"]["features_41"]["var"].shape == (512,)
    assert vgg.torchvision_key(("batch_stats", "features_25", "mean")) == "features.25.running_mean"
    assert vgg.torchvision_key(("params", "classifier_6", "kernel")) == "classifier.6.weight"
