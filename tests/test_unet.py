"""Segmentation models: output shapes, parameter counts against published references, BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv.models import MODELS, create_model
from jaxcv.models.resnet import RESNET_CONFIGS, ResNet
from jaxcv.models.unet import PetsSegmenter, ResNetUNet, UNet

KEY = jax.random.PRNGKey(0)

# torchvision parameter counts (model.parameters(), fc removed: 512*1000+1000 or 2048*1000+1000).
TORCHVISION_BACKBONE_PARAMS = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
}


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _shape_init(model, shape):
    """Variables as ShapeDtypeStructs (no compute): jax.eval_shape of init."""
    return jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape, jnp.float32), train=False))


def _numpy_variables(model, shape, seed=0):
    """Concrete variables without compiling the RNG-heavy init (slow on CPU): shapes from eval_shape,
    He-scaled normal kernels, BN scale 1 / bias 0 / mean 0 / var 1."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, _shape_init(model, shape))


def _shape_apply(model, shape, train=False, dtype=jnp.float32):
    variables = _shape_init(model, shape)
    x = jax.ShapeDtypeStruct(shape, dtype)
    if train:
        return jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    return jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50"])
def test_resnet_unet_shapes_per_encoder(encoder):
    model = create_model(f"unet_{encoder}", num_classes=3)
    assert isinstance(model, ResNetUNet) and model.encoder == encoder
    out, state = _shape_apply(model, (2, 64, 64, 3), train=True)
    assert out["logits"].shape == (2, 64, 64, 3) and out["logits"].dtype == jnp.float32
    assert "backbone" in state["batch_stats"] and "decoder0" in state["batch_stats"]


@pytest.mark.parametrize("upsample", ["bilinear", "nearest", "transpose"])
def test_resnet_unet_any_input_size_and_upsample_modes(upsample):
    model = create_model("unet_resnet", encoder="resnet18", num_classes=5, upsample=upsample)
    for shape in [(1, 64, 96, 3), (1, 72, 40, 3), (1, 33, 47, 3)]:
        out = _shape_apply(model, shape)
        assert out["logits"].shape == shape[:3] + (5,)


def test_resnet_unet_bfloat16_compute_gives_float32_logits():
    model = ResNetUNet(num_classes=2, encoder="resnet18", dtype=jnp.bfloat16)
    out = _shape_apply(model, (1, 64, 64, 3), dtype=jnp.bfloat16)
    assert out["logits"].dtype == jnp.float32
    params = _shape_init(model, (1, 64, 64, 3))["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50"])
def test_resnet_unet_encoder_is_exactly_the_resnet_backbone(encoder):
    unet_vars = _shape_init(ResNetUNet(num_classes=3, encoder=encoder), (1, 64, 64, 3))
    stages, block = RESNET_CONFIGS[encoder]
    resnet_vars = _shape_init(ResNet(stage_sizes=stages, block=block, num_classes=0), (1, 64, 64, 3))
    shapes = lambda t: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), t)
    assert shapes(unet_vars["params"]["backbone"]) == shapes(resnet_vars["params"])
    assert shapes(unet_vars["batch_stats"]["backbone"]) == shapes(resnet_vars["batch_stats"])
    assert _count(unet_vars["params"]["backbone"]) == TORCHVISION_BACKBONE_PARAMS[encoder]


def _decoder_params(in_channels, skips, decoder_channels, num_classes, transpose=False):
    """Expected decoder+head parameters: per block (concat -> conv3x3 no bias -> BN) x 2, head 3x3 + bias."""
    total, prev = 0, in_channels
    for skip, out in zip(skips, decoder_channels, strict=True):
        if transpose:
            total += prev * out * 4 + out
            prev = out
        cin = prev + skip
        total += cin * out * 9 + 2 * out + out * out * 9 + 2 * out
        prev = out
    return total + prev * num_classes * 9 + num_classes


@pytest.mark.parametrize(
    "encoder,c5,skips",
    [("resnet34", 512, (256, 128, 64 + 64, 0, 0)), ("resnet50", 2048, (1024, 512, 256 + 64, 0, 0))],
)
@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_resnet_unet_decoder_parameter_count(encoder, c5, skips, upsample):
    dec = (256, 128, 64, 32, 16)
    model = ResNetUNet(num_classes=3, encoder=encoder, upsample=upsample)
    params = _shape_init(model, (1, 64, 64, 3))["params"]
    decoder = {k: v for k, v in params.items() if k != "backbone"}
    assert _count(decoder) == _decoder_params(c5, skips, dec, 3, transpose=upsample == "transpose")
    assert _count(params) == TORCHVISION_BACKBONE_PARAMS[encoder] + _count(decoder)


def test_resnet_unet_rejects_bad_config():
    with pytest.raises(KeyError, match="unknown backbone 'vgg17'.*resnet34"):
        _shape_init(ResNetUNet(num_classes=3, encoder="vgg17"), (1, 64, 64, 3))
    with pytest.raises(ValueError, match="5 entries"):
        _shape_init(ResNetUNet(num_classes=3, encoder="resnet18", decoder_channels=(64, 32)), (1, 64, 64, 3))


def _changed(a, b) -> bool:
    return any(
        not np.allclose(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


@pytest.mark.parametrize("freeze", [False, True])
def test_resnet_unet_train_updates_batch_stats(freeze):
    model = ResNetUNet(num_classes=3, encoder="resnet18", decoder_channels=(32, 16, 16, 8, 8), freeze_encoder_bn=freeze)
    x = jnp.asarray(np.random.default_rng(1).normal(1.0, 2.0, (2, 32, 32, 3)), jnp.float32)
    variables = _numpy_variables(model, x.shape)

    @jax.jit
    def fwd(variables, x):
        train_out, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return train_out, upd, model.apply(variables, x, train=False)

    train_out, updated, eval_out = fwd(variables, x)
    assert train_out["logits"].shape == (2, 32, 32, 3) and np.all(np.isfinite(train_out["logits"]))
    old, new = variables["batch_stats"], updated["batch_stats"]
    assert _changed(old["decoder0"], new["decoder0"])
    # Encoder BN: updated in plain training, untouched when frozen.
    assert _changed(old["backbone"], new["backbone"]) != freeze
    # train=True normalizes with batch statistics, train=False with the (initial) running ones.
    assert not np.allclose(train_out["logits"], eval_out["logits"])


def _paper_unet_params(in_ch: int, num_classes: int) -> int:
    """Layer-by-layer count from Fig. 1 of Ronneberger et al.: 3x3 convs with bias, 2x2 up-convs
    halving channels, 1x1 head."""
    widths = [64, 128, 256, 512, 1024]
    total, prev = 0, in_ch
    for w in widths:  # contracting path and bottom
        total += prev * w * 9 + w + w * w * 9 + w
        prev = w
    for w in reversed(widths[:-1]):  # expansive path: up-conv, then two 3x3 on the concatenation
        total += prev * w * 4 + w + 2 * w * w * 9 + w + w * w * 9 + w
        prev = w
    return total + prev * num_classes + num_classes


def test_unet_paper_configuration():
    # Ronneberger et al.: 1-channel input, 2 classes, 64..1024 channels, no BN (31,030,658 parameters).
    model = create_model("unet", num_classes=2, use_bn=False)
    variables = _shape_init(model, (1, 64, 64, 1))
    assert _count(variables["params"]) == _paper_unet_params(1, 2) == 31_030_658
    assert "batch_stats" not in variables
    out = _shape_apply(model, (1, 64, 64, 1))
    assert out["logits"].shape == (1, 64, 64, 2)
    out = _shape_apply(create_model("unet", num_classes=4), (2, 96, 64, 3), train=True)[0]
    assert out["logits"].shape == (2, 96, 64, 4) and out["logits"].dtype == jnp.float32


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_unet_small_forward_odd_size_and_batch_stats(upsample):
    model = UNet(num_classes=3, base_width=8, depth=2, upsample=upsample)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 30, 34, 3)), jnp.float32)
    variables = _numpy_variables(model, x.shape)
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert out["logits"].shape == (2, 30, 34, 3) and np.all(np.isfinite(out["logits"]))
    assert _changed(variables["batch_stats"], upd["batch_stats"])


def test_pets_segmenter_matches_keras_tutorial_summary():
    # keras.io oxford_pets_image_segmentation model.summary() at 160x160, 3 classes:
    # trainable params 2,055,203; non-trainable (BN moving mean/variance) 3,776.
    model = create_model("pets_segmenter", num_classes=3)
    assert isinstance(model, PetsSegmenter)
    variables = _shape_init(model, (1, 160, 160, 3))
    assert _count(variables["params"]) == 2_055_203
    assert _count(variables["batch_stats"]) == 3_776
    out = _shape_apply(model, (1, 160, 160, 3))
    assert out["logits"].shape == (1, 160, 160, 3) and out["logits"].dtype == jnp.float32
    with pytest.raises(ValueError, match="divisible by 16"):
        _shape_init(model, (1, 100, 100, 3))


def test_pets_segmenter_train_step_updates_batch_stats():
    model = PetsSegmenter(num_classes=3, down_filters=(8, 16, 16), up_filters=(16, 16, 8, 8))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = _numpy_variables(model, x.shape)
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert out["logits"].shape == (2, 32, 32, 3) and np.all(np.isfinite(out["logits"]))
    assert _changed(variables["batch_stats"], upd["batch_stats"])


def test_registered_names():
    for name in ["unet_resnet", "unet_resnet18", "unet_resnet34", "unet_resnet50", "unet", "pets_segmenter"]:
        assert name in MODELS
