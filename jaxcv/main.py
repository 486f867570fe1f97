"""The entry point: `python -m jaxcv.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.a.b=v]
[--mode=train|eval|predict]`.

Configs are ml_collections files whose `get_config(arg)` returns a locked ConfigDict: an override of
a key that does not exist fails with the key's name and its valid siblings. The resolved config is
written to `DIR/config.json`. Multi-host: pass `--coordinator=host:port --num_processes=N
--process_id=I` (or rely on the cluster's environment with `--distributed`) to call
`jax.distributed.initialize` first.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tensorflow (tfds, TensorBoard) C++ chatter

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:ARG]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detected cluster).")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for jax.distributed.initialize.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool("compilation_cache", True, "Use a persistent XLA compilation cache (~/.cache/jaxcv/xla).")
flags.DEFINE_string("profile_steps", "", "START:END: a jax.profiler trace of these training steps (counted as "
                    "state.step) in WORKDIR/profile, for TensorBoard's profile plugin and Perfetto.")
flags.mark_flags_as_required(["config", "workdir"])


@flags.validator("profile_steps")
def _check_profile_steps(value: str) -> bool:
    """`--profile_steps` must be START:END with 0 <= START < END; checked when the flags are parsed."""
    from jaxcv.logs import parse_profile_steps

    try:
        parse_profile_steps(value)
    except ValueError as e:
        raise flags.ValidationError(str(e).split(": ", 1)[-1]) from None  # absl names the flag and value
    return True


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad `--config.*` override (an unknown key: ml_collections raises
    AttributeError/KeyError with a "did you mean") prints one line naming it instead of a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.",
              file=sys.stderr, flush=True)
        sys.exit(1)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if os.environ.get("JAXCV_TRACEBACK"):
            raise
        while isinstance(e.args[0] if e.args else None, BaseException):  # AttributeError(KeyError(...))
            e = e.args[0]
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        key = msg.split("\n")[0].strip("'\"")
        culprits = [a.split("=")[0] for a in argv[1:]
                    if a.startswith("--config.") and key in a.split("=")[0].split(".")]
        where = f" in {', '.join(culprits)}" if culprits else ""
        what = "unknown key" if isinstance(e, KeyError) else "bad value"
        print(f"[jaxcv] config error{where}: {what} {msg}", file=sys.stderr, flush=True)
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not any(a.startswith(("-v", "--v", "--verbosity")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)  # orbax/absl INFO lines would drown the progress line
    import jax

    if FLAGS.compilation_cache:
        from jaxcv.runtime import use_compilation_cache

        use_compilation_cache()
    if FLAGS.coordinator or FLAGS.distributed:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
        )
    from jaxcv import modes, train

    config = FLAGS.config
    try:
        if FLAGS.mode == "train":
            train.train_and_evaluate(config, FLAGS.workdir, profile_steps=FLAGS.profile_steps)
        elif FLAGS.mode == "eval":
            modes.evaluate_only(config, FLAGS.workdir)
        else:
            modes.predict(config, FLAGS.workdir)
    except (train.NonFiniteLossError, ValueError, KeyError, FileNotFoundError) as e:
        from jaxcv.data.base import DataError

        if os.environ.get("JAXCV_TRACEBACK"):
            raise
        kind = "data error" if isinstance(e, DataError) else type(e).__name__
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str() adds quotes
        print(f"[jaxcv] {kind}: {msg}\n(set JAXCV_TRACEBACK=1 for the traceback)", file=sys.stderr, flush=True)
        sys.exit(1)


def run() -> None:
    """`python -m jaxcv.main` (and the `jaxcv-train` script): the CPU settings (`jaxcv.runtime.configure`) before
    JAX starts its backend, then absl's flag parsing and `main`."""
    from jaxcv import runtime
    from jaxcv.config import resolve_config_argv

    runtime.configure()
    try:
        sys.argv = resolve_config_argv(sys.argv)
    except FileNotFoundError as e:
        print(f"[jaxcv] {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
