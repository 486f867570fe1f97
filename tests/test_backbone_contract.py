"""The backbone contract (jaxcv/models/backbones.py) for every registered backbone, and every consumer taking
any of them by name. Shapes only (`jax.eval_shape`: nothing is compiled or run), so the whole matrix is cheap."""

import jax
import jax.numpy as jnp
import pytest

import jaxcv.detectors.ssd  # noqa: F401  (registers ssd_grid)
from jaxcv.models import create_model
from jaxcv.models.backbones import BACKBONES, LEVEL_ORDER, create_backbone

# Small constructions where a family's default is large; the contract must hold for any of them.
SMALL = {
    "vit_tiny_patch16_224": {"img_size": 64},
    "vit_small_patch16_224": {"img_size": 64},
    "vit_base_patch16_224": {"img_size": 64},
    "vit_large_patch16_224": {"img_size": 64},
}
ONE_SCALE = {name for name in BACKBONES.names() if name.startswith("vit_")}
# One member per family for the consumers (the larger members differ only in width and depth).
FAMILY = sorted({n for n in BACKBONES.names()} - {"resnet34", "resnet50", "resnet101", "vgg11_bn", "vgg13", "vgg13_bn",
                                                  "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_small_patch16_224",
                                                  "vit_base_patch16_224", "vit_large_patch16_224"}
                - {n for n in BACKBONES.names() if n.startswith("csp_darknet_yolov8") and not n.endswith("n")})


def _shapes(module, size=(64, 96)):
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
    return jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_declares_what_it_returns(name):
    module = create_backbone(name, **SMALL.get(name, {}))
    info = module.feature_info()
    assert info and all(lvl in LEVEL_ORDER for lvl in info), info
    strides = [info[lvl].stride for lvl in info]
    assert strides == sorted(strides), f"{name}: levels not in increasing stride"
    out = _shapes(module)
    assert set(info) <= set(out), f"{name}: declares {sorted(info)} but returns {sorted(out)}"
    for lvl, level in info.items():
        b, h, w, c = out[lvl].shape
        assert c == level.channels, (name, lvl)
        assert abs(h - 64 / level.stride) < 3 and abs(w - 96 / level.stride) < 3, (name, lvl, h, w)
    classifier = _shapes(create_backbone(name, num_classes=7, **SMALL.get(name, {})))
    assert classifier["logits"].shape == (2, 7) and classifier["logits"].dtype == jnp.float32
    assert classifier["pre_logits"].shape[0] == 2


@pytest.mark.parametrize("name", FAMILY)
def test_every_consumer_takes_the_backbone(name):
    kw = SMALL.get(name, {})
    info = create_backbone(name, **kw).feature_info()
    pyramid = not {"C3", "C4", "C5"} <= set(info)  # a one-scale or shallow backbone needs the simple pyramid
    if pyramid:
        with pytest.raises(ValueError, match=r"has levels .* but this model needs .*simple_pyramid=True"):
            _shapes(create_model("retinanet", num_classes=3, backbone=name, backbone_kwargs=kw, fpn_channels=32))
    det = create_model("retinanet", num_classes=3, backbone=name, backbone_kwargs=kw, simple_pyramid=pyramid,
                       fpn_channels=32)
    out = _shapes(det, (64, 64))
    assert out["cls_logits"].shape[-1] == 3 and out["cls_logits"].shape[1] == out["bbox_regression"].shape[1]
    ssd = _shapes(create_model("ssd_grid", num_classes=3, num_anchors=2, grid_sizes=(2, 1), channels=16,
                               backbone=name, backbone_kwargs=kw), (64, 64))
    assert ssd["cls_logits"].shape == (2, 10, 3)
    loc = _shapes(create_model("localizer", num_classes=3, backbone=name, backbone_kwargs=kw, hidden=8), (64, 64))
    assert loc["boxes"].shape == (2, 4) and loc["logits"].shape == (2, 3)
    if name not in ONE_SCALE:
        deepest = max(v.stride for v in info.values())
        blocks = deepest.bit_length() - 1
        unet = create_model("encoder_unet", num_classes=4, encoder=name, encoder_kwargs=kw,
                            decoder_channels=(16,) * blocks)
        assert _shapes(unet, (64, 96))["logits"].shape == (2, 64, 96, 4)
