"""The task-agnostic trainer, shaped like flax `examples/imagenet`.

`create_train_state`, `train_step`, `eval_step` and `train_and_evaluate(config, workdir)`. Steps
are jitted once over a `jax.sharding.Mesh` of all devices: the batch is sharded on the `data` axis,
the state is replicated and donated. Under jit the loss is computed on the global batch, so
normalizers (e.g. the number of foreground anchors) are global across devices and hosts.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcv import checkpoint as ckpt
from jaxcv.config import validate_config
from jaxcv.data.loader import Loader
from jaxcv.logs import EvalProgress, MetricWriter, ProfileWindow, Progress, parse_profile_steps, validate_logging
from jaxcv.ops.conv import set_conv_impl
from jaxcv.optim import create_optimizer, create_schedule
from jaxcv.preemption import Preempted, Preemption
from jaxcv.state import RNG_IMPL, Start, TrainState, abstract, check_complete, replace_from_tree, savable
from jaxcv.tasks import create_task
from jaxcv.tasks.base import Task

# How often each step function was traced (each trace is one XLA compilation); tests check that one
# compilation serves a whole run, whatever the number of ground-truth boxes per image.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient."""


def create_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes; the batch is split along `data`."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def jit_full_opt(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """`jax.jit` compiled at full XLA optimization whatever XLA_FLAGS says (e.g. the tests' -O0): for model
    inits, whose random-number code runs many times slower unoptimized."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 3}, **kwargs)


def create_train_state(
    config: ml_collections.ConfigDict, task: Task, rng: jax.Array, mesh: Mesh
) -> TrainState:
    """Initializes the model and optimizer, replicated over the mesh."""
    model = task.create_model()
    init_rng, dropout_rng = jax.random.split(rng)

    def init(key):
        variables = model.init({"params": key, "dropout": key}, jnp.asarray(task.dummy_input()), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        if config.dtype == "float64":  # checking numerics: the float32 run's init, then all in float64
            params, batch_stats = jax.tree.map(lambda x: x.astype(jnp.float64), (params, batch_stats))
        return params, batch_stats

    # On one device, then copied to all: a jit with replicated outputs would run the whole init (random
    # numbers for every parameter) on every device.
    replicated = NamedSharding(mesh, P())
    params, batch_stats = jax.device_put(jax.device_get(jit_full_opt(init)(init_rng)), replicated)
    tx = create_optimizer(config, params)
    return jax.jit(
        lambda p, b: TrainState.create(apply_fn=model.apply, params=p, tx=tx, batch_stats=b, rng=dropout_rng,
                                       ema=_ema_init(config, p, b)),
        out_shardings=replicated,
    )(params, batch_stats)


def _ema_init(config: ml_collections.ConfigDict, params: Any, batch_stats: Any) -> dict[str, Any]:
    """The EMA's start: a copy of the initial variables when `config.ema_decay` > 0, else {} (none kept)."""
    if not config.ema_decay:
        return {}
    return jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})


def ema_update(ema: dict[str, Any], params: Any, batch_stats: Any, step: jax.Array, decay: float,
               tau: float) -> dict[str, Any]:
    """ema <- d * ema + (1 - d) * current, d = decay * (1 - exp(-step / tau)): ultralytics' ModelEMA ramp (tau
    2000 there), so the average follows the weights closely early on; `tau=0` is a constant `decay`. BatchNorm
    statistics are averaged too, as ModelEMA averages every floating-point buffer."""
    d = decay * (1.0 - jnp.exp(-step.astype(jnp.float32) / tau)) if tau > 0 else jnp.float32(decay)
    current = {"params": params, "batch_stats": batch_stats}
    return jax.tree.map(lambda e, x: (d * e + (1.0 - d) * x).astype(e.dtype), ema, current)


def train_step(
    state: TrainState, batch: dict[str, jax.Array], *, task: Task, skip_nonfinite: bool = False,
    ema_decay: float = 0.0, ema_tau: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on the global batch. Returns the new state and scalar metrics.

    A non-finite loss or gradient sets `metrics['finite'] = 0`; with `skip_nonfinite` the update
    is then dropped (state unchanged but for the step counter). With `ema_decay` > 0 the weights' moving
    average (`state.ema`) is updated too (`ema_update`).
    """
    TRACE_COUNTS["train_step"] += 1
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, mutated = state.apply_fn(
            variables, **task.model_inputs(batch), train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng}
        )
        loss, terms = task.loss(outputs, batch)
        return loss, (terms, mutated.get("batch_stats", state.batch_stats))

    (loss, (terms, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    if ema_decay:
        new_state = new_state.replace(
            ema=ema_update(state.ema, new_state.params, new_state.batch_stats, new_state.step, ema_decay, ema_tau))
    if skip_nonfinite:
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), new_state, state.replace(step=state.step + 1)
        )
    metrics = {"loss": loss, **terms, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, task: Task) -> dict[str, jax.Array]:
    """Model outputs in inference mode, turned into the task's fixed-shape predictions."""
    TRACE_COUNTS["eval_step"] += 1
    outputs = state.apply_fn(state.eval_variables(), **task.model_inputs(batch), train=False)
    return task.predict(outputs, batch)


def _to_global(batch: dict[str, np.ndarray], keys: tuple[str, ...], sharding: NamedSharding):
    """This process's batch slice -> global arrays sharded over `data` (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in keys if k in batch}


def _to_host(tree: Any) -> Any:
    """Gathers batch-sharded outputs of all processes to numpy on every process."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


class Trainer:
    """Holds the compiled steps, loaders and state for one run (used by `train_and_evaluate`)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path):
        validate_config(config)  # generic checks, before any dataset is built or anything compiles
        set_conv_impl(config.conv_impl)  # read when the steps are traced
        self.config = config
        self.workdir = Path(workdir)
        self.task = create_task(config)
        self.task.validate()
        self.task.evaluator_specs()  # unknown evaluator types fail here, before compiling
        self._check_param_prefixes()
        self.mesh = create_mesh()
        self.data_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())
        if config.batch_size % jax.device_count():
            raise ValueError(
                f"batch_size={config.batch_size} must be divisible by the number of devices "
                f"({jax.device_count()})"
            )
        self.jit_train_step = jax.jit(
            functools.partial(
                train_step, task=self.task, skip_nonfinite=bool(config.skip_nonfinite),
                ema_decay=float(config.ema_decay), ema_tau=float(config.ema_tau),
            ),
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )
        self.jit_eval_step = jax.jit(
            functools.partial(eval_step, task=self.task),
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=self.data_sharding,
        )

    def _check_param_prefixes(self) -> None:
        """`freeze`/`lr_multipliers` prefixes must name parameters: checked on the parameter shapes
        (`jax.eval_shape` traces the init, nothing compiles) so a typo fails before compilation."""
        if not (self.config.freeze or self.config.lr_multipliers):
            return
        model = self.task.create_model()
        dummy = self.task.dummy_input()

        def init_params():  # the key is made inside: even creating one eagerly would compile
            key = jax.random.key(0, impl=RNG_IMPL)
            return model.init({"params": key, "dropout": key}, dummy, train=False)["params"]

        shapes = jax.eval_shape(init_params)
        try:
            create_optimizer(self.config, shapes)
        except ValueError as e:
            raise ValueError(f"{e}; top-level parameter names: {', '.join(sorted(shapes))}") from e

    def loader(self, split: str, train: bool) -> Loader:
        cfg = self.config
        return Loader(
            self.task.source(split),
            self.task.make_transform(train),
            global_batch_size=cfg.eval_batch_size if not train else cfg.batch_size,
            seed=cfg.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            bad_input=cfg.data.bad_input,
            num_threads=cfg.data.num_threads,
        )

    def initial_state(self, checkpoints: ckpt.Checkpoints, complete: bool = False) -> Start:
        """`_initial_state`, then the task's host-side preparation that needs the weights (`Task.prepare`)."""
        start = self._initial_state(checkpoints, complete)
        self.task.prepare(start.state, self.workdir)
        return start

    def _initial_state(self, checkpoints: ckpt.Checkpoints, complete: bool = False) -> Start:
        """Precedence: the workdir's checkpoint, then `config.init_from`, then scratch.

        `complete` (evaluation, prediction): the model must come whole from a checkpoint or
        `init_from`; a variable left at its random init (a head of another class count, a prefix that
        covers only the backbone) or no source at all raises instead of giving a meaningless number.
        """
        state = create_train_state(self.config, self.task, jax.random.key(self.config.seed, impl=RNG_IMPL), self.mesh)
        restored = checkpoints.restore_latest(abstract(state))
        if restored is not None:
            tree, step = restored
            return Start(replace_from_tree(state, tree, self.replicated), "checkpoint",
                         f"resumed from {self.workdir}/checkpoints/{step}")
        if self.config.init_from:
            source = ckpt.load_variables(self.config.init_from)
            prefix = self.config.init_prefix
            params, report = ckpt.merge_pretrained(state.params, source["params"], prefix)
            stats, stats_report = ckpt.merge_pretrained(state.batch_stats, source.get("batch_stats", {}), prefix)
            if not report["loaded"]:
                raise ValueError(
                    f"init_from={self.config.init_from!r} loaded no parameter under prefix {prefix!r}; "
                    f"its top-level keys: {sorted(source['params'])}"
                )
            if complete:
                check_complete(self.config, state, report, stats_report)
            params, stats = jax.device_put((params, stats), self.replicated)
            state = state.replace(params=params, batch_stats=stats, ema=_ema_init(self.config, params, stats))
            return Start(state, "init_from",
                         f"initialized from {self.config.init_from} ({ckpt.summarize_report(report)})")
        if complete:
            raise FileNotFoundError(
                f"nothing to evaluate: {self.workdir} has no checkpoint and config.init_from is not set"
            )
        return Start(state, "scratch", "initialized from scratch")

    def evaluate(
        self, state: TrainState, split: str = "validation", stop: Callable[[], bool] | None = None
    ) -> tuple[dict[str, float], Any]:
        """Metrics of `state` on `split`. `stop()` is asked before each batch; True raises `Preempted`.
        Process 0 prints a progress line with an ETA (`EvalProgress`)."""
        evaluator = self.task.evaluator()
        loader = self.loader(split, train=False)
        progress = EvalProgress(-(-len(loader) // loader.global_batch_size), f"eval {split}",
                                enabled=jax.process_index() == 0)
        for i, batch in enumerate(loader.eval_batches(), 1):
            if stop is not None and stop():
                raise Preempted(f"evaluation of {split!r} interrupted")
            preds = self.jit_eval_step(state, _to_global(batch, self.task.device_keys, self.data_sharding))
            host_batch = _to_host(_to_global(batch, tuple(batch), self.data_sharding))
            evaluator.update(host_batch, _to_host(preds))
            progress.update(i)
        return evaluator.result(), evaluator


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    host = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in host])) for k in host[0] if k != "finite"}
    skipped = sum(1 for h in host if not float(h["finite"]))
    if skipped:
        out["skipped_updates"] = float(skipped)
    return out


def _check_finite(step: int, metrics: dict[str, Any], skip: bool = False) -> None:
    """Raises NonFiniteLossError naming the step and the loss terms (or, with `skip`, warns: the
    update was already dropped inside the step)."""
    m = jax.device_get(metrics)
    if not float(m["finite"]):
        if skip:
            logging.warning("non-finite loss or gradient at step %d: update skipped", step)
            return
        terms = ", ".join(f"{k}={float(v):.6g}" for k, v in m.items() if k != "finite")
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step}: {terms}. The last good checkpoint is kept; "
            "lower the learning rate, enable optimizer.clip_grad_norm, or set skip_nonfinite=True."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       profile_steps: str = "") -> dict[str, float]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints) and returns the final eval
    metrics, also written to `workdir/eval/metrics.json`. `profile_steps` ("START:END", main.py's
    `--profile_steps`) writes a `jax.profiler` trace of those steps to `workdir/profile` (`ProfileWindow`)."""
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    profile = parse_profile_steps(profile_steps, config.num_train_steps)  # bad values fail before compiling
    validate_logging(config, check_import=is_main)
    workdir.mkdir(parents=True, exist_ok=True)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    trainer = Trainer(config, workdir)
    task = trainer.task
    train_loader = trainer.loader("train", train=True)  # an empty or unreadable split fails before compiling
    trainer.loader("validation", train=False)
    cc = config.checkpoint
    checkpoints = ckpt.Checkpoints(
        workdir, keep=cc.keep, best_metric=cc.best_metric or None, mode=cc.best_mode
    )
    begin = trainer.initial_state(checkpoints)
    state = begin.state
    start = int(jax.device_get(state.step))
    print(f"[jaxcv] {task.name}: {begin.describe()}; step {start} of {config.num_train_steps} "
          f"on {jax.device_count()} device(s)", flush=True)
    writer = MetricWriter(workdir, enabled=is_main,
                          wandb_project=(config.get("logging") or {}).get("wandb_project", ""))
    progress = Progress(config.num_train_steps, start)
    # The logged learning rate: the optimizer's schedule (jaxcv.optim) on the host, at the step count the
    # logged step's update used (optax counts updates from 0), so the jitted step is untouched.
    lr_schedule = create_schedule(config.schedule, float(config.optimizer.learning_rate), int(config.num_train_steps))
    profile_dir = workdir / "profile" if is_main else workdir / "profile" / f"process_{jax.process_index()}"
    batches = train_loader.train_batches(start)
    history: list[dict[str, Any]] = []
    skip = bool(config.skip_nonfinite)
    pending: tuple[int, dict[str, Any]] | None = None
    step = start
    t_log = time.perf_counter()
    eval_metrics: dict[str, float] = {}
    with (Preemption(sync=jax.process_count() > 1) as preempt, ProfileWindow(profile, profile_dir) as profiler,
          checkpoints):  # an error waits for the save in progress (async): the last good checkpoint stays
        while step < config.num_train_steps:
            profiler.before_step(step)
            batch = _to_global(next(batches), task.device_keys, trainer.data_sharding)
            if step == start:
                t_compile = time.perf_counter()
            state, metrics = trainer.jit_train_step(state, batch)
            if step == start:
                jax.block_until_ready(metrics)
                writer.write(step + 1, "compile", {"first_step_s": time.perf_counter() - t_compile})
            if pending is not None:  # check the previous step while this one runs
                _check_finite(*pending, skip)
            pending = (step + 1, metrics)
            history.append(metrics)
            step += 1
            profiler.after_step(step, (state, metrics))
            if step % config.log_every == 0 or step == config.num_train_steps:
                _check_finite(*pending, skip)
                m = _mean_metrics(history)
                m["steps_per_s"] = len(history) / max(time.perf_counter() - t_log, 1e-9)
                m["learning_rate"] = float(lr_schedule(step - 1))
                if train_loader.skipped:
                    m["skipped_inputs"] = len(train_loader.skipped)
                history, t_log = [], time.perf_counter()
                writer.write(step, "train", m)
                if is_main:
                    progress.print(step, m)
            if preempt.requested():
                return _stop_preempted(preempt, step, state, pending, skip, checkpoints, writer)
            if step % config.checkpoint_every == 0 and step < config.num_train_steps:
                _check_finite(*pending, skip)
                checkpoints.save(step, savable(state))
            if config.eval_every and step % config.eval_every == 0 and step < config.num_train_steps:
                try:
                    eval_metrics, _ = trainer.evaluate(state, stop=preempt.requested)
                except Preempted:
                    return _stop_preempted(preempt, step, state, pending, skip, checkpoints, writer)
                writer.write(step, "eval", eval_metrics)
                checkpoints.save_best(step, savable(state), eval_metrics)
        if pending is not None:
            _check_finite(*pending, skip)
        checkpoints.save(step, savable(state))
        try:  # a signal now: the final checkpoint is saved, only the evaluation is left for the rerun
            if preempt.requested():
                raise Preempted("before the final evaluation")
            eval_metrics, evaluator = trainer.evaluate(state, stop=preempt.requested)
        except Preempted:
            return _stop_preempted(preempt, step, state, pending, skip, checkpoints, writer)
        writer.write(step, "eval", eval_metrics)
        checkpoints.save_best(step, savable(state), eval_metrics)
        if is_main:
            out = workdir / "eval"
            out.mkdir(exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(jsonable(eval_metrics), indent=2))
            evaluator.save(out)
            writer.write_image_files(step, out, "eval")  # the evaluator's pictures, also in TensorBoard
            _plot_curves(workdir)
            print("[jaxcv] final eval: " + " ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()
                                                    if isinstance(v, float)), flush=True)
    checkpoints.close()
    writer.close()
    return eval_metrics


def _stop_preempted(preempt: Preemption, step: int, state: TrainState, pending: Any, skip: bool,
                    checkpoints: ckpt.Checkpoints, writer: MetricWriter) -> dict[str, float]:
    """Saves the state of `step` (a no-op if that step is saved already) and ends the run cleanly; the
    next run with the same workdir resumes from it exactly."""
    if pending is not None:
        _check_finite(*pending, skip)
    checkpoints.save(step, savable(state))
    print(f"[jaxcv] {preempt.describe()}: saved checkpoint at step {step}; exiting", flush=True)
    checkpoints.close()
    writer.close()
    return {}


def jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (float, int, np.floating, np.integer)):
            v = float(v)
            out[k] = v if math.isfinite(v) else None
        else:
            out[k] = v
    return out


def _plot_curves(workdir: Path) -> None:
    try:
        from jaxcv.viz import plot_training_curves

        plot_training_curves(workdir, workdir / "curves.png")
    except Exception as e:  # noqa: BLE001 - plots must not fail a finished run
        logging.warning("could not plot training curves: %s", e)

