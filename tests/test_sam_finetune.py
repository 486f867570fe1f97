"""Fine-tuning SAM's mask decoder through the normal trainer (jaxcv/tasks/promptable_segmentation.py): the image
embedding cache equals the uncached path and is reused or rebuilt by its key; only the decoder trains while the
encoders are frozen; and the `:smoke` SAM learns box-prompted masks on the shapes (mIoU before and after)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, TEST_CACHE
from flax.traverse_util import flatten_dict

from jaxcv import checkpoint as ckpt
from jaxcv.config import load_config_file, set_path
from jaxcv.sam import embedding_cache
from jaxcv.tasks.promptable_segmentation import cache_image
from jaxcv.train import Trainer, _to_global

SMOKE = "configs/shapes_sam_finetune.py:smoke"


def smoke(**overrides):
    c = load_config_file(SMOKE)
    with c.unlocked():
        for k, v in {"data.num_train": 12, "data.num_val": 6, "batch_size": 4, "eval_batch_size": 4,
                     "data.num_threads": 2, **overrides}.items():
            set_path(c, k, v)
    return c


def start(c, workdir: Path):
    trainer = Trainer(c, workdir)
    return trainer, trainer.initial_state(ckpt.Checkpoints(workdir)).state


def first_batch(trainer: Trainer):
    host = next(trainer.loader("train", train=True).train_batches(0))
    return host, _to_global(host, trainer.task.device_keys, trainer.data_sharding)


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(tree), sep="/").items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One train step and one evaluation of the same smoke run, with and without the embedding cache."""
    out = {}
    for name, cached in (("cached", True), ("uncached", False)):
        workdir = tmp_path_factory.mktemp(name)
        trainer, state = start(smoke(embedding_cache=cached), workdir)
        before = flat(state.params)
        metrics, _ = trainer.evaluate(state)
        host, batch = first_batch(trainer)
        state, step_metrics = trainer.jit_train_step(state, batch)
        out[name] = {"workdir": workdir, "trainer": trainer, "before": before, "after": flat(state.params),
                     "eval": metrics, "train": jax.device_get(step_metrics), "host": host}
    return out


def test_cached_path_equals_uncached(runs):
    a, b = runs["cached"], runs["uncached"]
    assert a["trainer"].task.device_keys[0] == "image_embeddings" and "image_embeddings" in a["host"]
    assert b["trainer"].task.device_keys[0] == "image" and "image_embeddings" not in b["host"]
    for key in ("boxes", "gt_masks", "box_mask", "image"):  # the same prompts, flips and masks
        np.testing.assert_array_equal(a["host"][key], b["host"][key], err_msg=key)
    for k in a["train"]:
        np.testing.assert_allclose(a["train"][k], b["train"][k], rtol=2e-5, atol=1e-6, err_msg=k)
    assert float(a["train"]["loss"]) > 0
    for k in a["eval"]:
        np.testing.assert_allclose(a["eval"][k], b["eval"][k], rtol=1e-5, atol=1e-6, err_msg=k)
    worst = max(float(np.abs(a["after"][k] - b["after"][k]).max() / (np.abs(b["after"][k]).max() + 1e-12))
                for k in b["after"])
    assert worst < 1e-4, worst


def test_cache_holds_both_orientations_of_the_training_images(runs):
    """Slot 1 of a training item is the embedding of its flipped image; the first batch flips some items."""
    run = runs["cached"]
    task = run["trainer"].task
    src = task.source("train")
    assert src.cache.array.shape == (12, 2, 8, 8, 256) and task.source("validation").cache.flips == 1
    from flax.traverse_util import unflatten_dict

    model, params = task.model, {"params": unflatten_dict(run["before"], sep="/")}
    images = np.stack([cache_image(src.source[0], 64, False), cache_image(src.source[0], 64, True)])
    emb = np.asarray(jax.jit(lambda p, x: model.apply(p, x)["image_embeddings"])(params, images))
    np.testing.assert_allclose(src.cache.row(0), emb, rtol=0, atol=1e-5 * np.abs(emb).max())
    flipped = [i for i in range(len(src)) if any(np.array_equal(cache_image(src.source[i], 64, True), im)
                                                 for im in run["host"]["image"])]
    assert flipped, "no flipped item in the first batch: the flip slot is not exercised"


def test_only_the_mask_decoder_changes_with_frozen_encoders(runs):
    run = runs["cached"]
    before, after = run["before"], run["after"]
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith(("image_encoder/", "prompt_encoder/"))]
    assert frozen and not changed & set(frozen), sorted(changed & set(frozen))[:5]
    trained = [k for k in before if k.startswith(("mask_decoder/transformer/", "mask_decoder/output_upscaling",
                                                  "mask_decoder/output_hypernetworks_mlps_0/",
                                                  "mask_decoder/iou_prediction_head/"))]
    assert len(trained) > 40 and set(trained) <= changed, sorted(set(trained) - changed)[:5]
    assert changed <= {k for k in before if k.startswith("mask_decoder/")}


def test_a_second_run_reuses_the_cache_and_new_weights_rebuild_it(runs, tmp_path: Path):
    workdir = runs["cached"]["workdir"]
    npy = workdir / "embeddings" / "train.npy"
    stamp, builds = npy.stat().st_mtime_ns, dict(embedding_cache.BUILDS)
    trainer, state = start(smoke(), workdir)
    assert dict(embedding_cache.BUILDS) == builds and npy.stat().st_mtime_ns == stamp
    key = json.loads((workdir / "embeddings" / "train.json").read_text())["key"]
    # other encoder weights: a stale cache, rebuilt (both splits)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.01 if "patch_embed" in jax.tree_util.keystr(p) else x, state.params)
    trainer.task.prepare(state.replace(params=params), workdir)
    assert embedding_cache.BUILDS["train"] == builds["train"] + 1
    assert embedding_cache.BUILDS["validation"] == builds["validation"] + 1
    assert json.loads((workdir / "embeddings" / "train.json").read_text())["key"] != key
    assert not np.allclose(trainer.task.source("train").cache.row(0), runs["cached"]["trainer"].task.source(
        "train").cache.row(0))
    # another data config (more validation images): only that split is rebuilt
    trainer, state = start(smoke(**{"data.num_val": 8}), workdir)
    assert embedding_cache.BUILDS["validation"] == builds["validation"] + 2
    assert trainer.task.source("validation").cache.array.shape[0] == 8


def test_cache_off_when_the_encoder_trains(tmp_path: Path):
    from jaxcv.tasks import create_task

    task = create_task(smoke(freeze=("prompt_encoder",)))
    assert not task.use_cache and task.device_keys[0] == "image"
    assert create_task(smoke()).use_cache


@pytest.mark.slow
def test_finetuning_beats_zero_shot(tmp_path: Path):
    """The `:smoke` SAM (random frozen 2-block encoder, patch 8 on 64 px shapes) through `python -m jaxcv.main`:
    a 0-step run evaluates the zero-shot model (the random decoder's masks miss the shapes: mIoU about 0.01),
    then the same workdir trains it (resuming the step-0 checkpoint, reusing the embedding cache) for the
    steps below, box prompts only, SAM's loss. The margin: a mask filling the prompt box would already score
    about 0.7 on these shapes (squares 1, discs pi/4, triangles 1/2), so 0.25 above zero-shot is a model that
    has learnt to place masks at the prompt, and far outside the evaluation's noise (74 prompts: the standard
    error of their mean IoU is below 0.05). Measured on the dev CPU: see benchmarks/README.md (SAM)."""
    base = [sys.executable, "-m", "jaxcv.main", f"--config={SMOKE}", f"--workdir={tmp_path}",
            "--config.data.num_train=256", "--config.data.num_val=32", "--config.batch_size=4",
            "--config.log_every=50", "--config.checkpoint_every=100000"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", JAXCV_COMPILATION_CACHE=TEST_CACHE)

    def run(*args: str) -> dict:
        proc = subprocess.run([*base, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return json.loads((tmp_path / "eval" / "metrics.json").read_text()), proc.stdout

    before, out = run("--config.num_train_steps=0")
    assert "embeddings: computed" in out, out
    stamp = (tmp_path / "embeddings" / "train.npy").stat().st_mtime_ns
    after, out = run(f"--config.num_train_steps={STEPS}")
    assert "embeddings: reused" in out and (tmp_path / "embeddings" / "train.npy").stat().st_mtime_ns == stamp
    assert before["num_prompts"] == after["num_prompts"] > 60
    print(f"mIoU zero-shot {before['mIoU']:.4f} -> fine-tuned {after['mIoU']:.4f}")
    assert after["mIoU"] > before["mIoU"] + 0.25, (before, after)


STEPS = 350


def test_export_gives_a_predictor_with_the_finetuned_weights(runs, tmp_path: Path):
    """`export_sam` writes the trained parameters as a SAM conversion: `jaxcv.sam.Predictor` on it reproduces the
    trained model's box-prompted logits and IoU on a held-out image (what `python -m jaxcv.sam --weights` uses)."""
    from flax.traverse_util import unflatten_dict

    from jaxcv.convert import converted_model, load_converted
    from jaxcv.sam import Predictor
    from jaxcv.tasks.promptable_segmentation import export_sam

    run = runs["cached"]
    task = run["trainer"].task
    params = unflatten_dict(run["after"], sep="/")
    out = export_sam(task, params, tmp_path / "exported")
    module, variables = converted_model(out), load_converted(out)
    loaded = flat(variables["params"])
    assert loaded.keys() == run["after"].keys()
    for k, v in run["after"].items():
        np.testing.assert_array_equal(loaded[k], v, err_msg=k)
    ex = task.source("validation").source[0]
    box = np.asarray(ex["boxes"][0], np.float32)
    ref = task.model.apply({"params": params}, cache_image(ex, 64, False)[None], box[None, None])
    predictor = Predictor(module, variables)
    predictor.set_image(np.asarray(ex["image"]))
    masks, iou, low = predictor.predict(box=box, multimask_output=False)
    want = np.asarray(ref["low_res_logits"])[0, 0]
    np.testing.assert_allclose(low, want, rtol=0, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(iou, np.asarray(ref["iou_predictions"])[0, 0], rtol=0, atol=1e-5)
    assert masks.shape == (1, *np.asarray(ex["image"]).shape[:2]) and masks.dtype == bool


def test_box_and_point_prompts_as_tokens_equal_sam_and_train(tmp_path: Path):
    """`embed_tokens` gives a box exactly `embed_boxes`' corner tokens and a lone point exactly `embed_points`
    with SAM's padding; with `prompts.point_prob=1` every training prompt is a point inside its own mask, the
    evaluation's are still the boxes, and a train step on the token path updates the decoder."""
    import jax.numpy as jnp

    from jaxcv.tasks import create_task

    trainer, state = start(smoke(embedding_cache=False, **{"prompts.point_prob": 1.0}), tmp_path)
    task = trainer.task
    model, variables = task.model, {"params": state.params}
    box = jnp.array([[3.0, 5.0, 30.0, 41.0]])
    pt = jnp.array([[[17.0, 9.0]]])

    def enc(mdl, method, *a):
        return mdl.apply(variables, *a, method=lambda m, *x: getattr(m.prompt_encoder, method)(*x))

    np.testing.assert_array_equal(enc(model, "embed_tokens", box.reshape(1, 2, 2), jnp.array([[2, 3]])),
                                  enc(model, "embed_boxes", box))
    np.testing.assert_array_equal(
        enc(model, "embed_tokens", jnp.concatenate([pt, jnp.zeros((1, 1, 2))], 1), jnp.array([[1, -1]])),
        model.apply(variables, pt, jnp.array([[1]]), True, method=lambda m, p, lab, pad:
                    m.prompt_encoder.embed_points(p, lab, pad)))
    host, batch = first_batch(trainer)
    real = host["box_mask"]
    assert (host["prompt_labels"][real] == [1, -1]).all() and (host["prompt_labels"][~real] == [2, 3]).all()
    b, k = np.nonzero(real)
    xy = host["prompt_points"][b, k, 0].astype(int)
    assert host["gt_masks"][b, k, xy[:, 1], xy[:, 0]].all(), "a point prompt outside its instance's mask"
    ev = next(trainer.loader("validation", train=False).eval_batches())
    assert (np.asarray(ev["prompt_labels"]) == [2, 3]).all()
    before = flat(state.params)  # the step donates `state`
    new_state, metrics = trainer.jit_train_step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    after = flat(new_state.params)
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("mask_decoder/"))
    with pytest.raises(ValueError, match="prompts.point_prob"):
        create_task(smoke(**{"prompts.point_prob": 1.5})).validate()
