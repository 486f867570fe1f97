"""Seeing the models: stage activations, filter patterns, Grad-CAM, and the show/explain commands."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import jit_opt
from PIL import Image

from jaxcv import explain, show
from jaxcv.explain import methods
from jaxcv.models import create_model

ROOT = Path(__file__).resolve().parents[1]
S = 32  # image size of the synthetic quadrant task


def quadrant_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [n, S, S, 3] (model-input scale): class 1 iff a bright disk lies in the top-left quadrant;
    every image also has 3 coloured squares anywhere (distractors). Returns images, labels, disk centres."""
    x = rng.normal(0.0, 0.2, (n, S, S, 3)).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.int32)
    centres = np.full((n, 2), -1)
    yy, xx = np.mgrid[:S, :S]
    for i in range(n):
        for _ in range(3):
            cy, cx = rng.integers(2, S - 5, 2)
            x[i, cy : cy + 4, cx : cx + 4, rng.integers(3)] += 2.5
        if y[i]:
            cy, cx = rng.integers(4, S // 2 - 4, 2)
            x[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= 8] += 2.0
            centres[i] = cy, cx
    return x, y, centres


@pytest.fixture(scope="module")
def quadrant_model():
    """small_cnn trained for 50 Adam steps on the quadrant task (reaches ~100% accuracy)."""
    model = create_model("small_cnn", num_classes=2, widths=(8, 16), hidden=16, dropout_rate=0.0)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, S, S, 3)))["params"]
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(p, o, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, g = jax.value_and_grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y, _ = quadrant_batch(rng, 32)
        params, opt, loss = step(params, opt, x, y)
    variables = {"params": params}
    x, y, centres = quadrant_batch(np.random.default_rng(1), 48)
    acc = float((jax.jit(model.apply)(variables, x)["logits"].argmax(-1) == y).mean())
    assert acc > 0.9, f"the quadrant model did not learn (accuracy {acc})"
    return model, variables, (x, y, centres)


def test_grad_cam_points_at_the_evidence(quadrant_model):
    model, variables, (x, y, centres) = quadrant_model
    assert explain.default_layer(model.apply, variables, x[0]) == "block1_conv1"  # the last conv
    fractions = []
    for i in np.flatnonzero(y == 1)[:8]:
        cam = explain.grad_cam(model.apply, variables, x[i], class_index=1)
        assert cam.shape == (S, S) and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
        fractions.append(cam[: S // 2, : S // 2].sum() / cam.sum())
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert np.hypot(*(np.asarray(peak) - centres[i])) <= 5, (peak, centres[i])  # on the disk
    assert min(fractions) > 0.6 and np.mean(fractions) > 0.8, fractions  # chance: 0.25
    # Default class = the predicted one; details give it with the scores.
    cam, c, scores = explain.grad_cam_details(model.apply, variables, x[np.flatnonzero(y == 1)[0]])
    assert c == 1 == int(np.argmax(scores)) and cam.shape == (S, S)
    with pytest.raises(KeyError, match="unknown layer"):
        explain.grad_cam(model.apply, variables, x[0], layer="nope")


def test_filter_pattern_increases_the_activation(quadrant_model):
    model, variables, _ = quadrant_model
    for layer, channel in (("block1_conv1", 3), ("logits", 1)):
        start = explain.filter_pattern(model.apply, variables, layer, channel, S, steps=0)
        pattern = explain.filter_pattern(model.apply, variables, layer, channel, S, steps=40, lr=0.1)
        assert pattern.shape == (S, S, 3) and np.isfinite(pattern).all()
        before = explain.layer_activation(model.apply, variables, start, layer, channel)
        after = explain.layer_activation(model.apply, variables, pattern, layer, channel)
        assert after > before + 1.0 and after > 2 * abs(before), (layer, before, after)
        pixels = pattern * explain.IMAGENET_STD + explain.IMAGENET_MEAN  # kept in the valid pixel range
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    shown = explain.pattern_to_uint8(pattern)
    assert shown.dtype == np.uint8 and shown.shape == (S, S, 3) and shown.std() > 5
    # The ascent loop is compiled once per (model, layer, size, number of channels): another channel,
    # step count, learning rate or seed reuses it.
    size = methods._ascend._cache_size()
    explain.filter_pattern(model.apply, variables, "logits", 0, S, steps=7, lr=0.2, seed=4)
    assert methods._ascend._cache_size() == size
    with pytest.raises(ValueError, match="out of range"):
        explain.filter_pattern(model.apply, variables, "block1_conv1", 16, S, steps=1)


def test_stage_activations_resnet_and_output_keys_as_layers():
    model = create_model("resnet18", num_classes=3)
    variables = jit_opt(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    image = np.random.default_rng(0).normal(size=(64, 64, 3)).astype(np.float32)
    stages = explain.stage_activations(model.apply, variables, image)
    expected = {"stem": (16, 16, 64), "C2": (16, 16, 64), "C3": (8, 8, 128), "C4": (4, 4, 256), "C5": (2, 2, 512)}
    assert {k: v.shape for k, v in stages.items()} == expected
    for name, a in stages.items():
        assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() > 0.0, name  # after ReLU
    # `C5` (an output key) is the output of the last block; Grad-CAM through either name agrees.
    assert explain.default_layer(model.apply, variables, image) == "layer4_1"
    cam_key = explain.grad_cam(model.apply, variables, image, layer="C5", class_index=2)
    cam_mod = explain.grad_cam(model.apply, variables, image, layer="layer4_1", class_index=2)
    np.testing.assert_allclose(cam_key, cam_mod, atol=1e-6)
    assert cam_key.shape == (64, 64) and 0.0 <= cam_key.min() and cam_key.max() <= 1.0
    with pytest.raises(KeyError, match="not the output of a submodule"):
        explain.grad_cam(model.apply, variables, image, layer="stem")


def test_small_cnn_stages_are_its_backbone_levels():
    """small_cnn follows the backbone contract: its stages are the levels it returns (after each block's pool)."""
    model = create_model("small_cnn", num_classes=4, widths=(8, 16))
    variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    image = np.random.default_rng(1).normal(size=(32, 32, 3)).astype(np.float32)
    stages = explain.stage_activations(model.apply, variables, image)
    assert {k: v.shape for k, v in stages.items()} == {"C1": (16, 16, 8), "C2": (8, 8, 16)}
    assert {k: (v.channels, v.stride) for k, v in model.feature_info().items()} == {"C1": (8, 2), "C2": (16, 4)}
    # C1 equals a direct computation with the block's own parameters: conv, ReLU, conv, ReLU, 2x2 max pool.
    p = variables["params"]

    def conv(x, name):
        return jax.lax.conv_general_dilated(x, p[name]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p[name]["bias"]

    y = jax.nn.relu(conv(jax.nn.relu(conv(image[None], "block0_conv0")), "block0_conv1"))
    direct = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")[0]
    np.testing.assert_allclose(stages["C1"], direct, atol=1e-5)


def test_gallery_tiles_draw_what_the_batch_holds():
    rng = np.random.default_rng(0)
    image = np.full((2, 32, 32, 3), 0.0, np.float32)  # normalized zeros = the mean colour
    det = {"image": image, "boxes": np.array([[[4, 4, 20, 20], [0, 0, 0, 0]]] * 2, np.float32),
           "labels": np.array([[1, 0]] * 2, np.int32), "box_mask": np.array([[True, False]] * 2),
           "valid": np.array([True, False])}
    tiles = show.batch_tiles(det, ["a", "b"], 16, "boxes")
    assert len(tiles) == 2
    px = np.asarray(tiles[0])
    factor = 4  # 32 px images are enlarged to 128 px
    assert tuple(px[10 * factor, 4 * factor]) == show.viz.color(1)  # left edge of the box, class 1's colour
    preds = {"boxes": det["boxes"], "labels": det["labels"], "scores": np.array([[0.9, 0.1]] * 2, np.float32),
             "valid": det["box_mask"]}
    # one valid example: truth | prediction
    assert len(show.result_tiles(det, preds, ["a", "b"], 16, 0.5, "boxes")) == 2
    mask = np.zeros((2, 32, 32), np.int32)
    mask[:, 8:16, 8:16] = 2
    seg_tiles = show.batch_tiles({"image": image, "mask": mask}, ["background", "x", "y"], 1, "mask")
    assert len(seg_tiles) == 2  # image | mask
    seg = np.asarray(seg_tiles[1])
    assert tuple(seg[12 * factor, 12 * factor]) == show.viz.color(1) and tuple(seg[2, 2]) == (0, 0, 0)
    seg_preds = {"pred": np.zeros((2, 32, 32), np.int32)}
    seg_batch = {"image": image, "mask": mask, "valid": np.array([True, False])}
    assert len(show.result_tiles(seg_batch, seg_preds, ["background", "x", "y"], 16, 0.5, "mask")) == 3
    logits = rng.normal(size=(2, 3)).astype(np.float32)
    cls = {"image": image, "label": np.array([0, 2], np.int32), "valid": np.array([True, True])}
    res = show.result_tiles(cls, {"logits": logits}, ["a", "b", "c"], 16, 0.5, "label")
    assert len(res) == 2 and all(t.height > 128 for t in res)  # the caption strip under the image


def test_unit_normalized_batches_are_drawn_in_their_own_colours():
    """A "unit" config's batch (pixels / 255, grey 114 letterbox, as the YOLO configs) is drawn back to its
    original pixels (within 1), not through the ImageNet inverse; configs without `preprocess` stay ImageNet."""
    from jaxcv.data.detection import pad_color, to_model_input

    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    x = to_model_input(pixels, "unit")
    x[:, 24:] = pad_color("unit", 114.0)  # a letterboxed strip
    batch = {"image": x, "label": np.array([0, 1], np.int32)}
    factor = 4  # 32 px images are enlarged to 128 px (nearest), the caption strip is below them
    for b, tile in enumerate(show.batch_tiles(batch, ["a", "b"], 2, "label", "unit")):
        drawn = np.asarray(tile)[: 32 * factor : factor, : 32 * factor : factor].astype(int)
        want = pixels[b].astype(int)
        want[24:] = 114
        assert np.abs(drawn - want).max() <= 1
    assert np.abs(show.viz.to_uint8(x[0], "unit").astype(int) - np.asarray(show.viz.to_uint8(x[0]), int)).max() > 50
    assert show.input_normalization(_config("coco_json_yolov8n")) == "unit"
    assert show.input_normalization(_config("synthetic_classification")) == "imagenet"


def _config(name: str, arg: str | None = "smoke"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory) -> Path:
    from jaxcv import train

    workdir = tmp_path_factory.mktemp("smoke_cls")
    train.train_and_evaluate(_config("synthetic_classification"), workdir)
    return workdir


def _png(path: Path) -> Image.Image:
    assert path.exists() and path.stat().st_size > 1000, path
    im = Image.open(path)
    im.load()
    return im


def test_show_and_explain_on_a_trained_workdir(smoke_workdir: Path, tmp_path: Path):
    config = _config("synthetic_classification")
    im = _png(show.show(config, "batch", smoke_workdir, tmp_path / "batch.png", num=8))
    assert im.width >= 8 * 128
    _png(show.show(None, "results", smoke_workdir, tmp_path / "results.png", num=4))  # the run's config.json
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        show.show(config, "results", tmp_path, tmp_path / "none.png")
    with config.unlocked():
        config.model.hidden = 8  # another model than the checkpoint's: an error, not a fresh model
    with pytest.raises(ValueError, match="another model|could be restored"):
        show.show(config, "results", smoke_workdir, tmp_path / "wrong.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / "in.png")
    _png(explain.explain(smoke_workdir, "filters", tmp_path / "f.png", layer="block1_conv1", num=4, steps=5))
    _png(explain.explain(smoke_workdir, "gradcam", tmp_path / "g.png", str(tmp_path / "in.png"), class_index=2))
    # The command lines (the cheap modes; the in-process calls above covered the rest).
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "jaxcv.show", "--config=configs/synthetic_classification.py:smoke",
                          "--what=batch", "--num=8", "--config.batch_size=8", f"--out={tmp_path}/cli_show.png"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, "-m", "jaxcv.explain", f"--workdir={smoke_workdir}", "--what=activations",
                          f"--image={tmp_path}/in.png", f"--out={tmp_path}/cli_explain.png"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
        assert "[jaxcv] wrote" in out, out
    assert _png(tmp_path / "cli_show.png").width >= 8 * 128
    assert _png(tmp_path / "cli_explain.png").height > 6 * 48  # input + 4 conv stages


def test_training_curves_separate_losses_scores_and_eval(tmp_path: Path, monkeypatch):
    import json

    import matplotlib.figure

    from jaxcv import viz

    records = [{"step": s, "split": "train", "loss": 5.0 / s, "box_loss": 1.0 / s, "pixel_acc": 1 - 1 / s,
                "grad_norm": 3.0, "steps_per_s": 9.0} for s in range(1, 101, 10)]
    records += [{"step": 100, "split": "eval", "AP": 0.5, "APl": -1.0, "mIoU": float("nan")},
                {"step": 1, "split": "compile", "first_step_s": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    figures = []
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        figures.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    viz.plot_training_curves(tmp_path, tmp_path / "curves.png")
    _png(tmp_path / "curves.png")
    losses, scores, evals = figures[0].axes
    assert sorted(line.get_label() for line in losses.lines) == ["box_loss", "loss"]  # not grad_norm
    assert losses.get_yscale() == "log"  # 0.05 .. 5 spans two decades
    assert [line.get_label() for line in scores.lines] == ["pixel_acc"] and scores.get_ylim()[1] <= 1.05
    assert [line.get_label() for line in evals.lines] == ["AP (0.5)"]  # -1 (absent) and NaN left out
    assert evals.get_ylim() == pytest.approx((-0.02, 1.02))  # a single point is not zoomed into


def test_grad_cam_on_a_vit_reads_the_last_blocks_tokens_as_the_patch_grid():
    model = create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=2)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(jnp.zeros((1, 32, 32, 3)))
    image = np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32)
    assert explain.default_layer(model.apply, variables, image) == "blocks_1/norm1"
    cam = explain.grad_cam(model.apply, variables, image)
    assert cam.shape == (32, 32) and cam.max() == pytest.approx(1.0) and cam.min() >= 0.0
    tokens = jnp.arange(2 * 17 * 5, dtype=jnp.float32).reshape(2, 17, 5)  # class token + a 4x4 grid
    np.testing.assert_array_equal(methods.token_grid(tokens, (32, 32)), tokens[:, 1:].reshape(2, 4, 4, 5))
