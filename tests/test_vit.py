"""ViT: parity with timm's vit_tiny_patch16_224 fixture, position-embedding resampling, strict importer, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close_rel, jit_opt, load_io, load_regenerable

import jaxcv.models.vit as vit
from jaxcv.models.backbones import BACKBONES, IMPORTERS, Level, create_backbone

NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny() -> dict:
    state_dict = load_regenerable("backbones", NAME)
    io = load_io("backbones", NAME)
    module, variables = IMPORTERS.get(f"timm:{NAME}")(state_dict)
    fwd = jax.jit(lambda v, x: module.apply(
        v, x, mutable=["intermediates"], capture_intermediates=lambda mdl, _: mdl.name == "blocks_5"))
    out, inter = fwd(variables, io["input_nchw"].transpose(0, 2, 3, 1))
    inter = inter["intermediates"]
    return {"module": module, "variables": variables, "state_dict": state_dict, "io": io, "out": jax.device_get(out),
            "embed": np.asarray(inter["embed"][0]), "block5": np.asarray(inter["blocks_5"]["__call__"][0])}


def test_parity_with_timm_every_array(tiny: dict) -> None:
    io, out = tiny["io"], tiny["out"]
    assert tiny["module"].num_classes == 10
    ours = {"tokens": tiny["embed"], "block5": tiny["block5"], "forward_features": out["tokens"],
            "pre_logits": out["pre_logits"], "logits": out["logits"]}
    expected = {k for k in io if k != "input_nchw"}
    assert set(ours) == expected, (set(ours), expected)
    errors = {k: assert_close_rel(v, io[k], 1e-4, k) for k, v in ours.items()}
    print("vit_tiny relative max errors:", {k: f"{e:.2e}" for k, e in errors.items()})
    assert out["logits"].dtype == np.float32
    # the C4 map is the normed patch tokens, row-major
    np.testing.assert_array_equal(out["C4"].reshape(2, 196, 192), out["tokens"][:, 1:])


def test_feature_info_and_parameter_names(tiny: dict) -> None:
    module, out, params = tiny["module"], tiny["out"], tiny["variables"]["params"]
    assert module.feature_info() == {"C4": Level(192, 16)}
    assert out["C4"].shape == (2, 224 // 16, 224 // 16, 192)
    # learned position table over the 14x14 grid (cls first), named as timm so decay can exclude it by name
    assert params["pos_embed"].shape == (1, 1 + 14 * 14, 192)
    assert params["cls_token"].shape == (1, 1, 192)
    assert params["blocks_11"]["attn"]["qkv"]["kernel"].shape == (192, 576)
    assert vit.timm_key(("params", "blocks_3", "mlp", "fc2", "bias")) == "blocks.3.mlp.fc2.bias"


def test_other_image_size_resizes_pos_embed(tiny: dict) -> None:
    """224-trained weights at 160x128 (10x8 patches): resized in __call__ == resized at import."""
    x = tiny["io"]["input_nchw"].transpose(0, 2, 3, 1)[:, :160, :128]
    run = jax.jit(lambda m, v, x: m.apply(v, x)["logits"], static_argnums=0)
    at_runtime = run(tiny["module"], tiny["variables"], x)
    module, variables = IMPORTERS.get(f"timm:{NAME}")(tiny["state_dict"], img_size=(160, 128))
    assert variables["params"]["pos_embed"].shape == (1, 1 + 10 * 8, 192)
    np.testing.assert_array_equal(variables["params"]["pos_embed"][:, 0], tiny["state_dict"]["pos_embed"][:, 0])
    at_import = run(module, variables, x)
    assert_close_rel(at_runtime, at_import, 1e-5, "runtime vs import resize")
    assert np.all(np.isfinite(at_runtime))


def test_bicubic_matrix_is_torchs() -> None:
    # antialias off: torch/OpenCV cubic convolution a = -0.75; a 2x upsample's interior taps at t = 0.25
    m = vit.bicubic_matrix(8, 16, antialias=False)
    np.testing.assert_allclose(m[5, 1:5], [-0.10546875, 0.87890625, 0.26171875, -0.03515625], atol=1e-12)
    # border row: source -0.25, taps at -2..1 clamped onto 0, 0, 0, 1 (their weights add up on the edge)
    np.testing.assert_allclose(m[0, :3], [-0.03515625 + 0.26171875 + 0.87890625, -0.10546875, 0.0], atol=1e-12)
    for n_in, n_out in [(14, 8), (14, 20), (7, 14), (24, 14), (5, 7)]:
        for aa in (True, False):
            np.testing.assert_allclose(vit.bicubic_matrix(n_in, n_out, aa).sum(1), 1.0, atol=1e-12)
        # antialias on (timm's default): the PIL kernel, a = -0.5, which jax.image.resize's bicubic also uses
        x = np.random.default_rng(n_in).standard_normal((n_in, 3)).astype(np.float32)
        ours = vit.bicubic_matrix(n_in, n_out, antialias=True) @ x
        theirs = np.asarray(jax.image.resize(jnp.asarray(x), (n_out, 3), "bicubic"))
        assert_close_rel(theirs, ours, 1e-5, f"jax.image.resize {n_in}->{n_out}")
    np.testing.assert_array_equal(vit.bicubic_matrix(9, 9, True), np.eye(9))


def test_importer_is_strict(tiny: dict) -> None:
    sd = tiny["state_dict"]
    cases = [({k: v for k, v in sd.items() if k != "blocks.4.norm2.weight"}, "blocks.4.norm2.weight"),
             ({**sd, "blocks.12.norm1.weight": np.ones((192,), np.float32)}, "blocks.12.norm1.weight"),
             ({**sd, "blocks.0.attn.qkv.weight": np.zeros((192, 192), np.float32)}, "blocks.0.attn.qkv.weight")]
    for state_dict, key in cases:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            IMPORTERS.get(f"timm:{NAME}")(state_dict)
    headless, variables = IMPORTERS.get(f"timm:{NAME}")({k: v for k, v in sd.items() if not k.startswith("head.")})
    assert headless.num_classes == 0 and "head" not in variables["params"]


# timm's parameter counts with the 1000-class head.
PARAM_COUNTS = {"vit_tiny_patch16_224": 5_717_416, "vit_small_patch16_224": 22_050_664,
                "vit_base_patch16_224": 86_567_656, "vit_large_patch16_224": 304_326_632}


@pytest.mark.parametrize("arch", list(PARAM_COUNTS))
def test_variants_match_timm_parameter_counts(arch: str) -> None:
    assert arch in BACKBONES and f"timm:{arch}" in IMPORTERS
    module = create_backbone(arch, num_classes=1000)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x), x)
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables)) == PARAM_COUNTS[arch]
    (lvl, level), = module.feature_info().items()
    assert out[lvl].shape == (1, 14, 14, level.channels) and out["tokens"].shape == (1, 197, level.channels)


def test_small_cifar_vit_with_mean_pooling_trains() -> None:
    """Patch 4 at 32 px (C2, 8x8 tokens), pool='avg' (timm: fc_norm, no final norm), stochastic depth."""
    module = vit.VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10,
                                   pool="avg", drop_path_rate=0.1)
    assert module.feature_info() == {"C2": Level(32, 4)}
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    labels = np.arange(4) % 10
    params = jit_opt(module.init)(jax.random.key(1), x)["params"]
    assert "fc_norm" in params and "norm" not in params
    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            logits = module.apply({"params": p}, x, train=True, rngs={"dropout": key})["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = tx.init(params)
    losses = []
    for i in range(15):
        params, opt_state, loss, grads = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.abs(grads["pos_embed"]).max() > 0 and np.abs(grads["cls_token"]).max() > 0
    assert losses[-1] < losses[0], losses
    out = jax.device_get(jax.jit(module.apply)({"params": params}, x))
    assert out["C2"].shape == (4, 8, 8, 32) and out["tokens"].shape == (4, 65, 32)
    # with pool="avg" the tokens are the last block's (no final norm); pre_logits = fc_norm(mean of patch tokens)
    np.testing.assert_array_equal(out["C2"].reshape(4, 64, 32), out["tokens"][:, 1:])
    mean = out["tokens"][:, 1:].mean(1)
    ln = (mean - mean.mean(-1, keepdims=True)) / np.sqrt(mean.var(-1, keepdims=True) + 1e-6)
    expected = ln * params["fc_norm"]["scale"] + params["fc_norm"]["bias"]
    np.testing.assert_allclose(out["pre_logits"], expected, rtol=1e-5, atol=1e-5)
