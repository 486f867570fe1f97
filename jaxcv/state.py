"""The training state and how it is saved, restored and completed (checkpoints, `init_from`)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import ml_collections
from flax.training import train_state
from jax.sharding import NamedSharding

# Threefry's key derivation is slow to compile inside a ResNet init on CPU; "rbg" compiles in about half.
RNG_IMPL = "rbg"


class TrainState(train_state.TrainState):
    """Params, optimizer state, BatchNorm statistics and the base dropout key."""

    batch_stats: Any
    rng: jax.Array
    # Exponential moving average of {"params", "batch_stats"} (`config.ema_decay` > 0), else {}.
    ema: Any = None

    def eval_variables(self) -> dict[str, Any]:
        """The variables evaluation and prediction use: the EMA weights when kept, else the trained ones."""
        return dict(self.ema) if self.ema else {"params": self.params, "batch_stats": self.batch_stats}


class Start(NamedTuple):
    """Where a run's starting state came from (`Trainer.initial_state`): `origin` is "checkpoint" (the
    workdir's latest good checkpoint), "init_from" (`config.init_from`) or "scratch"; `detail` says which."""

    state: TrainState
    origin: Literal["checkpoint", "init_from", "scratch"]
    detail: str

    def describe(self) -> str:
        return self.detail


def check_complete(config: ml_collections.ConfigDict, state: TrainState, *reports: dict[str, list[str]]) -> None:
    """Raises if `init_from` left any parameter or BatchNorm statistic of the model at its init."""
    loaded = sum(len(r["loaded"]) for r in reports)
    total = len(jax.tree_util.tree_leaves(state.params)) + len(jax.tree_util.tree_leaves(state.batch_stats))
    if loaded >= total:
        return
    mismatch = [k for r in reports for k in r["shape_mismatch"]]
    prefix = config.get("init_prefix", "")
    hint = []
    if mismatch:
        more = " ..." if len(mismatch) > 4 else ""
        hint.append(f"shape mismatch (source vs model): {'; '.join(mismatch[:4])}{more}; a head with another "
                    "number of classes? torchvision's COCO detectors have 91 outputs indexed by category id: "
                    "--config.data.label_map=category_id")
    missing = [k for r in reports for k in r["missing_in_source"]]
    if missing:
        hint.append(f"not in the source: {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
    if prefix:
        hint.append(f"init_prefix={prefix!r} loads only that part of the model; a full-model checkpoint needs "
                    "--config.init_prefix=''")
    raise ValueError(
        f"init_from={config.init_from!r} sets {loaded} of the model's {total} variables; evaluation and "
        f"prediction need all of them ({'; '.join(hint)})"
    )


def abstract(state: TrainState) -> dict[str, Any]:
    return jax.tree_util.tree_map(ocp_abstract, savable(state))


def ocp_abstract(x: Any) -> Any:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def savable(state: TrainState) -> dict[str, Any]:
    """The part of the state that is saved: everything but the functions."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "rng": jax.random.key_data(state.rng),
        **({"ema": state.ema} if state.ema else {}),
    }


def replace_from_tree(state: TrainState, tree: dict[str, Any], sharding: NamedSharding) -> TrainState:
    tree = jax.device_put(tree, sharding)
    return state.replace(
        step=tree["step"],
        params=tree["params"],
        batch_stats=tree["batch_stats"],
        opt_state=tree["opt_state"],
        rng=jax.random.wrap_key_data(tree["rng"], impl=RNG_IMPL),
        ema=tree.get("ema", {}),
    )
