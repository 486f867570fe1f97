"""Prediction on images, folders, globs, video files and streams, for every task, through one batched
jitted pipeline (one compilation for every image and frame: the last partial batch is padded).

The task supplies the per-example hooks (`Task.prepare_input`, `Task.postprocess`, `Task.draw`,
`Task.result_record`); this module batches, runs the model and reads/writes video with OpenCV.

    predictor = Predictor.from_workdir(config, workdir)
    for r in predictor.stream("clip.mp4", stride=2):     # or a webcam index (0) or a stream URL
        r["frame"], r["time"], r["drawn"]                 # + boxes/scores/labels, mask, or class/probs

`predict_stream(source, task, apply_fn, variables)` does the same from parts, like ultralytics'
`model.predict(source, stream=True)`. `--mode=predict` (`jaxcv.modes.predict`) writes, for each video,
`{stem}_pred.mp4` (annotated, codec mp4v, at the source frame rate / stride) and `{stem}.jsonl` (one JSON
line per kept frame: `frame` index in the source, `time` in seconds, and the task's record, for detection
`detections: [{box_xyxy (original pixels), score, label, category_id, class}]`).
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

from jaxcv.data.base import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
T = TypeVar("T")
Source = str | int | Path


def check_stride(stride: int) -> int:
    """`predict.stride` as an int >= 1 (every n-th frame is kept), else a ValueError naming it."""
    if int(stride) < 1:
        raise ValueError(f"predict.stride={stride}: must be >= 1 (1 keeps every frame)")
    return int(stride)


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_stream(item: Source) -> bool:
    """A webcam index (an int, or digits in a CLI string) or a URL (rtsp://, http://)."""
    return isinstance(item, int) or (isinstance(item, str) and (item.isdigit() or "://" in item))


@dataclass
class Inputs:
    """What `predict.inputs` names: image files and videos (paths, webcam indices or stream URLs)."""

    images: list[str] = field(default_factory=list)
    videos: list[Source] = field(default_factory=list)


def resolve_inputs(spec: str) -> Inputs:
    """`predict.inputs` (comma-separated: image or video files, folders, globs, webcam indices, stream URLs)
    -> Inputs, in the given order (folder and glob matches sorted). A folder contributes its image and video
    files; a glob match with a video extension is a video, anything else an image. Fails naming the item
    that matches nothing."""
    out = Inputs()
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise FileNotFoundError(f"predict.inputs={spec!r} names no image, video, folder or glob")
    for item in items:
        if is_stream(item):
            out.videos.append(int(item) if item.isdigit() else item)
            continue
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           + VIDEO_EXTENSIONS)
            if not files:
                raise FileNotFoundError(f"predict.inputs: folder {item} holds no image or video file "
                                        f"({', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
        elif p.is_file():
            files = [p]
        else:
            files = [Path(f) for f in sorted(glob.glob(str(p))) if Path(f).is_file()]
            if not files and is_video(p) and not glob.has_magic(str(p)):
                raise FileNotFoundError(f"predict.inputs: video {item}: no such file")
            if not files:
                raise FileNotFoundError(f"predict.inputs: {item!r} is no file or folder and matches no file")
        for f in files:
            (out.videos if is_video(f) else out.images).append(str(f))
    return out


class VideoSource:
    """Frames of a video file, a webcam (int index) or a stream URL through `cv2.VideoCapture`, as uint8 RGB.
    A missing file or one OpenCV cannot decode fails here, naming it."""

    def __init__(self, source: Source):
        import cv2

        self.source = source
        if not is_stream(source) and not Path(source).is_file():
            raise FileNotFoundError(f"video {source}: no such file")
        self.cap = cv2.VideoCapture(int(source) if isinstance(source, int) else str(source))
        if not self.cap.isOpened():
            raise ValueError(f"video {source}: OpenCV cannot open it (not a video, or a codec it lacks)")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)  # 0 when unknown (some webcams)
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # an estimate for files, 0 for streams

    @property
    def name(self) -> str:
        """A file stem for outputs: the video's stem, `webcam{N}` or `stream`."""
        if isinstance(self.source, int) or str(self.source).isdigit():
            return f"webcam{self.source}"
        return "stream" if "://" in str(self.source) else Path(self.source).stem

    def frames(self, stride: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
        """(index in the source, time in seconds, uint8 RGB [H, W, 3]) of every `stride`-th frame (0, stride,
        ...); skipped frames are grabbed, not decoded. Time is index / fps, or wall time when fps is unknown."""
        stride = check_stride(stride)
        start = time.monotonic()
        index = 0
        try:
            while True:
                if index % stride:
                    if not self.cap.grab():
                        break
                else:
                    ok, frame = self.cap.read()
                    if not ok:
                        if index == 0:
                            raise ValueError(f"video {self.source}: no frame could be read")
                        break
                    t = index / self.fps if self.fps > 0 else time.monotonic() - start
                    yield index, t, np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB
                index += 1
        finally:
            self.cap.release()


class VideoSink:
    """Writes uint8 RGB frames to a video (OpenCV, codec `mp4v`); opened on the first frame, whose size
    every frame must have."""

    def __init__(self, path: Path, fps: float, fourcc: str = "mp4v"):
        self.path, self.fps, self.fourcc = Path(path), fps, fourcc
        self.writer: Any = None
        self.size: tuple[int, int] | None = None
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        import cv2

        h, w = frame.shape[:2]
        if self.writer is None:
            self.size = (w, h)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"cannot write video {self.path} (codec {self.fourcc})")
        if (w, h) != self.size:
            raise ValueError(f"video {self.path}: frame {self.count} is {w}x{h}, earlier frames {self.size}")
        self.writer.write(np.ascontiguousarray(np.asarray(frame, np.uint8)[..., ::-1]))
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class Predictor:
    """A task's model as a batched, jitted function of uint8 RGB images of any size: each image goes through
    `task.prepare_input` on the host, `batch_size` of them (the last batch padded with zeros) through one
    compiled `task.predict_outputs(apply_fn(variables, x, train=False))`, then `task.postprocess` back to
    the image's own pixels. `traces` counts compilations (1 for any number of images and frames)."""

    def __init__(self, task: Any, apply_fn: Callable, variables: Any, batch_size: int = 8):
        if int(batch_size) < 1:
            raise ValueError(f"predict.batch_size={batch_size}: must be >= 1")
        self.task, self.apply_fn, self.variables = task, apply_fn, variables
        self.batch_size = int(batch_size)
        self.traces = 0
        self.description = ""

        def run(v, x):
            self.traces += 1  # runs once per trace, i.e. per compilation
            return task.predict_outputs(apply_fn(v, x, train=False))

        self._fn = jax.jit(run)

    @classmethod
    def from_workdir(cls, config: Any, workdir: str | Path, batch_size: int | None = None) -> Predictor:
        """The model of a workdir's latest checkpoint (or `config.init_from`), as `--mode=eval` restores it;
        `batch_size` defaults to `config.predict.batch_size`."""
        from jaxcv import checkpoint as ckpt
        from jaxcv.train import Trainer

        trainer = Trainer(config, Path(workdir))
        checkpoints = ckpt.Checkpoints(Path(workdir))
        try:
            start = trainer.initial_state(checkpoints, complete=True)
        finally:
            checkpoints.close()
        out = cls(trainer.task, start.state.apply_fn, start.state.eval_variables(),
                  batch_size or int(config.predict.batch_size))
        out.description = start.describe()
        return out

    def _run(self, items: Iterable[T], image_of: Callable[[T], np.ndarray]) -> Iterator[tuple[T, dict[str, Any]]]:
        """(item, result) for each item, predicted `batch_size` at a time, lazily (a stream is never held)."""
        pending: list[tuple[T, np.ndarray, Any]] = []

        def flush() -> Iterator[tuple[T, dict[str, Any]]]:
            x = np.stack([p[1] for p in pending])
            if len(x) < self.batch_size:  # pad: one shape, one compilation
                x = np.concatenate([x, np.zeros((self.batch_size - len(x), *x.shape[1:]), x.dtype)])
            out = jax.device_get(self._fn(self.variables, x))
            for r, (item, _, meta) in enumerate(pending):
                yield item, self.task.postprocess({k: np.asarray(v[r]) for k, v in out.items()}, meta)
            pending.clear()

        for item in items:
            x, meta = self.task.prepare_input(np.asarray(image_of(item)))
            pending.append((item, x, meta))
            if len(pending) == self.batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def predict_images(self, images: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """(image, result) for uint8 RGB images [H, W, 3] (any sizes)."""
        return self._run(images, lambda im: im)

    def stream(self, source: Source | VideoSource, stride: int = 1, draw: bool = True) -> Iterator[dict[str, Any]]:
        """Per-frame results of a video file, webcam index or stream URL: the task's result (detection:
        `boxes` [N, 4] xyxy original pixels, `scores`, `labels`, `class_names`; segmentation: `mask` [H, W];
        classification: `class`, `class_name`, `score`, `probs` [K]; localization: `box_xyxy`, ...) with
        `frame` (index in the source), `time` (s), `image` (uint8 RGB) and, when `draw`, `drawn` (uint8 RGB
        with the predictions painted). Results lag a webcam by up to `batch_size` frames."""
        check_stride(stride)
        src = source if isinstance(source, VideoSource) else VideoSource(source)  # fails now, not at next()

        def results() -> Iterator[dict[str, Any]]:
            for (index, t, image), result in self._run(src.frames(stride), lambda f: f[2]):
                out = {"frame": index, "time": t, "image": image, **result}
                if draw:
                    out["drawn"] = self.task.draw(image, result)
                yield out

        return results()

    def predict_video(self, source: Source, outdir: str | Path, stride: int = 1) -> dict[str, Any]:
        """Writes `{name}_pred.mp4` (annotated frames at the source fps / stride) and `{name}.jsonl` (one
        line per kept frame: `frame`, `time` and `task.result_record`) to `outdir`; logs frames per second.
        Returns the paths and counts."""
        outdir = Path(outdir)
        src = VideoSource(source)
        fps = (src.fps if src.fps > 0 else 30.0) / stride
        video_path, jsonl_path = outdir / f"{src.name}_pred.mp4", outdir / f"{src.name}.jsonl"
        sink = VideoSink(video_path, fps)
        start = time.perf_counter()
        done_first = 0.0  # seconds until the first batch (which compiles) was written
        n = 0
        try:
            with jsonl_path.open("w") as f:
                for r in self.stream(src, stride):
                    sink.write(r["drawn"])
                    record = {"frame": r["frame"], "time": round(float(r["time"]), 6),
                              **self.task.result_record(r)}
                    f.write(json.dumps(record) + "\n")
                    n += 1
                    if n == self.batch_size:
                        done_first = time.perf_counter() - start
        finally:
            sink.close()
        seconds = time.perf_counter() - start
        detail = ""
        if n > self.batch_size:
            rest = (n - self.batch_size) / max(seconds - done_first, 1e-9)
            detail = f"; the first batch, with compilation, took {done_first:.1f} s, then {rest:.1f} frames/s"
        print(f"[jaxcv] video {source}: {n} frame(s) kept (stride {stride}) in {seconds:.1f} s: "
              f"{n / max(seconds, 1e-9):.1f} frames/s{detail} -> {video_path}, {jsonl_path}", flush=True)
        return {"video": video_path, "jsonl": jsonl_path, "frames": n, "seconds": seconds}


def predict_stream(source: Source, task: Any, apply_fn: Callable, variables: Any, *, stride: int = 1,
                   batch_size: int = 8, draw: bool = True) -> Iterator[dict[str, Any]]:
    """Per-frame results of a video file, webcam index or stream URL (see `Predictor.stream`)."""
    return Predictor(task, apply_fn, variables, batch_size).stream(source, stride, draw)
