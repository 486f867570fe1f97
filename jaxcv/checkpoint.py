"""Checkpoints with orbax: periodic saves, keep-best, resume with fallback, and `init_from`.

Layout in the workdir: `checkpoints/<step>/` (the latest `keep` periodic saves, what resume reads)
and `best/<step>/` (the best by `config.checkpoint.best_metric`). Precedence when a run starts:
the workdir's latest good checkpoint, then `config.init_from`, then scratch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


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

    def save(self, step: int, state: Any) -> None:
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=ocp.args.StandardSave(state), force=True)
        self.latest.wait_until_finished()

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

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """The newest checkpoint that restores cleanly; a corrupt one is reported and skipped."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                state = self.latest.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                logging.warning("checkpoint at step %d is unreadable (%s); trying an older one", step, e)
                print(f"warning: checkpoint {self.workdir}/checkpoints/{step} is unreadable "
                      f"({type(e).__name__}); falling back to an older one", flush=True)
                continue
            return state, step
        return None

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
            step = mgr.latest_step()
            if step is not None:
                tree = mgr.restore(step, args=ocp.args.StandardRestore())
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
