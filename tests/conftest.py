"""Shared test setup: persistent compilation cache and the reference fixtures in ../shared."""

import os
from pathlib import Path

# The suite is compile-bound: XLA:CPU with LLVM at -O0 compiles about twice as fast and runs about half as
# fast (benchmarks/README.md), a win for every test but long training runs, which start their own process at
# full optimization (test_segmentation_learns). JAXCV_TEST_FULL_OPT=1: all at full optimization.
# Set before jax initializes its backend; subprocesses get the same flags through `xla_flags`.
TEST_XLA_FLAGS = "" if os.environ.get("JAXCV_TEST_FULL_OPT") == "1" else "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxcv import runtime  # noqa: E402

runtime.configure()  # the entry points' CPU settings, so in-process tests compute as the commands do

from jaxcv.train import jit_full_opt as jit_opt  # noqa: E402, F401  (tests' model inits, compiled at full opt.)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"

# The persistent compilation cache of this process and of the tests' subprocesses (JAXCV_COMPILATION_CACHE).
TEST_CACHE = os.environ.get("JAXCV_TEST_CACHE", str(ROOT / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", TEST_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def fixture_path(name: str) -> Path:
    """Path of a reference fixture; a missing file is a failure, never a skip."""
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"reference fixture {path} is missing: tests need ../shared/fixtures beside the repo")
    return path


@pytest.fixture(autouse=True)
def _default_conv_impl():
    """A Trainer sets the process-wide `conv_impl` from its config; the next test starts from "auto" again."""
    yield
    from jaxcv.ops.conv import set_conv_impl

    set_conv_impl("auto")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    fixture_path("README.md")
    return FIXTURES



@pytest.fixture(scope="session")
def inproc_reference(tmp_path_factory) -> Path:
    """A finished 6-step in-process training run (tests/reliability_util.py), shared by the preemption and
    checkpoint-integrity tests (they copy it before changing anything)."""
    from reliability_util import make_inproc_reference

    return make_inproc_reference(tmp_path_factory.mktemp("inproc_ref"))


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test's subprocess: the suite's flags, plus `devices` forced CPU devices."""
    forced = f" --xla_force_host_platform_device_count={devices}" if devices else ""
    return (TEST_XLA_FLAGS + forced).strip()


# Approximate seconds of the longest tests (quiet 2-core CPU, cold compilation cache), longest first.
LONG_TESTS = {
    "test_segmentation_learns": 90,
    "test_eight_devices_equal_one[shapes_retinanet]": 60,
    "test_preempted_by_sigterm_sigint_and_kill9_resumes_bit_identical": 80,
    "test_eight_devices_equal_one[shapes_unet]": 45,
    "test_eval_converted_torchvision_retinanet_via_init_from": 35,
    "test_images_without_boxes_train_as_all_background": 30,
    "test_classification_learns_and_writes_outputs": 30,
    "test_detection_predict_writes_pictures_and_coco_results": 30,
    "test_sweep_runs_end_to_end_then_resumes_only_missing": 30,
    "test_segmentation_predict_writes_indexed_mask_and_overlay": 25,
    "test_two_processes_train_like_one": 25,
    "test_sigterm_to_one_process_stops_both_at_the_same_step": 20,
    "test_wheel_installs_and_runs_the_main_job_outside_the_repo": 60,
    "test_finetuning_beats_zero_shot": 60,
    "test_config_trains_two_steps": 40,
}


def pytest_collection_modifyitems(config, items: list) -> None:
    """Starts the longest tests first on both xdist workers. `--dist worksteal` gives each worker a contiguous
    half of this list to begin with, so the long tests are split between the two halves (greedily, by
    LONG_TESTS) and put at their fronts; the short ones follow in file order (shared module fixtures)."""
    long = sorted((it for it in items if it.name in LONG_TESTS), key=lambda it: -LONG_TESTS[it.name])
    halves: list[list] = [[], []]
    for it in long:
        min(halves, key=lambda h: sum(LONG_TESTS[t.name] for t in h)).append(it)
    rest = [it for it in items if it.name not in LONG_TESTS]
    cut = max(0, (len(items) + 1) // 2 - len(halves[0]))  # half 0 takes this many short tests
    items[:] = halves[0] + rest[:cut] + halves[1] + rest[cut:]


def load_regenerable(folder: str, name: str) -> dict:
    """The reference state dict of fixture family `folder/name` ("Regenerable weights" in
    ../shared/fixtures/README.md): every tensor of `NAME.manifest.json` redrawn with numpy, in list order,
    united with `NAME.small.safetensors`. Keys as the reference library names them, in its layout."""
    import json

    import numpy as np
    from safetensors.numpy import load_file

    manifest = json.loads(fixture_path(f"{folder}/{name}.manifest.json").read_text())
    rng = np.random.default_rng(manifest["seed"])
    weights = {}
    for key, shape, low, high in manifest["draws"]:
        weights[key] = (low + (high - low) * rng.random(tuple(shape))).astype(np.float32)
    small = load_file(str(fixture_path(f"{folder}/{name}.small.safetensors")))
    overlap = sorted(set(weights) & set(small))
    if overlap:
        pytest.fail(f"fixture {folder}/{name}: keys both in the manifest and the small file: {overlap[:5]}")
    return {**weights, **small}


def load_io(folder: str, name: str) -> dict:
    """`folder/NAME_io.npz` as {array name: numpy array}."""
    import numpy as np

    with np.load(fixture_path(f"{folder}/{name}_io.npz")) as f:
        return {k: f[k] for k in f.files}


def assert_close_rel(actual, expected, rtol: float = 1e-4, name: str = "") -> float:
    """Fails unless max |actual - expected| <= rtol * max |expected| (the parity tests' measure: error relative
    to each array's largest magnitude). Returns that relative error."""
    import numpy as np

    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != reference {e.shape}"
    scale = float(np.max(np.abs(e))) or 1.0
    err = float(np.max(np.abs(a - e))) / scale if e.size else 0.0
    assert err <= rtol, f"{name}: max abs error {err * scale:.3g} = {err:.3g} x max|ref| ({scale:.3g}) > {rtol}"
    return err


TFDS_METADATA = ROOT / "tests" / "data" / "tfds_metadata"


def mock_tfds(num_examples: int, **kwargs):
    """`tfds.testing.mock_data` with the saved metadata of tests/data/tfds_metadata (coco/2017's:
    its tfds code needs TensorFlow, which only the `tfds-build` extra installs, so without it the
    dataset is opened from these files as from a prepared one). Other datasets are mocked from their
    code as by default (the default policy, AUTO, uses the files only where they exist)."""
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(num_examples=num_examples, data_dir=str(TFDS_METADATA), **kwargs)
