"""Shared config pieces. Every file in `configs/` has `get_config(arg=None) -> ConfigDict` built from
these, so all configs have the same keys and an override with a typo fails (configs are locked).

Precedence of the starting point of a run: a checkpoint in the workdir, then `init_from` (a
`python -m jaxcv.convert` output or another workdir; `init_prefix` says where in the model its
parameters go, e.g. "backbone"), then scratch.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxcv.ops.conv import CONV_IMPLS

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped in `jaxcv/configs/`."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.py") if not p.name.startswith("_"))


def resolve_config_path(spec: str | Path) -> str:
    """`PATH[:ARG]` or `NAME[:ARG]` -> `PATH[:ARG]`: an existing file as it is, else a shipped config's name
    (`shapes_retinanet`, also `shapes_retinanet.py` or `configs/shapes_retinanet.py` outside a clone) ->
    its file in the installed package. Anything else is a FileNotFoundError listing the shipped names."""
    path, sep, arg = str(spec).partition(":")
    if Path(path).is_file():
        return str(spec)
    name = Path(path).name.removesuffix(".py")
    candidate = PACKAGED_CONFIGS / f"{name}.py"
    if Path(path).parent in (Path("."), Path("configs")) and candidate.is_file():
        return f"{candidate}{sep}{arg}"
    raise FileNotFoundError(f"config {path!r}: no such file and no shipped config of that name; shipped: "
                            f"{', '.join(packaged_configs())}")


def resolve_config_argv(argv: Sequence[str]) -> list[str]:
    """Command-line arguments with `--config=NAME[:ARG]` / `--config NAME[:ARG]` resolved to a file
    (`resolve_config_path`), before absl / ml_collections read them (they take a path)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config=") and not a.startswith("--config=-"):
            out[i] = "--config=" + resolve_config_path(a.split("=", 1)[1])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
    return out


def load_config_file(spec: str | Path, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """`configs/NAME.py[:ARG]` (or a shipped config's `NAME[:ARG]`) -> the file's `get_config(ARG)`, as
    `--config=` reads it, with `overrides` ({"data.num_train": 64, ...}) set on existing keys (a new key is a
    KeyError)."""
    path, _, arg = resolve_config_path(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    with config.unlocked():
        for key, value in (overrides or {}).items():
            set_path(config, key, value, must_exist=True)
    return config


def set_path(config: ml_collections.ConfigDict, key: str, value: Any, must_exist: bool = False) -> None:
    """Sets dotted `key` ("data.num_train") of `config` to `value`; `must_exist`: a new leaf is a KeyError."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    if must_exist and leaf not in node:
        raise KeyError(f"config has no key {key!r}")
    node[leaf] = value


def parse_config_arg(arg: str | None, allowed: Sequence[str] = ("smoke",)) -> frozenset[str]:
    """A config file's `:ARG` as its set of comma-separated words (`:frozen,smoke`); every config parses it
    this way, and an unknown word fails naming the ones that config knows."""
    words = frozenset(w for w in (arg or "").split(",") if w)
    unknown = sorted(words - set(allowed))
    if unknown:
        raise ValueError(f"unknown config argument(s) {unknown}; this config knows: {', '.join(allowed)}")
    return words


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.name="sgd"' -> ("optimizer.name", "sgd"): a `key=JSON value` command-line override."""
    key, _, value = text.partition("=")
    return key, json.loads(value)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = ""
    c.seed = 0
    c.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 params (mixed precision); "float64" checks numerics
    c.conv_impl = "auto"  # auto | xla | im2col: convolutions as matmuls on CPU (jaxcv.ops.conv)
    c.model = ml_collections.ConfigDict({"name": ""})
    c.data = ml_collections.ConfigDict(
        {
            "name": "",
            "image_size": 128,
            "num_classes": 0,  # 0 = take it from the dataset; otherwise checked against it
            "bad_input": "fail",  # or "skip": bad items are skipped and counted in the logs
            "num_threads": 4,
            "augment": {"hflip": True},
        }
    )
    c.batch_size = 16  # global, over all devices and processes
    c.eval_batch_size = 16
    c.num_train_steps = 1000
    c.log_every = 50
    c.eval_every = 0  # 0 = only at the end
    c.checkpoint_every = 500
    c.checkpoint = ml_collections.ConfigDict({"keep": 2, "best_metric": "", "best_mode": "max"})
    # Where else the scalars go (jaxcv.logs.MetricWriter): a Weights & Biases project ("" = none; `pip install wandb`)
    c.logging = ml_collections.ConfigDict({"wandb_project": ""})
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.01,
            "momentum": 0.9,
            "nesterov": False,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 1e-4,
            "clip_grad_norm": 0.0,
        }
    )
    c.schedule = ml_collections.ConfigDict(
        {
            "name": "warmup_cosine",
            "warmup_steps": 0,
            "warmup_init": 0.001,
            "boundaries": (),
            "decay_factor": 0.1,
            "end_factor": 0.0,
            "pct_start": 0.25,
            "div_factor": 25.0,
            "final_div_factor": 1e4,
        }
    )
    c.freeze = ()  # parameter-path prefixes not trained, e.g. ("backbone",)
    c.lr_multipliers = ml_collections.ConfigDict()  # {prefix: factor}, e.g. backbone=0.1
    c.init_from = ""
    c.init_prefix = ""
    c.skip_nonfinite = False  # True: drop updates with NaN/Inf instead of stopping
    # Exponential moving average of the weights (0 = off), evaluated and checkpointed with the state;
    # ema_tau ramps the decay up as ultralytics' ModelEMA (decay * (1 - exp(-step / tau))), 0 = constant.
    c.ema_decay = 0.0
    c.ema_tau = 2000.0
    # --mode=predict: inputs = comma-separated images, folders, globs, videos (.mp4/.avi/.mov), webcam
    # indices or stream URLs; stride keeps every n-th video frame; batch_size images per compiled call.
    c.predict = ml_collections.ConfigDict(
        {"inputs": "", "outdir": "", "score_thresh": 0.3, "stride": 1, "batch_size": 8}
    )
    # Evaluators, big_vision style: {name: {"type": registered evaluator, **its kwargs}} (jaxcv.tasks.base)
    c.evals = ml_collections.ConfigDict()
    return c


def detection_config(preset: str = "torchvision", head: str = "retinanet") -> ml_collections.ConfigDict:
    """Detection defaults: the task's keys here, the head's sections (`anchors`, `loss`, `postprocess`, ...)
    from the head named `head` (`jaxcv.detectors`), which states its own defaults. `preset` is the head's
    (RetinaNet: "torchvision" or "tf_model_garden", see `jaxcv.detectors.retinanet.RetinaNetHead`)."""
    from jaxcv.detectors import head_class

    c = base_config()
    c.task = "detection"
    c.head = head
    c.model = ml_collections.ConfigDict(
        {"name": "retinanet", "backbone": "resnet50", "fpn_channels": 256, "head_norm": False,
         "p6_from": "c5" if preset == "tf_model_garden" else "p5", "freeze_backbone_bn": True}
    )
    c.data.max_boxes = 32
    # "contiguous": class k = the k-th category in sorted id order (num_classes = #categories);
    # "category_id": class k = category id k (num_classes = max id + 1; torchvision's COCO detectors: 91)
    c.data.label_map = "contiguous"
    # mosaic: probability of YOLO's 4-image mosaic per training item (jaxcv.data.mosaic, 0 = off; ultralytics 1.0),
    # off again for the last close_mosaic epochs (ultralytics' close_mosaic, 10).
    c.data.augment = ml_collections.ConfigDict({"hflip": True, "scale_jitter": (), "photometric": False,
                                                "mosaic": 0.0, "close_mosaic": 0})
    # Model input (jaxcv.data.detection.make_detection_transform): normalize "imagenet" = (x / 255 - mean) / std
    # (torchvision) or "unit" = x / 255 in [0, 1] (darknet, ultralytics); pad_value the grey (0..255) of the
    # padding that makes the image square, -1 = the mean colour (0 after "imagenet", torchvision's padding).
    c.preprocess = ml_collections.ConfigDict({"normalize": "imagenet", "pad_value": -1.0})
    for section, defaults in head_class(head).default_config(preset).items():
        c[section] = defaults
    c.evals = ml_collections.ConfigDict({"coco": {"type": "coco"}})
    c.checkpoint.best_metric = "AP"
    return c


def segmentation_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "segmentation"
    c.model = ml_collections.ConfigDict({"name": "unet_resnet34", "upsample": "bilinear"})
    c.data.augment = ml_collections.ConfigDict({"hflip": True, "scale_jitter": ()})
    c.loss = ml_collections.ConfigDict(
        {"name": "ce_dice", "ce_weight": 1.0, "dice_weight": 1.0, "class_weights": ()}
    )
    c.evals = ml_collections.ConfigDict({"segmentation": {"type": "segmentation", "void_class": -1}})
    c.checkpoint.best_metric = "mIoU"
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 1e-4
    return c


def classification_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "classification"
    c.model = ml_collections.ConfigDict({"name": "resnet18"})
    c.data.augment = ml_collections.ConfigDict(
        {"hflip": True, "random_resized_crop": True, "crop_scale": (0.35, 1.0), "pad_crop": 0,
         "rotation": 0.0,  # fraction of a full turn, as Keras RandomRotation (0.1: +-36 degrees)
         "eval_crop_ratio": 0.0}  # eval: resize shorter side, centre crop S/ratio -> S (0 = plain resize)
    )
    c.multilabel = False
    c.loss = ml_collections.ConfigDict({"label_smoothing": 0.0})
    c.evals = ml_collections.ConfigDict({"classification": {"type": "classification"}})
    c.checkpoint.best_metric = "accuracy"
    return c


# --------------------------------------------------------------------------------------------------
# Pieces the shapes configs share (configs/shapes_*.py derive from these)
# --------------------------------------------------------------------------------------------------


def shapes_data(c: ml_collections.ConfigDict, segmentation: bool = False, **values: Any) -> None:
    """Sets `c.data` to the built-in synthetic shapes (`jaxcv.data.shapes`): 3 shape classes, 4096 train and
    256 held-out images of 128 px, 1-5 objects, seed 0; `values` override (`min_objects=2`, ...)."""
    c.data.name = "shapes_segmentation" if segmentation else "shapes"
    fields = {"image_size": 128, "num_train": 4096, "num_val": 256, "min_objects": 1, "max_objects": 5,
              "shape_classes": 3, "seed": 0, **values}
    for key, value in fields.items():
        c.data[key] = value


def cpu_recipe(c: ml_collections.ConfigDict, steps: int, warmup: int = 100) -> None:
    """The from-scratch recipe of the CPU-sized configs: AdamW 1e-3 (weight decay 1e-4), gradient norm
    clipped at 10, linear warmup then cosine decay over `steps`."""
    c.optimizer.update({"name": "adamw", "learning_rate": 1e-3, "weight_decay": 1e-4, "clip_grad_norm": 10.0})
    c.schedule.update({"name": "warmup_cosine", "warmup_steps": warmup})
    c.num_train_steps = steps


def smoke(c: ml_collections.ConfigDict, **values: Any) -> None:
    """The `:smoke` sizes every config shares (a seconds-long run for tests): 4 steps of batch 8 on 64
    train / 16 held-out items (where the dataset has such counts), logging and checkpointing every 2."""
    for key in ("num_train", "num_val"):
        if key in c.data:
            c.data[key] = 64 if key == "num_train" else 16
    c.update({"batch_size": 8, "eval_batch_size": 8, "num_train_steps": 4, "log_every": 2, "checkpoint_every": 2})
    c.schedule.warmup_steps = 1
    for key, value in values.items():
        set_path(c, key, value)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

# float64 checks numerics: the float32 init, then params and compute in float64; needs JAX_ENABLE_X64=1.
DTYPES = ("float32", "bfloat16", "float16", "float64")


def _fail(key: str, value: object, problem: str) -> None:
    raise ValueError(f"config.{key}={value!r}: {problem}")


def _int(config: ml_collections.ConfigDict, key: str, minimum: int) -> None:
    node, value = config, None
    for part in key.split("."):
        if part not in node:
            return
        node = value = node[part]
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, value, f"must be an integer >= {minimum}")
    if value < minimum:
        _fail(key, value, f"must be >= {minimum}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the task-independent parts of a config before anything is built or compiled.

    Raises ValueError naming the key (`config.a.b=value: problem`). Task-specific consistency (the
    dataset's classes, the detector's strides) is checked by each `Task.validate`; freeze and
    lr_multipliers prefixes are checked against the model's parameter paths by the Trainer.
    """
    import jax

    from jaxcv.optim import OPTIMIZERS, SCHEDULES

    for key, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("num_train_steps", 0), ("log_every", 1),
                         ("checkpoint_every", 1), ("eval_every", 0), ("seed", 0), ("checkpoint.keep", 1),
                         ("data.image_size", 1), ("data.num_classes", 0), ("data.num_threads", 1),
                         ("schedule.warmup_steps", 0), ("data.max_boxes", 1)):
        _int(config, key, minimum)
    devices = jax.device_count()
    for key in ("batch_size", "eval_batch_size"):
        if key in config and config[key] % devices:
            _fail(key, config[key], f"must be divisible by the number of devices ({devices}); "
                                    f"{jax.process_count()} process(es) x {jax.local_device_count()} local")
    if config.get("dtype", "float32") not in DTYPES:
        _fail("dtype", config.dtype, f"unknown; known: {', '.join(DTYPES)}")
    if config.get("dtype") == "float64" and not jax.config.jax_enable_x64:
        _fail("dtype", config.dtype, "needs 64-bit JAX: set JAX_ENABLE_X64=1 in the environment")
    if config.get("conv_impl", "auto") not in CONV_IMPLS:
        _fail("conv_impl", config.conv_impl, f"unknown; known: {', '.join(CONV_IMPLS)}")
    data = config.get("data") or {}
    if data.get("name"):
        from jaxcv.data import check_data_keys

        check_data_keys(data)
    if data.get("bad_input", "fail") not in ("fail", "skip"):
        _fail("data.bad_input", data.bad_input, "must be 'fail' or 'skip'")
    if not data.get("name"):
        _fail("data.name", data.get("name"), "no dataset given")
    if not config.get("model", {}).get("name"):
        _fail("model.name", config.get("model", {}).get("name"), "no model given")
    opt = config.get("optimizer") or {}
    if opt.get("name", "sgd") not in OPTIMIZERS:
        _fail("optimizer.name", opt.name, f"unknown optimizer; known: {', '.join(OPTIMIZERS)}")
    for key in ("learning_rate", "weight_decay", "clip_grad_norm", "momentum"):
        value = opt.get(key, 0.0)
        if value is not None and (not _number(value) or value < 0):
            _fail(f"optimizer.{key}", value, "must be a number >= 0")
    sched = config.get("schedule") or {}
    if sched.get("name", "constant") not in SCHEDULES:
        _fail("schedule.name", sched.name, f"unknown schedule; known: {', '.join(SCHEDULES)}")
    if any(not _number(b) for b in sched.get("boundaries", ()) or ()):
        _fail("schedule.boundaries", sched.boundaries, "must be a sequence of step numbers")
    ema = config.get("ema_decay", 0.0)
    if not _number(ema) or not 0.0 <= ema < 1.0:
        _fail("ema_decay", ema, "must be a number in [0, 1) (0 = no moving average)")
    ck = config.get("checkpoint") or {}
    if ck.get("best_mode", "max") not in ("max", "min"):
        _fail("checkpoint.best_mode", ck.best_mode, "must be 'max' or 'min'")
    freeze = config.get("freeze", ()) or ()
    if not isinstance(freeze, (tuple, list)) or not all(isinstance(f, str) for f in freeze):
        _fail("freeze", freeze, "must be a sequence of parameter-path prefixes, e.g. ('backbone',)")
    for prefix, factor in (config.get("lr_multipliers") or {}).items():
        if not _number(factor) or factor < 0:
            _fail(f"lr_multipliers.{prefix}", factor, "must be a number >= 0")
    init_from = config.get("init_from")
    if init_from:
        from pathlib import Path

        if not Path(init_from).exists():
            raise FileNotFoundError(f"config.init_from={init_from!r} does not exist")
