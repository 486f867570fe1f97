"""`python -m jaxcv.explain`: see `jaxcv.explain`."""

from __future__ import annotations

from jaxcv.explain.run import explain


def _main(argv: list[str]) -> None:
    from absl import flags

    from jaxcv.runtime import start_cli

    start_cli(argv)
    f = flags.FLAGS
    path = explain(f.workdir, f.what, f.out, f.image, f.layer, None if f.channel < 0 else f.channel,
                   None if f.class_index < 0 else f.class_index, f.num, f.steps, f.lr)
    print(f"[jaxcv] wrote {path}", flush=True)


def _define_flags() -> None:
    """Flags are defined only when run as a program, so importing this module never clashes with
    `jaxcv.main`'s or `jaxcv.show`'s flags."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "A training run's directory (config.json + checkpoints).")
    flags.DEFINE_enum("what", "gradcam", ["activations", "filters", "gradcam"], "What to show.")
    flags.DEFINE_string("image", None, "Image file (default: the first validation image).")
    flags.DEFINE_string("layer", None, "Layer name (default: the last spatial feature map).")
    flags.DEFINE_integer("channel", -1, "filters: one channel (default: a grid of the first --num).")
    flags.DEFINE_integer("class_index", -1, "gradcam: the class to explain (default: the predicted one).")
    flags.DEFINE_string("out", None, "Output PNG (default: WORKDIR/explain/WHAT.png).")
    flags.DEFINE_integer("num", 16, "filters: how many channels in the grid.")
    flags.DEFINE_integer("steps", 100, "filters: gradient ascent steps.")
    flags.DEFINE_float("lr", 0.1, "filters: ascent step (RMS-normalized gradient, model-input units).")
    flags.mark_flags_as_required(["workdir"])


def run() -> None:
    """The command line (`python -m jaxcv.explain`, the `jaxcv-explain` script)."""
    from absl import app

    _define_flags()
    app.run(_main)


if __name__ == "__main__":
    run()
