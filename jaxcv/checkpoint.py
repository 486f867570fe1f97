"""Checkpoints with orbax: periodic saves, keep-best, resume with fallback, and `init_from`.

Layout in the workdir: `checkpoints/<step>/` (the latest `keep` periodic saves, what resume reads)
and `best/<step>/` (the best by `config.checkpoint.best_metric`). Precedence when a run starts:
the workdir's latest good checkpoint, then `config.init_from`, then scratch.

Integrity: every save also writes `<step>/jaxcv_digest.json`, a CRC32 per saved array. A checkpoint
that cannot be read, or whose restored arrays do not match their CRCs (orbax itself restores a
flipped bit silently), is reported, moved to `checkpoints_corrupt/` and resume falls back to the
next older one. Orbax's `*.orbax-checkpoint-tmp-*` folders (a save cut short) are never read. A
checkpoint of another model or optimizer (different paths or shapes) is not corruption: it raises.
"""

from __future__ import annotations

import json
import logging
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

DIGEST_FILE = "jaxcv_digest.json"


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


def tree_digest(tree: Any) -> dict[str, str]:
    """{leaf path: "shape:crc32"} of every array in `tree` (host copies; replicated arrays only)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = _host_copy(leaf)
        if a is None:
            continue
        a = np.ascontiguousarray(a)
        out[_key_str(path)] = f"{list(a.shape)}:{zlib.crc32(a.reshape(-1).view(np.uint8)):08x}"
    return out


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


def _manager(directory: Path, max_to_keep: int, best_metric: str | None = None, mode: str = "max"):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        best_fn=(lambda m: m[best_metric]) if best_metric else None,
        best_mode=mode,
        keep_checkpoints_without_metrics=best_metric is None,
        enable_async_checkpointing=False,
        create=True,
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


class Checkpoints:
    """The run's checkpoint managers (latest and best)."""

    def __init__(self, workdir: str | Path, keep: int = 2, best_metric: str | None = None, mode: str = "max"):
        self.workdir = Path(workdir)
        self.latest = _manager(self.workdir / "checkpoints", keep)
        self.best_metric = best_metric
        self.best = _manager(self.workdir / "best", 1, best_metric, mode) if best_metric else None

    def _write_digest(self, manager: Any, step: int, state: Any) -> None:
        """Process 0 writes the CRCs of `state` beside orbax's files (after they are committed)."""
        if jax.process_index() != 0:
            return
        step_dir = Path(manager.directory) / str(step)
        tmp = step_dir / f".{DIGEST_FILE}.tmp"
        tmp.write_text(json.dumps({"step": int(step), "arrays": tree_digest(state)}))
        tmp.replace(step_dir / DIGEST_FILE)

    def save(self, step: int, state: Any) -> None:
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=ocp.args.StandardSave(state), force=True)
        self.latest.wait_until_finished()
        self._write_digest(self.latest, step, state)

    def save_best(self, step: int, state: Any, metrics: Mapping[str, float]) -> None:
        if self.best is None:
            return
        if self.best_metric not in metrics:
            raise KeyError(
                f"checkpoint.best_metric {self.best_metric!r} is not an eval metric; "
                f"available: {', '.join(sorted(metrics))}"
            )
        if step in self.best.all_steps():
            return
        value = float(metrics[self.best_metric])
        self.best.save(step, args=ocp.args.StandardSave(state), metrics={self.best_metric: value}, force=True)
        self.best.wait_until_finished()
        if step in self.best.all_steps():
            self._write_digest(self.best, step, state)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """The newest checkpoint that restores and matches its checksums, and its step.

        A corrupt one (unreadable, or arrays differing from `jaxcv_digest.json`) is reported, moved
        to `checkpoints_corrupt/` so that later saves of its step are not skipped, and the next older
        one is tried. None when there is no good checkpoint. Raises IncompatibleCheckpointError
        if a readable checkpoint holds another model (that is a config mistake, not corruption).
        """
        corrupt: list[int] = []
        found = None
        for step in sorted(self.latest.all_steps(), reverse=True):
            step_dir = Path(self.latest.directory) / str(step)
            try:
                try:
                    _check_compatible(step_dir, abstract_state)
                except IncompatibleCheckpointError:
                    raise
                except Exception as e:  # noqa: BLE001 - unreadable metadata: corrupt
                    raise CorruptCheckpointError(f"metadata unreadable: {type(e).__name__}: {e}") from e
                state = self.latest.restore(step, args=ocp.args.StandardRestore(abstract_state))
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
                src = Path(self.latest.directory) / str(step)
                dest = dest_root / str(step)
                if dest.exists():
                    dest = dest_root / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                shutil.move(str(src), str(dest))
                print(f"[jaxcv] moved corrupt checkpoint {src} to {dest}", flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxcv_checkpoint_quarantine")
        self.latest.reload()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()


def load_variables(path: str | Path) -> dict[str, Any]:
    """Variables {'params', 'batch_stats'} from `init_from`: a `jaxcv.convert` output directory, or a
    jaxcv workdir (its best checkpoint if any, else its latest)."""
    path = Path(path).absolute()
    if (path / "model.json").exists():  # written by jaxcv.convert
        from jaxcv.convert import load_converted

        return load_converted(path)
    for sub in ("best", "checkpoints"):
        d = path / sub
        if d.is_dir():
            mgr = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(read_only=True))
            for step in sorted(mgr.all_steps(), reverse=True):  # newest good one; corrupt ones are skipped
                try:
                    tree = mgr.restore(step, args=ocp.args.StandardRestore())
                    bad = verify_digest(d / str(step), tree)
                    if bad:
                        raise CorruptCheckpointError(f"arrays differ from their checksums: {bad[:3]}")
                except Exception as e:  # noqa: BLE001 - fall back to an older checkpoint
                    print(f"[jaxcv] warning: checkpoint {d / str(step)} is corrupt ({type(e).__name__}); "
                          "trying an older one", flush=True)
                    continue
                return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
    raise FileNotFoundError(
        f"init_from={str(path)!r} is neither a jaxcv.convert output (with model.json) nor a workdir "
        "with checkpoints/ or best/"
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
