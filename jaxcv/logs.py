"""Run logs: `metrics.jsonl` (one JSON object per logged step), TensorBoard events, an optional Weights &
Biases run, progress lines for training and evaluation, and `--profile_steps`' `jax.profiler` trace."""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _scalar(v: Any) -> float:
    return float(v)


_file_ids = itertools.count()


class TensorBoardWriter:
    """TensorBoard event files written without TensorFlow, with clu.metric_writers' method names.

    Events are tensorboard's own protos (`tensorboard.compat.proto`) in TFRecord framing
    (`tensorboard.summary.writer.record_writer.RecordWriter`) and carry the plugin metadata that
    TF2's `tf.summary.scalar` / `tf.summary.image` and `tensorboard.plugins.hparams` write, so the
    scalars, images and hparams dashboards read them as they read TensorFlow's. tensorboard's own
    `EventFileWriter` is not used: it opens files through `tensorboard.compat.tf`, which imports
    TensorFlow whenever it is installed.
    """

    def __init__(self, logdir: str | Path):
        # Imported here, not at module level: `import jaxcv.train` does not pay for the protos.
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        # TensorFlow's file name: events.out.tfevents.<time>.<host>.<pid>.<uid>.v2
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_file_ids)}.v2")
        self.path = logdir / name
        self._records = RecordWriter(self.path.open("wb"))
        self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write_event(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def _write_summary(self, step: int, values: list[Any]) -> None:
        summary = self._summary_pb2.Summary(value=values)
        self._write_event(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One float32 scalar tensor per tag, as `tf.summary.scalar` writes it."""
        from tensorboard.plugins.scalar import metadata
        from tensorboard.util import tensor_util

        meta = metadata.create_summary_metadata(display_name="", description="")
        values = [
            self._summary_pb2.Summary.Value(
                tag=tag, metadata=meta, tensor=tensor_util.make_tensor_proto(np.float32(v))
            )
            for tag, v in scalars.items()
        ]
        self._write_summary(step, values)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Images [N, H, W, C] or [H, W, C] (C in 1, 3, 4; uint8, or float in [0, 1] as in clu),
        one tag each holding all N as PNGs, as `tf.summary.image` writes them."""
        from PIL import Image

        for tag, batch in images.items():
            batch = np.asarray(batch)
            if batch.ndim == 3:
                batch = batch[None]
            if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
                raise ValueError(f"image {tag!r}: expected [N, H, W, C] or [H, W, C], got {batch.shape}")
            if batch.dtype != np.uint8:
                batch = np.round(np.clip(batch.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
            pngs = []
            for im in batch:
                buf = io.BytesIO()
                Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, format="PNG")
                pngs.append(buf.getvalue())
            self.write_encoded_images(step, tag, pngs, width=batch.shape[2], height=batch.shape[1])

    def write_encoded_images(self, step: int, tag: str, images: list[bytes], width: int, height: int) -> None:
        """Encoded images (PNG or JPEG bytes) of one size under one tag: the string tensor
        [width, height, image...] of TensorBoard's images plugin."""
        from tensorboard.plugins.image import metadata
        from tensorboard.util import tensor_util

        tensor = np.array([str(width).encode(), str(height).encode(), *images], dtype=object)
        meta = metadata.create_summary_metadata(display_name="", description="")
        value = self._summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor_util.make_tensor_proto(tensor))
        self._write_summary(step, [value])

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """A session-start summary of TensorBoard's hparams plugin (what `hparams.summary_v2.hparams`
        writes): bools, numbers and strings as such, anything else (None, lists) as its JSON text."""
        from tensorboard.plugins.hparams import metadata, plugin_data_pb2

        info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, v in hparams.items():
            if isinstance(v, bool):
                info.hparams[name].bool_value = v
            elif isinstance(v, (int, float)):
                info.hparams[name].number_value = float(v)
            elif isinstance(v, str):
                info.hparams[name].string_value = v
            else:
                info.hparams[name].string_value = json.dumps(v, default=str)
        meta = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_start_info=info))
        value = self._summary_pb2.Summary.Value(
            tag=metadata.SESSION_START_INFO_TAG, metadata=meta, tensor=metadata.NULL_TENSOR
        )
        self._write_summary(0, [value])

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts (config.json) -> {"a.b.c": leaf}, the hparams TensorBoard shows as columns."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_config(v, f"{key}."))
        else:
            out[key] = v
    return out


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files under `workdir/tb`.

    TensorBoard events need no TensorFlow (`TensorBoardWriter`). Besides each `write`'s scalars
    (tags `split/name`), the run's flattened config (`hparams`, by default `workdir/config.json`,
    which the trainer writes first) is logged as hparams, and `write_image_files` logs PNG files (the
    trainer: the evaluator's prediction galleries and confusion matrix, as `eval/<file stem>`). If the
    event files cannot be written the JSON log still is; `JAXCV_TENSORBOARD=0` turns TensorBoard off.

    `wandb_project` (`config.logging.wandb_project`, "" = off) also sends the scalars to a Weights & Biases
    run (`WandbWriter`) whose config is the flattened config.
    """

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool | None = None,
                 hparams: Mapping[str, Any] | None = None, wandb_project: str = ""):
        if tensorboard is None:
            tensorboard = os.environ.get("JAXCV_TENSORBOARD", "1") != "0"
        self.enabled = enabled
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.tb: TensorBoardWriter | None = None
        self.wandb: WandbWriter | None = None
        if enabled and hparams is None and (self.workdir / "config.json").exists():
            hparams = json.loads((self.workdir / "config.json").read_text())
        if enabled and wandb_project:
            self.wandb = WandbWriter(wandb_project, self.workdir, flatten_config(hparams or {}))
        if enabled and tensorboard:
            try:
                self.tb = TensorBoardWriter(self.workdir / "tb")
                if hparams:
                    self.tb.write_hparams(flatten_config(hparams))
                    self.tb.flush()
            except Exception as e:  # noqa: BLE001 - logging must not stop training
                logging.warning("TensorBoard logging disabled: %s", e)
                self.tb = None

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        scalars = {}
        for k, v in metrics.items():
            try:
                scalars[k] = _scalar(v)
            except (TypeError, ValueError):
                continue
        record = {"step": int(step), "split": split, **{k: v for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        tagged = {f"{split}/{k}": v for k, v in scalars.items() if math.isfinite(v)}
        if self.tb is not None:
            self.tb.write_scalars(step, tagged)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.write_scalars(step, tagged)

    def write_image_files(self, step: int, directory: str | Path, prefix: str) -> None:
        """Logs `directory/*.png` as images `prefix/<file stem>`, the encoded bytes as they are (a picture
        that cannot be read is left out with a warning: logging must not fail a finished run)."""
        if self.tb is None:
            return
        from PIL import Image

        for path in sorted(Path(directory).glob("*.png")):
            try:
                with Image.open(path) as im:
                    width, height = im.size
                self.tb.write_encoded_images(step, f"{prefix}/{path.stem}", [path.read_bytes()], width, height)
            except Exception as e:  # noqa: BLE001
                logging.warning("could not log %s to TensorBoard: %s", path, e)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None


WANDB_ID_FILE = "wandb_run_id"


def _import_wandb(project: str) -> Any:
    """`import wandb`, only when a project is set: wandb is optional (not a dependency of jaxcv or its tests)."""
    try:
        import wandb
    except ImportError as e:
        raise ValueError(f"config.logging.wandb_project={project!r} needs the wandb package: pip install wandb") from e
    return wandb


def validate_logging(config: Mapping[str, Any], check_import: bool = True) -> None:
    """`config.logging` before anything compiles: `wandb_project` is a string, and when set (and
    `check_import`, i.e. on the process that logs) wandb is installed."""
    project = (config.get("logging") or {}).get("wandb_project", "")
    if not isinstance(project, str):
        raise ValueError(f"config.logging.wandb_project={project!r}: must be a string (a wandb project; '' = off)")
    if project and check_import:
        _import_wandb(project)


class WandbWriter:
    """Scalars to a Weights & Biases run: `wandb.init(project, dir=workdir, config=..., id=..., resume="allow")`.

    The run id is made once and kept in `workdir/wandb_run_id`, so a resumed run (same workdir) continues
    the same wandb run, as wandb's resume docs describe; `wandb.log(..., step=)` takes the trainer's step.
    """

    def __init__(self, project: str, workdir: str | Path, config: Mapping[str, Any]):
        self._wandb = _import_wandb(project)
        workdir = Path(workdir)
        id_file = workdir / WANDB_ID_FILE
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:16] + "\n")
        self.run_id = id_file.read_text().strip()
        self.run = self._wandb.init(project=project, dir=str(workdir), config=dict(config), id=self.run_id,
                                    resume="allow")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=int(step))

    def close(self) -> None:
        self.run.finish()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All records of `workdir/metrics.jsonl`."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A one-line progress report: step, loss, steps/s and ETA."""

    def __init__(self, total_steps: int, start_step: int):
        self.total = total_steps
        self.t0 = time.perf_counter()
        self.s0 = start_step
        self.last_t, self.last_s = self.t0, start_step

    def line(self, step: int, metrics: dict[str, float]) -> str:
        now = time.perf_counter()
        rate = (step - self.last_s) / max(now - self.last_t, 1e-9)
        overall = (step - self.s0) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / overall if overall > 0 else float("inf")
        self.last_t, self.last_s = now, step
        terms = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "loss")
        return (
            f"step {step}/{self.total} loss={metrics.get('loss', float('nan')):.4f} {terms} "
            f"| {rate:.2f} steps/s | ETA {_fmt(eta)}"
        )

    def print(self, step: int, metrics: dict[str, float]) -> None:
        print(self.line(step, metrics), file=sys.stdout, flush=True)


class EvalProgress:
    """The evaluation's progress line, e.g. `[jaxcv] eval 12/40 batches, 3.1 batch/s, ETA 0:00:09`, on stdout as
    training's `Progress`. The rate leaves out the first batch (it includes the eval step's compilation). On a
    terminal the line is rewritten in place (carriage return) after each batch; in a log file or pipe a line
    is printed every tenth of the batches and at the last, so logs stay short. `enabled=False` (processes
    other than 0) prints nothing."""

    def __init__(self, total: int, label: str = "eval", enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled
        self.t1: float | None = None  # when the first batch was done
        self.every = max(1, -(-total // 10))
        self.width = 0  # the longest line so far: a shorter one is padded to cover it on a terminal

    def line(self, done: int) -> str:
        now = time.perf_counter()
        if self.t1 is None:
            self.t1 = now
        rate = (done - 1) / (now - self.t1) if done > 1 and now > self.t1 else float("nan")
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        if done >= self.total:
            eta = 0.0
        speed = f"{rate:.1f}" if math.isfinite(rate) else "?"
        return f"[jaxcv] {self.label} {done}/{self.total} batches, {speed} batch/s, ETA {_fmt(eta)}"

    def update(self, done: int) -> None:
        """Called after batch `done` (1-based) is evaluated."""
        if not self.enabled:
            return
        text = self.line(done)
        last = done >= self.total
        if getattr(sys.stdout, "isatty", lambda: False)():
            self.width = max(self.width, len(text))
            print("\r" + text.ljust(self.width), end="\n" if last else "", file=sys.stdout, flush=True)
        elif last or done % self.every == 0:
            print(text, file=sys.stdout, flush=True)


PROFILE_FLAG = "--profile_steps"


def parse_profile_steps(text: str | None, num_train_steps: int | None = None) -> tuple[int, int] | None:
    """`--profile_steps=START:END` -> (START, END); "" or None -> None (no trace). Steps count as `state.step`
    does: the trace starts before the step from START and stops once step END is computed, END - START steps.
    Anything else (not "A:B", negative, END <= START, END past `num_train_steps`) is a ValueError naming the flag."""
    if not text:
        return None
    start, sep, end = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        a, b = int(start), int(end)
    except ValueError:
        raise ValueError(f"{PROFILE_FLAG}={text!r}: expected START:END, two step numbers (e.g. 10:15)") from None
    if a < 0 or b < 0:
        raise ValueError(f"{PROFILE_FLAG}={text!r}: steps must be >= 0")
    if b <= a:
        raise ValueError(f"{PROFILE_FLAG}={text!r}: END must be greater than START")
    if num_train_steps is not None and b > num_train_steps:
        raise ValueError(f"{PROFILE_FLAG}={text!r}: END is past config.num_train_steps={num_train_steps}")
    return a, b


class ProfileWindow:
    """A `jax.profiler` trace of training steps START..END (`parse_profile_steps`) written to `logdir`:
    `plugins/profile/<run>/<host>.xplane.pb`, which TensorBoard's profile plugin (`tensorboard --logdir
    DIR/profile`) reads, and `perfetto_trace.json.gz` beside it for ui.perfetto.dev
    (`jax.profiler.start_trace(create_perfetto_trace=True)`). The trace stops only once step END's results
    are ready (`jax.block_until_ready`), so it holds those steps' device work, not just their dispatch.
    A run resumed inside the window traces the rest of it; leaving the `with` block stops an open trace."""

    def __init__(self, steps: tuple[int, int] | None, logdir: str | Path):
        self.steps, self.logdir = steps, Path(logdir)
        self.active = self.done = False

    def before_step(self, step: int) -> None:
        """Called with `state.step` before each training step."""
        if self.steps and not (self.active or self.done) and self.steps[0] <= step < self.steps[1]:
            import jax

            self.logdir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.logdir), create_perfetto_trace=True)
            self.active = True

    def after_step(self, step: int, results: Any) -> None:
        """Called with the new `state.step` and that step's outputs (blocked on before the trace stops)."""
        if self.active and step >= self.steps[1]:
            import jax

            jax.block_until_ready(results)
            self.stop()

    def stop(self) -> None:
        if self.active:
            import jax

            jax.profiler.stop_trace()
            self.active, self.done = False, True
            print(f"[jaxcv] profile of steps {self.steps[0]}:{self.steps[1]} written to {self.logdir}", flush=True)

    def __enter__(self) -> ProfileWindow:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
