"""Checkpoints with orbax: one asynchronous manager for periodic saves and keep-best, resume with
fallback, and `init_from`.

Layout in the workdir: `checkpoints/<step>/`, one orbax `CheckpointManager`. A save is asynchronous:
`Checkpoints.save` returns once the arrays are copied to host memory; orbax writes
`<step>.orbax-checkpoint-tmp` in a background thread and renames it to `<step>` when it is complete,
so the step loop does not wait for the disk. Its preservation policy keeps the latest `keep` steps
and, with `config.checkpoint.best_metric`, the best evaluated step (orbax's `<step>/metrics/metrics`);
an evaluation of a step that is saved already (the final one) adds its metric to that step, so no
checkpoint is written twice. Precedence when a run starts: the workdir's latest good checkpoint, then
`config.init_from`, then scratch. Workdirs from before (a second manager in `best/`) are still read.

Integrity: every save also writes `<step>/jaxcv_digest.json`, a CRC32 per saved array, computed from a
host copy taken at save time and written before orbax's rename, so it commits with the checkpoint. A
checkpoint that cannot be read, or whose restored arrays do not match their CRCs (orbax itself
restores a flipped bit silently), is reported, moved to `checkpoints_corrupt/` and resume falls back
to the next older one. Orbax's `*.orbax-checkpoint-tmp*` folders (a save cut short, e.g. by kill -9)
are never read. A checkpoint of another model or optimizer (different paths or shapes) is not
corruption: it raises.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import shutil
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

DIGEST_FILE = "jaxcv_digest.json"
METRICS_ITEM = "metrics"  # orbax's per-step metrics item: <step>/metrics/metrics, a JSON object


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint whose arrays do not fit the model/optimizer being restored."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose restored arrays differ from the checksums written when it was saved."""


def _key_str(path: tuple[Any, ...]) -> str:
    """'params/conv/kernel' for a pytree path (dict keys, sequence indices, namedtuple fields), so a
    tree restored without a target (plain dicts) names its leaves like the original."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _host_copy(x: Any) -> np.ndarray | None:
    """This process's full copy of `x`; None for an array sharded across processes."""
    if isinstance(x, jax.Array):
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return None
    return np.asarray(x)


def host_arrays(tree: Any, copy: bool = False) -> dict[str, np.ndarray]:
    """{leaf path: host array} of `tree`'s replicated arrays; `copy` makes them independent of the
    device buffers (which the next train step donates while an asynchronous save is running)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = _host_copy(leaf)
        if a is not None:
            out[_key_str(path)] = np.array(a, copy=True) if copy else a
    return out


def _crc(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return f"{list(a.shape)}:{zlib.crc32(a.reshape(-1).view(np.uint8)):08x}"


def tree_digest(tree: Any) -> dict[str, str]:
    """{leaf path: "shape:crc32"} of every array in `tree` (host copies; replicated arrays only)."""
    return {k: _crc(a) for k, a in host_arrays(tree).items()}


def _write_json(path: Path, obj: Any) -> None:
    """`path` replaced atomically by `obj` as JSON (a crash leaves the old file or none, never half)."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def verify_digest(step_dir: Path, tree: Any) -> list[str]:
    """Leaf paths of `tree` whose CRC differs from `step_dir/jaxcv_digest.json` (empty if the file
    is absent: checkpoints from before digests, or a crash between the save and the digest)."""
    path = Path(step_dir) / DIGEST_FILE
    if not path.exists():
        logging.warning("checkpoint %s has no %s; restored without an integrity check", step_dir, DIGEST_FILE)
        return []
    try:
        saved = json.loads(path.read_text())["arrays"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{DIGEST_FILE} unreadable ({e})"]
    now = tree_digest(tree)
    return [k for k in now if k in saved and saved[k] != now[k]]


def _stored_shapes(step_dir: Path) -> dict[str, tuple[int, ...]]:
    """{leaf path: shape} from a checkpoint's orbax metadata (raises if the metadata is unreadable)."""
    handler = ocp.StandardCheckpointHandler()
    try:
        tree = handler.metadata(Path(step_dir).absolute() / "default")
    finally:
        handler.close()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_key_str(p): tuple(getattr(m, "shape", ())) for p, m in leaves}


def _check_compatible(step_dir: Path, abstract_state: Any) -> None:
    """Raises IncompatibleCheckpointError naming the first differing leaves if the checkpoint at
    `step_dir` holds other arrays than `abstract_state` (e.g. the config's model changed)."""
    stored = _stored_shapes(step_dir)
    wanted = {_key_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    problems = []
    params_first = lambda k: (not k.startswith("params/"), k)
    for k in sorted(set(wanted) | set(stored), key=params_first):
        if k not in stored:
            problems.append(f"{k}: missing in the checkpoint")
        elif k not in wanted:
            problems.append(f"{k}: not in the model/optimizer")
        elif stored[k] != wanted[k]:
            problems.append(f"{k}: {stored[k]} in the checkpoint vs {wanted[k]}")
    if problems:
        raise IncompatibleCheckpointError(
            f"checkpoint {step_dir} was written by another model or optimizer ({len(problems)} "
            f"difference(s), "
            f"e.g. {'; '.join(problems[:3])}). Use a new --workdir, or move {Path(step_dir).parent} away."
        )


class _Manager(ocp.CheckpointManager):
    """orbax's `CheckpointManager` that leaves jax's preemption sync point alone: `jaxcv.preemption`
    calls it once per train step and eval batch on every process, with its own counter, and orbax's
    queries (with checkpoint steps, and from its finalize thread on process 0 only) would report a
    stale counter to the sync protocol."""

    def reached_preemption(self, step: int) -> bool:
        return False

    def metrics(self, step: int) -> Any:
        """The step's metrics; None when they cannot be read (a corrupt checkpoint must not stop the
        manager from opening: `restore_latest` finds and moves it)."""
        try:
            return super().metrics(step)
        except Exception as e:  # noqa: BLE001 - e.g. an emptied or truncated metrics file
            logging.warning("metrics of checkpoint %d unreadable (%s: %s)", step, type(e).__name__, e)
            return None


@dataclasses.dataclass
class _Info:
    """What orbax's preservation policies read of a checkpoint (`PolicyCheckpointInfo`)."""

    step: int
    metrics: dict[str, Any] | None
    time: datetime.datetime = datetime.datetime.min


class Checkpoints:
    """The run's checkpoints: one asynchronous orbax manager in `checkpoints/` that keeps the latest
    `keep` steps and the best by `best_metric` (`mode` 'max' or 'min')."""

    def __init__(self, workdir: str | Path, keep: int = 2, best_metric: str | None = None, mode: str = "max"):
        self.workdir = Path(workdir)
        self.directory = (self.workdir / "checkpoints").absolute()
        self.best_metric = best_metric or None
        self.mode = mode
        self._pending: tuple[int, dict[str, np.ndarray] | None] | None = None  # digest for the commit hook
        self._best: tuple[int, float] | None | bool = False  # (step, value) of the best; False: not read yet
        kept: list[Any] = [policies.LatestN(n=keep)]
        if self.best_metric:
            kept.append(policies.BestN(get_metric_fn=self._score, reverse=mode == "min", n=1,
                                       keep_checkpoints_without_metrics=False))
        self.policy = policies.AnyPreservationPolicy(kept)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=self.policy,
            best_fn=self._score if self.best_metric else None,  # also makes orbax write the metrics item
            best_mode=mode,
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._before_commit),
            create=True,
        )
        self.manager = _Manager(self.directory, options=options)

    @property
    def latest(self) -> ocp.CheckpointManager:
        """The orbax manager (the name of the periodic saves' manager before there was only one)."""
        return self.manager

    def _score(self, metrics: Mapping[str, Any] | None) -> float:
        """`best_metric` of a step's metrics; a step saved without it ranks last."""
        value = (metrics or {}).get(self.best_metric)
        if value is None or not math.isfinite(float(value)):
            return -math.inf if self.mode == "max" else math.inf
        return float(value)

    def _before_commit(self) -> None:
        """orbax's post-finalization callback (its background thread, every process): the arrays are
        written, `<step>.orbax-checkpoint-tmp` is not renamed yet. Process 0 writes the digest into it,
        so a checkpoint is committed with its digest or not at all."""
        pending, self._pending = self._pending, None
        if pending is None or pending[1] is None:
            return
        step, host = pending
        try:
            tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            step_dir = tmp[0] if len(tmp) == 1 else self.directory / str(step)  # non-atomic-rename storage
            _write_json(step_dir / DIGEST_FILE, {"step": step, "arrays": {k: _crc(a) for k, a in host.items()}})
        except Exception as e:  # noqa: BLE001 - a checkpoint without digest is restored with a warning
            logging.warning("could not write %s for checkpoint %d: %s", DIGEST_FILE, step, e)

    def save(self, step: int, state: Any, metrics: Mapping[str, float] | None = None) -> bool:
        """Starts saving `state` at `step` (nothing if that step is saved or being saved) and returns
        once orbax holds host copies of the arrays; the files are written in the background. A
        previous save still running is waited for first (orbax writes one at a time)."""
        if step in self.manager.all_steps():
            return False
        self.manager.wait_until_finished()  # the commit hook of the previous save has run
        self._pending = (int(step), host_arrays(state, copy=True) if jax.process_index() == 0 else None)
        if self.best_metric and metrics is None:
            metrics = {}  # ranks last for the best; saying nothing would make orbax warn at every save
        self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
        return True

    def save_best(self, step: int, state: Any, metrics: Mapping[str, float]) -> None:
        """Records `step`'s evaluation: adds `best_metric` to the step's checkpoint if it is saved,
        else saves the step if it is the best so far. The policy then keeps it while it is the best."""
        if self.best_metric is None:
            return
        if self.best_metric not in metrics:
            raise KeyError(
                f"checkpoint.best_metric {self.best_metric!r} is not an eval metric; "
                f"available: {', '.join(sorted(metrics))}"
            )
        entry = {self.best_metric: float(metrics[self.best_metric])}
        best = self._best_entry()
        score = self._score(entry)
        better = best is None or (score > best[1] if self.mode == "max" else score < best[1])
        if step in self.manager.all_steps():
            self._add_metrics(step, entry)
        elif better:
            self.save(step, state, entry)
        if better and math.isfinite(score):
            self._best = (int(step), score)

    def _add_metrics(self, step: int, entry: dict[str, float]) -> None:
        """Writes `entry` as the orbax metrics of the saved `step` and applies the preservation policy
        (orbax applies it only when it saves)."""
        self.manager.wait_until_finished()  # the step's folder must be committed (renamed) first
        if jax.process_index() == 0:
            d = self.directory / str(step) / METRICS_ITEM
            d.mkdir(exist_ok=True)
            _write_json(d / METRICS_ITEM, entry)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxcv_checkpoint_metrics")
        self.manager.reload()
        steps = list(self.manager.all_steps())
        keep = self.policy.should_preserve([_Info(s, self.manager.metrics(s)) for s in steps],
                                           context=policies.PreservationContext())
        for s, k in zip(steps, keep, strict=True):
            if not k:
                self.manager.delete(s)

    def _best_entry(self) -> tuple[int, float] | None:
        """(step, value) of the best kept step (read from the steps' metrics once, then kept up to date)."""
        if self._best is False:
            self.manager.wait_until_finished()
            scored = [(s, self._score(self.manager.metrics(s))) for s in self.manager.all_steps()]
            scored = [(s, v) for s, v in scored if math.isfinite(v)]
            pick = max if self.mode == "max" else min
            self._best = pick(scored, key=lambda sv: sv[1]) if scored else None
        return self._best  # type: ignore[return-value]

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (None without a metric or an evaluated step)."""
        if self.best_metric is None:
            return None
        best = self._best_entry()
        return best[0] if best else None

    def wait_until_finished(self) -> None:
        """Blocks until the save in progress (if any) is committed."""
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """The newest checkpoint that restores and matches its checksums, and its step.

        A corrupt one (unreadable, or arrays differing from `jaxcv_digest.json`) is reported, moved
        to `checkpoints_corrupt/` so that later saves of its step are not skipped, and the next older
        one is tried. None when there is no good checkpoint. Raises IncompatibleCheckpointError
        if a readable checkpoint holds another model (that is a config mistake, not corruption).
        """
        self.manager.wait_until_finished()
        corrupt: list[int] = []
        found = None
        for step in sorted(self.manager.all_steps(), reverse=True):
            step_dir = self.directory / str(step)
            try:
                try:
                    _check_compatible(step_dir, abstract_state)
                except IncompatibleCheckpointError:
                    raise
                except Exception as e:  # noqa: BLE001 - unreadable metadata: corrupt
                    raise CorruptCheckpointError(f"metadata unreadable: {type(e).__name__}: {e}") from e
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
                bad = verify_digest(step_dir, state)
                if bad:
                    raise CorruptCheckpointError(
                        f"{len(bad)} array(s) differ from their checksums at save time, "
                        f"e.g. {', '.join(bad[:3])}"
                    )
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                msg = str(e).splitlines()[0][:300] if str(e) else ""
                print(f"[jaxcv] warning: checkpoint {step_dir} is corrupt or incomplete ({type(e).__name__}: "
                      f"{msg}); falling back to an older one", flush=True)
                corrupt.append(step)
                continue
            found = (state, step)
            break
        if corrupt:
            self._quarantine(corrupt)
        if found is None and corrupt:
            print(f"[jaxcv] warning: no readable checkpoint left in {self.workdir}/checkpoints", flush=True)
        return found

    def _quarantine(self, steps: list[int]) -> None:
        """Moves corrupt step folders to `checkpoints_corrupt/` (kept for inspection, never deleted)."""
        if jax.process_index() == 0:
            dest_root = self.workdir / "checkpoints_corrupt"
            dest_root.mkdir(parents=True, exist_ok=True)
            for step in steps:
                src = self.directory / str(step)
                dest = dest_root / str(step)
                if dest.exists():
                    dest = dest_root / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                shutil.move(str(src), str(dest))
                print(f"[jaxcv] moved corrupt checkpoint {src} to {dest}", flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxcv_checkpoint_quarantine")
        self.manager.reload()
        self._best = False

    def close(self) -> None:
        """Waits for the save in progress, then releases orbax's threads."""
        self.manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """On an error (e.g. a NaN loss) the save in progress completes before it propagates, so the last
        good checkpoint is on disk as the error says; a clean exit leaves closing to the caller."""
        if exc_type is not None:
            try:
                self.manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 - the original error matters more
                logging.warning("the checkpoint save in progress failed: %s", e)


def _init_candidates(workdir: Path) -> list[Path]:
    """Step folders of a workdir that `init_from` tries, in order: an old workdir's `best/` (a second
    manager before), the best evaluated step of `checkpoints/` (metric and mode from the workdir's
    `config.json`), then the others newest first."""

    def steps(d: Path) -> list[Path]:
        return sorted((p for p in d.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name)) if d.is_dir() else []

    latest = steps(workdir / "checkpoints")
    try:
        cc = json.loads((workdir / "config.json").read_text())["checkpoint"]
        metric, mode = cc["best_metric"], cc.get("best_mode", "max")
    except (OSError, ValueError, KeyError, TypeError):
        metric, mode = None, "max"
    scored = []
    for p in latest if metric else []:
        try:
            value = float(json.loads((p / METRICS_ITEM / METRICS_ITEM).read_text())[metric])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if math.isfinite(value):
            scored.append((value if mode == "max" else -value, int(p.name), p))
    best = [max(scored)[2]] if scored else []
    return steps(workdir / "best") + best + [p for p in latest if p not in best]


def load_variables(path: str | Path) -> dict[str, Any]:
    """Variables {'params', 'batch_stats'} from `init_from`: a `jaxcv.convert` output directory, or a
    jaxcv workdir (its best checkpoint if any, else its latest; a corrupt one is skipped)."""
    path = Path(path).absolute()
    if (path / "model.json").exists():  # written by jaxcv.convert
        from jaxcv.convert import load_converted

        return load_converted(path)
    handler = ocp.StandardCheckpointHandler()
    try:
        for step_dir in _init_candidates(path):
            try:
                tree = handler.restore(step_dir / "default")
                bad = verify_digest(step_dir, tree)
                if bad:
                    raise CorruptCheckpointError(f"arrays differ from their checksums: {bad[:3]}")
            except Exception as e:  # noqa: BLE001 - fall back to an older checkpoint
                print(f"[jaxcv] warning: checkpoint {step_dir} is corrupt ({type(e).__name__}); "
                      "trying an older one", flush=True)
                continue
            return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
    finally:
        handler.close()
    raise FileNotFoundError(
        f"init_from={str(path)!r} is neither a jaxcv.convert output (with model.json) nor a workdir "
        "with checkpoints/"
    )


def merge_pretrained(
    target: Mapping[str, Any], source: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Copies `source` leaves into `target` under `prefix` where path and shape agree.

    Returns the merged tree and a report {'loaded', 'shape_mismatch', 'missing_in_source',
    'unused_in_source'}; a shape mismatch (e.g. a 1000-class head into a 10-class model) keeps the
    target's fresh initialization, which is what transfer learning wants.
    """
    flat_t = traverse_util.flatten_dict(jax.device_get(dict(target)), sep="/")
    flat_s = traverse_util.flatten_dict(jax.device_get(dict(source)), sep="/")
    pre = prefix.strip("/")
    report: dict[str, list[str]] = {"loaded": [], "shape_mismatch": [], "missing_in_source": []}
    used = set()
    for key, value in flat_t.items():
        if pre and not key.startswith(pre + "/"):
            continue
        skey = key[len(pre) + 1 :] if pre else key
        if skey not in flat_s:
            report["missing_in_source"].append(key)
            continue
        used.add(skey)
        if np.shape(flat_s[skey]) != np.shape(value):
            report["shape_mismatch"].append(f"{key}: {np.shape(flat_s[skey])} vs {np.shape(value)}")
            continue
        flat_t[key] = np.asarray(flat_s[skey], dtype=np.asarray(value).dtype)
        report["loaded"].append(key)
    report["unused_in_source"] = sorted(set(flat_s) - used)
    return traverse_util.unflatten_dict(flat_t, sep="/"), report


def summarize_report(report: Mapping[str, list[str]]) -> str:
    return json.dumps({k: len(v) for k, v in report.items()})
