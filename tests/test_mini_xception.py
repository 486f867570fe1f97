"""The keras-io mini-Xception (Keras 3 layout) against the fixture: parity, levels, strict import."""

import jax
import numpy as np
import pytest
from conftest import assert_close_rel, load_io, load_regenerable

import jaxcv.models.mini_xception  # noqa: F401  (registers the importer)
from jaxcv.models.backbones import IMPORTERS


@pytest.fixture(scope="module")
def xception():
    weights = load_regenerable("backbones", "mini_xception")
    io = load_io("backbones", "mini_xception")
    module, variables = IMPORTERS.get("keras:mini_xception")(weights)
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, io["input_nhwc"])
    return {"weights": weights, "io": io, "module": module, "variables": variables, "out": out}


def test_parity_with_keras(xception):
    out, io = xception["out"], xception["io"]
    assert_close_rel(out["C2"], io["block1"], 1e-4, "block1 (the first residual block's add)")
    assert_close_rel(out["logits"], io["logits"], 1e-4, "logits")


def test_levels_follow_feature_info(xception):
    info, out = xception["module"].feature_info(), xception["out"]
    for lvl, level in info.items():
        assert out[lvl].shape == (2, 64 // level.stride, 64 // level.stride, level.channels), lvl


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_importer_is_strict(xception, problem):
    w = dict(xception["weights"])
    if problem == "missing":
        del w["conv2d/kernel"]
        match = "missing keys .*conv2d/kernel"
    elif problem == "extra":
        w["dense_9/kernel"] = np.zeros((3, 3), np.float32)
        match = "unexpected keys .*dense_9/kernel"
    else:
        w["dense/bias"] = np.zeros((5,), np.float32)
        match = "dense/bias"
    with pytest.raises(ValueError, match=match):
        IMPORTERS.get("keras:mini_xception")(w)
