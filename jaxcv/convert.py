"""Convert torchvision safetensors weights to an orbax checkpoint a config can name in `init_from`.

    python -m jaxcv.convert --arch resnet50 --weights resnet50.safetensors --out DIR [--kwargs '{...}']

writes `DIR/variables` (orbax StandardCheckpointer: `{'params', 'batch_stats'}`) and `DIR/model.json`
(`{"arch", "model", "kwargs", "weights"}`: the jaxcv model name and constructor kwargs that
`create_model(model, **kwargs)` needs to use these variables). `load_converted(DIR)` reads them back.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn

from jaxcv.interop import ARCHS, abstract_variables, from_torchvision, load_safetensors, model_config
from jaxcv.models import create_model

VARIABLES_DIR = "variables"
MODEL_JSON = "model.json"


def convert(arch: str, weights: str | Path, out: str | Path, overwrite: bool = False, **kwargs: Any) -> Path:
    """Converts `weights` (torchvision state dict in safetensors) for `arch` into `out`; returns `out`.

    `kwargs` (JSON-serializable) override inferred model settings and are recorded in model.json.
    """
    out = Path(out).resolve()
    ckpt = out / VARIABLES_DIR
    if ckpt.exists() and not overwrite:
        raise FileExistsError(f"{ckpt} exists; pass overwrite=True (--overwrite) to replace it")
    state_dict = load_safetensors(weights)
    model_name, model_kwargs = model_config(arch, state_dict, **kwargs)
    _, variables = from_torchvision(arch, state_dict, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(ckpt, variables, force=overwrite)
        checkpointer.wait_until_finished()
    meta = {"arch": arch, "model": model_name, "kwargs": model_kwargs, "weights": str(weights)}
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_model_json(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {directory} is not a jaxcv.convert output")
    return json.loads(path.read_text())


def converted_model(directory: str | Path, **overrides: Any) -> nn.Module:
    """The model described by `directory/model.json` (e.g. `dtype=jnp.bfloat16` as override)."""
    meta = read_model_json(directory)
    return create_model(meta["model"], **{**meta["kwargs"], **overrides})


def load_converted(directory: str | Path) -> dict[str, Any]:
    """Variables `{'params', 'batch_stats'}` written by `convert`, restored with their exact tree."""
    import orbax.checkpoint as ocp

    directory = Path(directory).resolve()
    abstract = abstract_variables(converted_model(directory))
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory / VARIABLES_DIR, abstract)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxcv.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--weights", required=True, help="torchvision state dict as .safetensors")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--kwargs", default="{}", help='JSON object of model kwargs, e.g. {"num_anchors": 9}')
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        parser.error("--kwargs must be a JSON object")
    out = convert(args.arch, args.weights, args.out, overwrite=args.overwrite, **kwargs)
    print(f"wrote {out / VARIABLES_DIR} and {out / MODEL_JSON}")


if __name__ == "__main__":
    main()
