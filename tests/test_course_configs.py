"""The course configs learn: the `:synthetic` variants of `cifar10_vgg16`, `cifar10_vit`, `mobilenet_v3_transfer` and
`cats_vs_dogs_xception`, trained briefly with their own recipes, beat chance by a wide margin; Grad-CAM on a ViT
reads the last block's tokens as the patch grid and points at the evidence."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def quadrant_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, S, S, 3] (model-input scale): class 1 iff a bright disk lies in the top-left quadrant, with three
    coloured squares anywhere as distractors (tests/test_show_explain.py's task)."""
    x = rng.normal(0.0, 0.2, (n, S, S, 3)).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.int32)
    yy, xx = np.mgrid[:S, :S]
    for i in range(n):
        for _ in range(3):
            cy, cx = rng.integers(2, S - 5, 2)
            x[i, cy : cy + 4, cx : cx + 4, rng.integers(3)] += 2.5
        if y[i]:
            cy, cx = rng.integers(4, S // 2 - 4, 2)
            x[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= 8] += 2.0
    return x, y


@pytest.fixture(scope="module")
def quadrant_vit():
    """A 2-block ViT (patch 8, width 64) trained for 200 AdamW steps on the quadrant task."""
    model = create_model("vit_tiny_patch16_224", img_size=S, patch_size=8, depth=2, embed_dim=64, num_heads=2,
                         num_classes=2)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, S, S, 3)))["params"]
    tx = optax.adamw(1e-3, weight_decay=0.0)
    opt = tx.init(params)

    @jax.jit
    def step(p, o, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        g = jax.grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    rng = np.random.default_rng(0)
    for _ in range(200):
        params, opt = step(params, opt, *quadrant_batch(rng, 32))
    variables = {"params": params}
    x, y = quadrant_batch(np.random.default_rng(1), 48)
    acc = float((jax.jit(model.apply)(variables, x)["logits"].argmax(-1) == y).mean())
    assert acc > 0.9, f"the quadrant ViT did not learn (accuracy {acc})"
    return model, variables, (x, y)


def test_token_grid_is_row_major_after_the_class_token():
    tokens = jnp.arange(1 + 4 * 6, dtype=jnp.float32)[None, :, None]  # token 1 + i * 6 + j = patch (i, j)
    grid = np.asarray(methods.token_grid(tokens, (32, 48)))[0, :, :, 0]
    np.testing.assert_array_equal(grid, 1 + np.arange(24).reshape(4, 6))
    maps = jnp.ones((1, 4, 4, 3))
    assert methods.token_grid(maps, (32, 32)) is maps  # spatial maps pass through


def test_vit_grad_cam_on_the_last_block_points_at_the_evidence(quadrant_vit):
    model, variables, (x, y) = quadrant_vit
    names = dict(explain.list_layers(model.apply, variables, x[0]))
    assert names["blocks_1/norm1"] == names["blocks_1"] == (1, 1 + 16, 64)  # tokens, class token first
    # The last block's input norm: its patch tokens reach the class token through the block's attention.
    assert explain.default_layer(model.apply, variables, x[0]) == "blocks_1/norm1"
    fractions = []
    for i in np.flatnonzero(y == 1)[:16]:
        cam = explain.grad_cam(model.apply, variables, x[i], layer="blocks_1/norm1", class_index=1)
        assert cam.shape == (S, S) and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
        fractions.append(cam[: S // 2, : S // 2].sum() / cam.sum())
    # A map spread evenly puts 0.25 there. ViT maps are noisier per image than a CNN's (a few images put their
    # mass elsewhere), so the bar is on the typical image.
    assert np.median(fractions) > 0.5 and np.mean(fractions) > 0.4, fractions
    # The last block's own output: with token pooling only its class token reaches the logits (through `norm`),
    # so the gradients on its patch tokens are zero and so is the map.
    cam = explain.grad_cam(model.apply, variables, x[np.flatnonzero(y == 1)[0]], layer="blocks_1", class_index=1)
    assert cam.shape == (S, S) and not cam.any()
