"""benchmarks/run.py's throughput fields: images/s, achieved TFLOP/s and the fraction of a GPU's peak."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as bench  # noqa: E402  (benchmarks/run.py)


def test_throughput_on_cpu_has_no_peak():
    out = bench.throughput({"batch": 8, "flops": 2e12}, 4.0, "float32")
    assert out == {"images_per_s": 2.0, "achieved_tflops": 0.5}


@pytest.mark.parametrize(
    ("kind", "dtype", "peak"),
    [("NVIDIA H100 80GB HBM3", "bfloat16", 989.0), ("NVIDIA A100-SXM4-40GB", "float32", 156.0),
     ("NVIDIA A10G", "bfloat16", 125.0), ("TPU v5 lite", "bfloat16", 197.0)],
)
def test_throughput_fraction_of_peak(monkeypatch, kind, dtype, peak):
    fake = SimpleNamespace(platform="gpu" if "TPU" not in kind else "tpu", device_kind=kind)
    monkeypatch.setattr(bench.jax, "devices", lambda: [fake])
    out = bench.throughput({"batch": 32, "flops": 4e14}, 2.0, dtype)  # 200 TFLOP/s
    assert out["images_per_s"] == 16.0 and out["achieved_tflops"] == 200.0
    assert out["peak_tflops"] == peak and out["fraction_of_peak"] == round(200.0 / peak, 4)
    assert out["device_kind"] == kind


def test_throughput_unknown_gpu_reports_rate_without_fraction(monkeypatch):
    monkeypatch.setattr(bench.jax, "devices", lambda: [SimpleNamespace(platform="gpu", device_kind="Mystery X")])
    out = bench.throughput({"flops": 1e12}, 1.0, "float32")
    assert out == {"achieved_tflops": 1.0, "device_kind": "Mystery X"}
