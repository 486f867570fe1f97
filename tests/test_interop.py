"""torchvision state-dict interop: strict key/shape checking, layouts, config inference, convert CLI."""

import json

import jax
import numpy as np
import pytest
from conftest import fixture_path
from safetensors.numpy import save_file

from jaxcv.convert import converted_model, load_converted, main
from jaxcv.interop import from_torchvision, load_safetensors, model_config


@pytest.fixture(scope="module")
def resnet18_sd() -> dict[str, np.ndarray]:
    return load_safetensors(fixture_path("resnet18.safetensors"))


def _random_like(sd: dict[str, np.ndarray], num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random resnet18 state dict with torchvision's keys and a `num_classes` fc, as float16 like hub files."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, value in sd.items():
        shape = list(value.shape)
        if key.startswith("fc."):
            shape[0] = num_classes
        a = rng.standard_normal(shape).astype(np.float16)
        out[key] = np.abs(a) + np.float16(0.5) if key.endswith("running_var") else a
    out["bn1.num_batches_tracked"] = np.array(7, np.int64)  # ignored like torch's strict loading does
    return out


def test_layouts_and_dtypes(resnet18_sd) -> None:
    model, variables = from_torchvision("resnet18", resnet18_sd)
    params, stats = variables["params"], variables["batch_stats"]
    assert resnet18_sd["conv1.weight"].dtype == np.float16
    assert {a.dtype for a in jax.tree.leaves(variables)} == {np.dtype(np.float32)}
    w = resnet18_sd["layer2.0.downsample.0.weight"]  # OIHW [128, 64, 1, 1]
    np.testing.assert_array_equal(params["layer2_0"]["downsample_conv"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["conv1"]["kernel"][1, 2, 0, 5], resnet18_sd["conv1.weight"][5, 0, 1, 2])
    np.testing.assert_array_equal(params["fc"]["kernel"], resnet18_sd["fc.weight"].T)
    np.testing.assert_array_equal(params["layer3_1"]["bn2"]["scale"], resnet18_sd["layer3.1.bn2.weight"])
    np.testing.assert_array_equal(stats["layer2_0"]["downsample_bn"]["var"],
                                  resnet18_sd["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(stats["bn1"]["mean"], resnet18_sd["bn1.running_mean"])


def test_headless_when_no_fc(resnet18_sd) -> None:
    sd = {k: v for k, v in resnet18_sd.items() if not k.startswith("fc.")}
    model, variables = from_torchvision("resnet18", sd)
    assert model.num_classes == 0 and "fc" not in variables["params"]


@pytest.mark.parametrize(
    "edit,match",
    [
        ("missing", r"missing keys \(1\): layer1\.0\.conv1\.weight"),
        ("extra", r"unexpected keys \(1\): layer9\.0\.conv1\.weight"),
        ("shape", r"shape mismatches \(1\): layer2\.0\.bn1\.running_var: got \(64,\), expected \(128,\)"),
        ("fc_bias_only", r"unexpected keys \(1\): fc\.bias"),
    ],
)
def test_strict_errors_list_keys(resnet18_sd, edit: str, match: str) -> None:
    sd = dict(resnet18_sd)
    if edit == "missing":
        del sd["layer1.0.conv1.weight"]
    elif edit == "extra":
        sd["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float16)
    elif edit == "shape":
        sd["layer2.0.bn1.running_var"] = np.ones(64, np.float16)
    else:
        del sd["fc.weight"]  # headless model inferred, so the stray bias is unexpected
    with pytest.raises(ValueError, match=match):
        from_torchvision("resnet18", sd)


def test_all_problems_reported_together(resnet18_sd) -> None:
    sd = dict(resnet18_sd)
    del sd["bn1.weight"]
    sd["extra.weight"] = np.zeros(3, np.float16)
    sd["conv1.weight"] = np.zeros((64, 3, 3, 3), np.float16)
    with pytest.raises(ValueError) as info:
        from_torchvision("resnet18", sd)
    msg = str(info.value)
    assert "bn1.weight" in msg and "extra.weight" in msg and "conv1.weight: got (64, 3, 3, 3)" in msg


def test_unknown_arch_and_kwargs_override(resnet18_sd) -> None:
    with pytest.raises(KeyError, match="unknown weights importer 'torchvision:resnet17'.*torchvision:resnet18"):
        from_torchvision("resnet17", resnet18_sd)
    with pytest.raises(ValueError, match="missing keys .*features.0.weight"):  # another family's weights
        from_torchvision("vgg16", resnet18_sd)
    with pytest.raises(ValueError, match="fc.weight"):
        from_torchvision("resnet18", resnet18_sd, num_classes=10)  # contradicts the checkpoint


def test_retinanet_config_inference() -> None:
    def z(*shape):
        return np.zeros(shape, np.float16)

    v1 = {
        "head.regression_head.bbox_reg.weight": z(36, 256, 3, 3),
        "head.classification_head.cls_logits.weight": z(9 * 91, 256, 3, 3),
        "backbone.fpn.inner_blocks.0.0.weight": z(256, 512, 1, 1),
        "backbone.fpn.extra_blocks.p6.weight": z(256, 256, 3, 3),
    }
    name, kw = model_config("retinanet_resnet50_fpn", v1)
    assert name == "retinanet"
    assert kw == {"backbone": "resnet50", "num_anchors": 9, "num_classes": 91, "fpn_channels": 256,
                  "p6_from": "p5", "head_norm": False}
    v2 = {**v1, "backbone.fpn.extra_blocks.p6.weight": z(256, 2048, 3, 3),
          "head.classification_head.cls_logits.weight": z(9 * 20, 256, 3, 3),
          "head.classification_head.conv.0.1.weight": z(256)}
    _, kw = model_config("retinanet_resnet50_fpn_v2", v2)
    assert (kw["num_classes"], kw["p6_from"], kw["head_norm"]) == (20, "c5", True)
    bad = {**v1, "head.classification_head.cls_logits.weight": z(100, 256, 3, 3)}
    with pytest.raises(ValueError, match="multiple of 9"):
        model_config("retinanet_resnet50_fpn", bad)


def test_convert_cli_round_trip(resnet18_sd, tmp_path, capsys) -> None:
    sd = _random_like(resnet18_sd, num_classes=10)
    weights = tmp_path / "r18.safetensors"
    save_file(sd, str(weights))
    out = tmp_path / "converted"
    main(["--arch", "resnet18", "--weights", str(weights), "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == "resnet18" and meta["model"] == "resnet18" and meta["kwargs"] == {"num_classes": 10}

    restored = load_converted(out)
    _, expected = from_torchvision("resnet18", sd)
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(restored["params"]["fc"]["kernel"], sd["fc.weight"].astype(np.float32).T)
    assert converted_model(out).num_classes == 10

    with pytest.raises(FileExistsError):
        main(["--arch", "resnet18", "--weights", str(weights), "--out", str(out)])
    sd2 = _random_like(resnet18_sd, num_classes=10, seed=1)
    save_file(sd2, str(weights))
    main(["--arch", "resnet18", "--weights", str(weights), "--out", str(out), "--overwrite"])
    np.testing.assert_array_equal(load_converted(out)["params"]["conv1"]["kernel"],
                                  sd2["conv1.weight"].astype(np.float32).transpose(2, 3, 1, 0))
