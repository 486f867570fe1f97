"""Convert published weights to an orbax checkpoint a config can name in `init_from`.

    python -m jaxcv.convert --arch resnet50 --weights resnet50.safetensors --out DIR [--kwargs '{...}']
    python -m jaxcv.convert --arch torchvision:mobilenet_v3_small --weights mnv3s.safetensors --out DIR
    python -m jaxcv.convert --arch timm:vit_small_patch16_224 --weights vit_s.safetensors --out DIR
    python -m jaxcv.convert --arch keras:mini_xception --weights xception.safetensors --out DIR
    python -m jaxcv.convert --arch darknet --cfg yolov3.cfg --weights yolov3.weights --out DIR
    python -m jaxcv.convert --arch ultralytics:yolov8n --weights yolov8n.safetensors --out DIR
    python -m jaxcv.convert --arch segment_anything --weights sam_vit_b.safetensors --out DIR \
        --kwargs '{"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12}'

`--arch` is a bare torchvision name (resnet18/34/50/101, retinanet_resnet50_fpn(_v2), vgg16_bn, alexnet,
mobilenet_v3_large, ...) or any importer key of `jaxcv.models.backbones.IMPORTERS` ("source:arch").
Writes `DIR/variables` (orbax StandardCheckpointer: `{'params', ...}`) and `DIR/model.json`: `{"arch",
"model", "kwargs", "weights"}` (a registered model name and its constructor kwargs) or, for importers that
build a module directly, `{"arch", "class", "kwargs", "weights"}` (the module's class and its fields).
`load_converted(DIR)` reads the variables back; `converted_model(DIR)` rebuilds the module.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from jaxcv.interop import ARCHS, abstract_variables, from_torchvision, import_weights, load_safetensors, model_config
from jaxcv.models import create_model

VARIABLES_DIR = "variables"
MODEL_JSON = "model.json"


def _importer_key(arch: str) -> str:
    """`--arch` -> an IMPORTERS key: "source:arch" as is, a bare name as torchvision's, "darknet" as is."""
    from jaxcv.models.backbones import IMPORTERS

    if ":" in arch or arch in IMPORTERS:
        return arch
    return f"torchvision:{arch}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "dtype") or isinstance(value, type):  # a dtype such as jnp.float32
        return str(np.dtype(value))
    raise TypeError(f"cannot record {type(value).__name__} {value!r} in model.json")


def _as_fields(value: Any) -> Any:
    """JSON lists back to tuples (linen modules are hashed)."""
    if isinstance(value, list):
        return tuple(_as_fields(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_fields(v) for k, v in value.items()}
    return value


def module_spec(module: nn.Module) -> dict[str, Any]:
    """{"class": "package.module.Class", "kwargs": {field: value}}: enough to rebuild `module` unbound."""
    kwargs = {f.name: _jsonable(getattr(module, f.name)) for f in dataclasses.fields(module)
              if f.init and f.name not in ("parent", "name")}
    return {"class": f"{type(module).__module__}.{type(module).__qualname__}", "kwargs": kwargs}


def convert(arch: str, weights: str | Path, out: str | Path, overwrite: bool = False, cfg: str | Path | None = None,
            **kwargs: Any) -> Path:
    """Converts `weights` for `arch` into `out`; returns `out`. `cfg`: the darknet .cfg (`arch="darknet"`).

    `kwargs` (JSON-serializable) override inferred model settings and are recorded in model.json.
    """
    out = Path(out).resolve()
    ckpt = out / VARIABLES_DIR
    if ckpt.exists() and not overwrite:
        raise FileExistsError(f"{ckpt} exists; pass overwrite=True (--overwrite) to replace it")
    if arch in ARCHS:
        state_dict = load_safetensors(weights)
        model_name, model_kwargs = model_config(arch, state_dict, **kwargs)
        _, variables = from_torchvision(arch, state_dict, **kwargs)
        meta: dict[str, Any] = {"arch": arch, "model": model_name, "kwargs": model_kwargs}
    else:
        key = _importer_key(arch)
        if key == "darknet":
            if cfg is None:
                raise ValueError("--arch darknet needs --cfg (the network's .cfg file)")
            module, variables = import_weights(key, cfg, weights, **kwargs)
            # The sections are no JSON: record the cfg, rebuilt by the `darknet` model builder (jaxcv.detectors.yolov3)
            meta = {"arch": key, "model": "darknet", "kwargs": {"cfg": str(Path(cfg).resolve()), **kwargs}}
        else:
            module, variables = import_weights(key, load_safetensors(weights), **kwargs)
            meta = {"arch": key, **module_spec(module)}
    meta["weights"] = str(weights)
    out.mkdir(parents=True, exist_ok=True)
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(ckpt, variables, force=overwrite)
        checkpointer.wait_until_finished()
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
    if meta.get("model") == "darknet":
        import jaxcv.detectors.yolov3  # noqa: F401  (registers the `darknet` model)
    if "model" in meta:
        return create_model(meta["model"], **{**meta["kwargs"], **overrides})
    module_name, _, cls_name = meta["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**{**_as_fields(meta["kwargs"]), **overrides})


def load_converted(directory: str | Path) -> dict[str, Any]:
    """Variables written by `convert`, restored with their exact tree."""
    import orbax.checkpoint as ocp

    directory = Path(directory).resolve()
    meta = read_model_json(directory)
    size = int(meta.get("kwargs", {}).get("img_size") or meta.get("kwargs", {}).get("image_size") or 64)
    abstract = abstract_variables(converted_model(directory), size)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory / VARIABLES_DIR, abstract)


def main(argv: Sequence[str] | None = None) -> None:
    from jaxcv import runtime

    runtime.configure()  # the entry points' CPU settings (import jaxcv alone changes nothing)
    import jaxcv.models  # noqa: F401  (registers every importer)
    from jaxcv.models.backbones import IMPORTERS

    parser = argparse.ArgumentParser(prog="python -m jaxcv.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True,
                        help=f"one of {', '.join(ARCHS)} or an importer key: {', '.join(IMPORTERS.names())}")
    parser.add_argument("--weights", required=True, help="state dict as .safetensors (darknet: the .weights file)")
    parser.add_argument("--cfg", default=None, help="darknet: the network's .cfg file")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--kwargs", default="{}", help='JSON object of model kwargs, e.g. {"num_anchors": 9}')
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        parser.error("--kwargs must be a JSON object")
    if args.arch not in ARCHS and _importer_key(args.arch) not in IMPORTERS:
        parser.error(f"unknown --arch {args.arch!r}; known: {', '.join([*ARCHS, *IMPORTERS.names()])}")
    out = convert(args.arch, args.weights, args.out, overwrite=args.overwrite, cfg=args.cfg, **kwargs)
    print(f"wrote {out / VARIABLES_DIR} and {out / MODEL_JSON}")


if __name__ == "__main__":
    main()
