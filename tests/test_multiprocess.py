"""Multi-process (multi-host style) training on CPU: 2 processes on localhost joined by
`jax.distributed.initialize`, each feeding its own data shard, hold the same params as one process
with the same global batch; preemption of one process stops both at the same step with a checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_CACHE, xla_flags

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "configs/synthetic_classification.py:smoke"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ, JAX_PLATFORMS="cpu", JAXCV_COMPILATION_CACHE=TEST_CACHE, PYTHONUNBUFFERED="1")
    e["XLA_FLAGS"] = xla_flags()  # one CPU device per process
    return e


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env()
    )


def finish_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Waits for every process; on a failure or timeout kills the others (they would wait forever in
    a collective) and fails with everyone's output."""
    outputs: list[str] = [""] * len(procs)

    def read(i: int) -> None:
        outputs[i] = procs[i].stdout.read()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(procs))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p, r in zip(procs, readers, strict=True):
        p.wait()
        r.join(10)
    if any(p.returncode != 0 for p in procs):
        pytest.fail(
            "\n\n".join(f"process {i} rc={p.returncode}:\n{outputs[i][-4000:]}" for i, p in enumerate(procs))
        )
    return outputs


def worker(out: Path, num_processes: int, process_id: int, port: int, steps: int = 3) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "tests" / "dist_worker.py"),
        SMOKE,
        str(steps),
        str(out),
        str(num_processes),
        str(process_id),
        str(port),
        "batch_size=8",
    ]


def single_process_reference(out: Path, steps: int = 3) -> dict:
    """What dist_worker.py does with one process (one device, the whole global batch of 8)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import dist_worker

    return dist_worker.run(SMOKE, steps, out, ["batch_size=8"])


def last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path: Path):
    port = free_port()
    procs = [start(worker(tmp_path / f"p{i}.npz", 2, i, port)) for i in range(2)]
    single = single_process_reference(tmp_path / "single.npz")  # meanwhile, in this process
    p0, p1 = (last_json(o) for o in finish_all(procs))
    assert (p0["processes"], p0["devices"], p0["process_index"]) == (2, 2, 0)
    assert (p1["processes"], p1["devices"], p1["process_index"]) == (2, 2, 1)
    assert (single["processes"], single["devices"]) == (1, 1)
    # each process read its own half of every global batch of 8; together they are the single run's batch
    assert p0["local_batch"] == p1["local_batch"] == 4 and single["local_batch"] == 8
    for a, b, full in zip(p0["indices"], p1["indices"], single["indices"], strict=True):
        assert not set(a) & set(b) and a + b == full
    np.testing.assert_allclose(p0["losses"], single["losses"], rtol=1e-5, atol=1e-5)
    assert p0["losses"] == p1["losses"]  # the loss of the global batch, the same on both
    ref = np.load(tmp_path / "single.npz")
    for i in range(2):
        got = np.load(tmp_path / f"p{i}.npz")
        assert sorted(got.files) == sorted(ref.files)
        for k in ref.files:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=f"process {i}: {k}")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path: Path):
    """`python -m jaxcv.main --coordinator=...`: SIGTERM reaches only process 1; both agree to stop
    (jax's preemption sync point, no collective per step), save one checkpoint together and exit 0."""
    port = free_port()
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "jaxcv.main",
        f"--config={SMOKE}",
        f"--workdir={workdir}",
        f"--coordinator=127.0.0.1:{port}",
        "--num_processes=2",
        "--config.num_train_steps=200",
        "--config.log_every=1",
        "--config.checkpoint_every=1000",
        "--config.batch_size=8",
    ]
    procs = [start([*cmd, f"--process_id={i}"]) for i in range(2)]
    lines: list[str] = []

    def read0() -> None:  # process 0 prints the progress lines
        for line in procs[0].stdout:
            lines.append(line)

    reader = threading.Thread(target=read0, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not any(line.startswith("step 2/") for line in lines):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail("no progress:\n" + "".join(lines) + procs[1].stdout.read()[-3000:])
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    rest = finish_all([procs[1]], timeout=120)[0]
    procs[0].wait(120)
    reader.join(10)
    out0 = "".join(lines)
    assert procs[0].returncode == 0, out0[-3000:]
    m0 = re.search(r"preemption of another process: saved checkpoint at step (\d+); exiting", out0)
    m1 = re.search(rf"signal {int(signal.SIGTERM)}: saved checkpoint at step (\d+); exiting", rest)
    assert m0 and m1, (out0[-2000:], rest[-2000:])
    step = int(m0.group(1))
    assert int(m1.group(1)) == step < 200
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [str(step)]
    assert (workdir / "checkpoints" / str(step) / "jaxcv_digest.json").exists()
