"""ViTDet simple feature pyramid: level shapes and channels, feature_info, gradients into the pyramid and a ViT."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import jit_opt

from jaxcv.models.backbones import Level
from jaxcv.models.pyramid import SimpleFeaturePyramid
from jaxcv.models.vit import VisionTransformer


def _shapes(module: SimpleFeaturePyramid, source_shape: tuple[int, ...], **kwargs):
    feats = {"C4": jax.ShapeDtypeStruct(source_shape, jnp.float32)}
    out, variables = jax.eval_shape(
        lambda f: module.init_with_output(jax.random.key(0), f, "C4", 16, **kwargs), feats)
    return {k: v.shape for k, v in out.items()}, variables["params"]


def test_levels_shapes_channels_and_feature_info() -> None:
    module = SimpleFeaturePyramid(levels=("C2", "C3", "C4", "C5"), out_channels=32)
    shapes, params = _shapes(module, (2, 14, 12, 64))
    assert shapes == {"C2": (2, 56, 48, 32), "C3": (2, 28, 24, 32), "C4": (2, 14, 12, 32), "C5": (2, 7, 6, 32)}
    assert module.feature_info() == {f"C{k}": Level(32, 2**k) for k in (2, 3, 4, 5)}
    # ViTDet's 4x branch: ConvT D -> D/2, LN, GELU, ConvT D/2 -> D/4; 2x: one ConvT to D/2; then 1x1 + LN, 3x3 + LN
    assert params["C2_up_0"]["kernel"].shape == (2, 2, 64, 32)
    assert params["C2_up_1"]["kernel"].shape == (2, 2, 32, 16)
    assert "C2_up_norm_0" in params and "C3_up_norm_0" not in params
    assert params["C3_up_0"]["kernel"].shape == (2, 2, 64, 32)
    assert params["C5_lateral"]["kernel"].shape == (1, 1, 64, 32) and "bias" not in params["C5_lateral"]
    assert params["C3_output"]["kernel"].shape == (3, 3, 32, 32)
    assert not any(k.startswith("C4_up") or k.startswith("C5_up") for k in params)


def test_odd_maps_follow_ceil_and_image_size_crops() -> None:
    module = SimpleFeaturePyramid(levels=("C3", "C4", "C5"), out_channels=8)
    shapes, _ = _shapes(module, (1, 7, 5, 16))  # e.g. a 112x80 image at stride 16
    assert shapes == {"C3": (1, 14, 10, 8), "C4": (1, 7, 5, 8), "C5": (1, 4, 3, 8)}  # ceil(7/2), ceil(5/2)
    # 40x40 image: C4 = ceil(40/16) = 3, doubled to 6 but ceil(40/8) = 5
    shapes, _ = _shapes(module, (1, 3, 3, 16), image_size=(40, 40))
    assert shapes == {"C3": (1, 5, 5, 8), "C4": (1, 3, 3, 8), "C5": (1, 2, 2, 8)}


def test_errors_name_the_problem() -> None:
    module = SimpleFeaturePyramid(levels=("C3",), out_channels=8)
    feats = {"C4": jnp.zeros((1, 4, 4, 8))}
    with pytest.raises(ValueError, match="does not match C4"):
        module.init(jax.random.key(0), feats, "C4", 8)
    with pytest.raises(ValueError, match="no 'C3'"):
        module.init(jax.random.key(0), feats, "C3")


def test_vit_through_pyramid_trains() -> None:
    """A tiny ViT's C4 -> C3, C4, C5; gradients reach every pyramid and ViT parameter and the loss drops."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            backbone = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, name="vit")
            feats = backbone(x, train)
            return SimpleFeaturePyramid(("C3", "C4", "C5"), out_channels=16, name="fpn")(
                feats, "C4", 16, train, image_size=x.shape[1:3])

    model = Model()
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    params = jit_opt(model.init)(jax.random.key(1), x)["params"]
    out = jax.eval_shape(lambda p: model.apply({"params": p}, x), params)
    assert {k: v.shape for k, v in out.items()} == {"C3": (2, 8, 8, 16), "C4": (2, 4, 4, 16), "C5": (2, 2, 2, 16)}
    rng = np.random.default_rng(0)
    targets = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in out.items()}
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            pred = model.apply({"params": p}, x, train=True)
            return sum(jnp.mean((pred[k] - targets[k]) ** 2) for k in pred)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = tx.init(params)
    losses = []
    for _ in range(20):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
    # every leaf gets a gradient (cls_token too: it reaches the patch tokens through attention)
    assert not dead, dead
    assert all(np.all(np.isfinite(g)) for _, g in flat)
    assert losses[-1] < 0.9 * losses[0], losses
