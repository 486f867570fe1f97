"""`pip install jaxcv` from a wheel: configs ship in the package (`--config=NAME` finds them), the console
scripts exist and run the main job's `:smoke` from outside the repository; `--config=NAME` also in a clone."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TEST_CACHE

from jaxcv.config import load_config_file, packaged_configs, resolve_config_argv, resolve_config_path

SCRIPTS = ("jaxcv-train", "jaxcv-show", "jaxcv-explain", "jaxcv-sweep", "jaxcv-convert", "jaxcv-sam")


def test_names_resolve_to_the_shipped_configs():
    shipped = ROOT / "jaxcv" / "configs"
    assert (ROOT / "configs").resolve() == shipped.resolve()  # the clone's configs/ is the package's
    assert "shapes_retinanet" in packaged_configs() and "__init__" not in packaged_configs()
    assert resolve_config_path("shapes_retinanet:smoke") == f"{shipped / 'shapes_retinanet.py'}:smoke"
    assert resolve_config_path("shapes_retinanet.py") == str(shipped / "shapes_retinanet.py")
    assert resolve_config_path("configs/shapes_unet.py") == "configs/shapes_unet.py"  # an existing path as it is
    assert load_config_file("shapes_retinanet:smoke").to_dict() == \
        load_config_file(ROOT / "configs" / "shapes_retinanet.py:smoke").to_dict()
    assert resolve_config_argv(["x", "--config", "shapes_unet", "--workdir=w"])[2].endswith("configs/shapes_unet.py")
    with pytest.raises(FileNotFoundError, match=r"'shapes_retinanett'.*shipped: .*shapes_retinanet"):
        resolve_config_path("shapes_retinanett")


def test_unknown_config_name_fails_naming_it(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "jaxcv.main", "--config=no_such_config", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "'no_such_config'" in proc.stderr and "shapes_retinanet" in proc.stderr


@pytest.mark.slow
def test_wheel_installs_and_runs_the_main_job_outside_the_repo(tmp_path: Path):
    """Builds the wheel, installs it (no deps) into a fresh venv outside the repo whose other packages come from
    this environment's site-packages (added as a plain path: its editable jaxcv hook is not run), then runs
    `jaxcv-train --config=shapes_retinanet:smoke` there, from a directory with no configs/."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    [wheel] = wheels.glob("jaxcv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"jaxcv/configs/shapes_retinanet.py", "jaxcv/configs/__init__.py", "jaxcv/py.typed"} <= names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "Classifier: Typing :: Typed" in meta
    assert "tensorflow-cpu" not in meta.split("Provides-Extra: tfds-build")[0]  # only in the extra
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", JAXCV_COMPILATION_CACHE=TEST_CACHE)
    where = subprocess.run([str(py), "-c", "import jaxcv, jaxcv.configs; print(jaxcv.__file__)"],
                           capture_output=True, text=True, cwd=run_dir, env=env, timeout=300)
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where.stdout + where.stderr
    for script in SCRIPTS:
        assert (venv / "bin" / script).is_file(), script
    proc = subprocess.run([str(venv / "bin" / "jaxcv-train"), "--config=shapes_retinanet:smoke",
                           f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=run_dir, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "final eval" in proc.stdout and (tmp_path / "run" / "eval" / "metrics.json").is_file()
    help_ = subprocess.run([str(venv / "bin" / "jaxcv-convert"), "--help"], capture_output=True, text=True,
                           cwd=run_dir, env=env, timeout=300)
    assert help_.returncode == 0 and "--arch" in help_.stdout
