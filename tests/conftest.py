"""Shared test setup: persistent compilation cache and the reference fixtures in ../shared."""

import os
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"

# TensorBoard writing imports TensorFlow (seconds per run); the one test that checks it turns it on.
os.environ.setdefault("JAXCV_TENSORBOARD", "0")
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAXCV_TEST_CACHE", str(ROOT / ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def fixture_path(name: str) -> Path:
    """Path of a reference fixture; a missing file is a failure, never a skip."""
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"reference fixture {path} is missing: tests need ../shared/fixtures beside the repo")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    fixture_path("README.md")
    return FIXTURES
