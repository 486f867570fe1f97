"""Run logs: `metrics.jsonl` (one JSON object per logged step), TensorBoard events, a progress line."""

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
    """

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool | None = None,
                 hparams: Mapping[str, Any] | None = None):
        if tensorboard is None:
            tensorboard = os.environ.get("JAXCV_TENSORBOARD", "1") != "0"
        self.enabled = enabled
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.tb: TensorBoardWriter | None = None
        if enabled and tensorboard:
            try:
                self.tb = TensorBoardWriter(self.workdir / "tb")
                if hparams is None and (self.workdir / "config.json").exists():
                    hparams = json.loads((self.workdir / "config.json").read_text())
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
        if self.tb is not None:
            self.tb.write_scalars(step, {f"{split}/{k}": v for k, v in scalars.items() if math.isfinite(v)})
            self.tb.flush()

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


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
