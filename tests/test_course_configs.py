"""The course configs learn: the `:synthetic` variants of `cifar10_vgg16`, `cifar10_vit`, `mobilenet_v3_transfer` and
`cats_vs_dogs_xception`, trained briefly with their own recipes, beat chance by a wide margin; Grad-CAM on a ViT
reads a block's tokens as the patch grid and equals its definition."""

import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv import explain, train
from jaxcv.config import load_config_file
from jaxcv.explain import methods
from jaxcv.models import create_model

ROOT = Path(__file__).resolve().parents[1]
NUM_EVAL = 256  # held-out synthetic images scored after the short runs


def chance_bar(num_classes: int, n: int, sigmas: float = 4.0) -> float:
    """Accuracy a chance-level classifier exceeds with probability ~3e-5 (one-sided, normal approximation of the
    binomial): 1/K + sigmas * sqrt(p (1 - p) / n). 10 classes, 256 images: 0.175."""
    p = 1.0 / num_classes
    return p + sigmas * math.sqrt(p * (1.0 - p) / n)


def short_synthetic_run(name: str, workdir: Path, steps: int, warmup: int,
                        overrides: dict | None = None) -> tuple[dict, int]:
    """`configs/NAME.py:synthetic` with its model and recipe, shortened to `steps` (cosine over them after `warmup`),
    one final checkpoint and evaluation on NUM_EVAL images. Returns the final metrics and the class count."""
    config = load_config_file(
        ROOT / "configs" / f"{name}.py:synthetic",
        {"num_train_steps": steps, "schedule.warmup_steps": warmup, "log_every": steps, "checkpoint_every": steps,
         "checkpoint.best_metric": "", "data.num_val": NUM_EVAL, **(overrides or {})},
    )
    return train.train_and_evaluate(config, workdir), config.data.num_classes


# Short runs of the configs' recipes, each with a 10-step warmup. The two BatchNorm nets from scratch need the
# steps for their running statistics (momentum 0.9 in their :synthetic variants) to follow the weights: at 40
# (MobileNetV3) and 30 (mini-Xception) steps they still score chance on held-out images.
@pytest.mark.parametrize(("name", "steps", "warmup"), [("cifar10_vgg16", 60, 10), ("cifar10_vit", 100, 10),
                                                       ("mobilenet_v3_transfer", 64, 10),
                                                       ("cats_vs_dogs_xception", 60, 10)])
def test_synthetic_variant_learns(name: str, steps: int, warmup: int, tmp_path: Path):
    metrics, num_classes = short_synthetic_run(name, tmp_path, steps, warmup)
    bar = chance_bar(num_classes, NUM_EVAL)
    assert metrics["accuracy"] > bar, (name, metrics, f"chance + 4 sd = {bar:.3f}")


# ---- Grad-CAM on a ViT --------------------------------------------------------------------------------------------

S = 32  # image size; 8-pixel patches: a 4x4 grid of tokens after the class token


@pytest.fixture(scope="module")
def small_vit():
    """A 2-block ViT (patch 8, width 64, 2 classes) at random init and one image [S, S, 3]."""
    model = create_model("vit_tiny_patch16_224", img_size=S, patch_size=8, depth=2, embed_dim=64, num_heads=2,
                         num_classes=2)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, S, S, 3)))
    image = np.random.default_rng(1).normal(0.0, 1.0, (S, S, 3)).astype(np.float32)
    return model, variables, image


def grad_cam_by_finite_differences(model, variables, image: np.ndarray, layer: tuple[str, ...], cls: int,
                                   eps: float = 1e-2) -> np.ndarray:
    """Grad-CAM [S, S] from its definition, with no autodiff: the weight of channel k is the mean over the patch
    tokens of dy_c/dA_k, i.e. d y_c(A + t 1_k) / dt / T with t added to channel k of every patch token (central
    differences); map = ReLU(sum_k w_k A_k) on the row-major 4x4 patch grid, bilinearly resized, divided by its max."""
    x = jnp.asarray(image)[None]

    def score(shift):  # shift [D], added to the patch tokens (not the class token) of `layer`'s output
        def add(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and tuple(context.module.path) == layer:
                out = out.at[:, 1:].add(shift)
            return out

        with nn.intercept_methods(add):
            return model.apply(variables, x)["logits"][0, cls]

    _, state = model.apply(variables, x, mutable=["intermediates"],
                           capture_intermediates=lambda m, method: method == "__call__" and tuple(m.path) == layer)
    node = state["intermediates"]
    for name in layer:
        node = node[name]
    tokens = np.asarray(node["__call__"][0])[0, 1:]  # [16, D] patch tokens, class token dropped
    basis = eps * jnp.eye(tokens.shape[1])
    diffs = jax.jit(jax.vmap(lambda e: score(e) - score(-e)))(basis)
    weights = np.asarray(diffs) / (2 * eps) / tokens.shape[0]  # [D]
    cam = np.maximum(tokens @ weights, 0.0).reshape(4, 4)
    cam = np.asarray(jax.image.resize(jnp.asarray(cam), (S, S), method="bilinear"))
    return cam / cam.max()


def test_token_grid_is_row_major_after_the_class_token():
    tokens = jnp.arange(1 + 4 * 6, dtype=jnp.float32)[None, :, None]  # token 1 + i * 6 + j = patch (i, j)
    grid = np.asarray(methods.token_grid(tokens, (32, 48)))[0, :, :, 0]
    np.testing.assert_array_equal(grid, 1 + np.arange(24).reshape(4, 6))
    maps = jnp.ones((1, 4, 4, 3))
    assert methods.token_grid(maps, (32, 32)) is maps  # spatial maps pass through


def test_vit_grad_cam_matches_its_definition_on_the_patch_grid(small_vit):
    """Grad-CAM on a block's tokens is Grad-CAM on the patch grid (class token dropped, row-major), checked against
    central differences of the class score rather than a claim about where a trained ViT looks: on the quadrant task
    of tests/test_show_explain.py, 2-block ViTs that all score ~100 % put 0.07-0.73 of the map's mass (median over
    images, by seed and XLA optimization level) in the evidence's quadrant (benchmarks/README.md, "Grad-CAM")."""
    model, variables, image = small_vit
    names = dict(explain.list_layers(model.apply, variables, image))
    assert names["blocks_1/norm1"] == names["blocks_1"] == (1, 1 + 16, 64)  # tokens, class token first
    # The last block's input norm: its patch tokens reach the class token through the block's attention.
    assert explain.default_layer(model.apply, variables, image) == "blocks_1/norm1"
    for layer, cls in [("blocks_1/norm1", 1), ("blocks_0/norm1", 0), ("blocks_0", 1)]:
        cam = explain.grad_cam(model.apply, variables, image, layer=layer, class_index=cls)
        expected = grad_cam_by_finite_differences(model, variables, image, tuple(layer.split("/")), cls)
        assert cam.shape == (S, S) and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
        np.testing.assert_allclose(cam, expected, atol=2e-3, err_msg=layer)
    # The last block's own output: with token pooling only its class token reaches the logits (through `norm`),
    # so the gradients on its patch tokens are zero and so is the map.
    cam = explain.grad_cam(model.apply, variables, image, layer="blocks_1", class_index=1)
    assert cam.shape == (S, S) and not cam.any()
