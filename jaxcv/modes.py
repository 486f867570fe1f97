"""`--mode=eval` and `--mode=predict`: a trained (or converted) model evaluated, or run on images and video."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from jaxcv import checkpoint as ckpt
from jaxcv.train import Trainer, jsonable


def evaluate_only(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """`--mode=eval`: evaluates the workdir's latest checkpoint (or `init_from`)."""
    workdir = Path(workdir)
    trainer = Trainer(config, workdir)
    checkpoints = ckpt.Checkpoints(workdir)
    start = trainer.initial_state(checkpoints, complete=True)
    state = start.state
    print(f"[jaxcv] evaluating: {start.describe()}", flush=True)
    metrics, evaluator = trainer.evaluate(state)
    out = workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2))
    evaluator.save(out)
    print("[jaxcv] eval: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    checkpoints.close()
    return metrics


def predict(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """`--mode=predict`: runs the model on `config.predict.inputs` (comma-separated images, folders, globs,
    videos, webcam indices or stream URLs; see `jaxcv.predict.resolve_inputs`) and writes to
    `predict.outdir` (default WORKDIR/predict): per image the task's pictures and JSON (`Task.predict_files`),
    per video `{stem}_pred.mp4` and `{stem}.jsonl` (`Predictor.predict_video`, every `predict.stride`-th
    frame). Images and frames share one compiled function of `predict.batch_size` images."""
    from jaxcv.predict import Predictor, VideoSource, check_stride, is_stream, resolve_inputs

    workdir = Path(workdir)
    inputs = resolve_inputs(config.predict.inputs)  # a bad path fails before any model is built
    stride = check_stride(config.predict.stride)
    for v in inputs.videos:  # a missing or undecodable video file fails now, naming it
        if not is_stream(v):
            VideoSource(v).cap.release()
    predictor = Predictor.from_workdir(config, workdir)
    outdir = Path(config.predict.outdir or workdir / "predict")
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"[jaxcv] predicting {len(inputs.images)} image(s) and {len(inputs.videos)} video(s) with model "
          f"{predictor.description} -> {outdir}", flush=True)
    task = predictor.task
    if inputs.images:
        task.predict_files(predictor.apply_fn, predictor.variables, inputs.images, outdir, predictor=predictor)
    for video in inputs.videos:
        predictor.predict_video(video, outdir, stride)
    print(f"[jaxcv] predict: {predictor.traces} compilation(s) for all inputs", flush=True)
    return outdir
