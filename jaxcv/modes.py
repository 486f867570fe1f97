"""`--mode=eval` and `--mode=predict`: a trained (or converted) model evaluated or run on files."""

from __future__ import annotations

import glob
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
    """`--mode=predict`: runs the model on `config.predict.inputs` (a glob) and writes pictures."""
    workdir = Path(workdir)
    trainer = Trainer(config, workdir)
    checkpoints = ckpt.Checkpoints(workdir)
    start = trainer.initial_state(checkpoints, complete=True)
    state = start.state
    paths = sorted(glob.glob(config.predict.inputs))
    if not paths:
        raise FileNotFoundError(f"predict.inputs={config.predict.inputs!r} matches no file")
    outdir = Path(config.predict.outdir or workdir / "predict")
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"[jaxcv] predicting {len(paths)} image(s) with model {start.describe()} -> {outdir}", flush=True)
    variables = state.eval_variables()
    trainer.task.predict_files(state.apply_fn, variables, paths, outdir)
    checkpoints.close()
    return outdir
