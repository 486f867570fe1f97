"""Sweeps: run one config under many override settings (and seeds), then tabulate the results.

    python -m jaxcv.sweep --config=configs/NAME.py[:ARG] --sweep=experiments/NAME/sweep.py --workdir=DIR \
        [--parallel=N] [--print_commands] [-- --config.k=v ...]

A sweep file is a Python file with `get_sweep()` returning a list of dicts of config overrides (dotted
keys -> values), built by hand or with `product(...)`/`zipped(...)` from this module. Optional
module attributes: `seeds` (each setting runs once per seed, as `seed=s`), `fixed` (overrides applied
to every run and left out of the run names, e.g. a shared small-scale setting), `config` (the default
for `--config`) and `metrics` (the metric columns of the tables; default: every scalar metric). A
setting may carry `"_name"` for a shorter run name than the default `k=v,k=v`.

Each run is a subprocess `python -m jaxcv.main --config=CONFIG --workdir=DIR/<name> --config.k=v ...`
(its output goes to `DIR/<name>/sweep.log`). A run whose `eval/metrics.json` exists is finished and
skipped; any other is started, and `jaxcv.main` resumes it from its workdir's checkpoints. At the end
every finished run's `eval/metrics.json` is collected into `DIR/runs.csv` (one row per run) and
`DIR/results.csv` / `DIR/results.md` (one row per setting: mean and sample standard deviation over its
seeds, "mean ± std" in the Markdown table). `DIR/sweep.json` records the runs for `jaxcv.plot`.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "sweep.json"
RUN_LOG = "sweep.log"
RUN_TIME = "sweep_time.json"
NAME_KEY = "_name"
_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Building sweeps
# --------------------------------------------------------------------------------------------------


def _axes(axes: Mapping[str, Sequence[Any]] | None, kwargs: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Axes from a dict with dotted keys and/or keyword arguments (`loss__gamma` means `loss.gamma`)."""
    raw = {**(axes or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}
    for k, v in raw.items():
        if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Iterable) or not list(v):
            raise ValueError(f"sweep axis {k!r} must be a non-empty list of values, got {v!r}")
    return {k: list(v) for k, v in raw.items()}


def product(axes: Mapping[str, Sequence[Any]] | None = None, **kwargs: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis varying slowest.

    `product({"loss.gamma": [0, 2]}, optimizer__learning_rate=[0.1, 0.01])` -> 4 settings.
    """
    ax = _axes(axes, kwargs)
    return [dict(zip(ax, values, strict=True)) for values in itertools.product(*ax.values())]


def zipped(axes: Mapping[str, Sequence[Any]] | None = None, **kwargs: Sequence[Any]) -> list[dict[str, Any]]:
    """Settings that pair the axes' values position by position (all axes equally long), e.g. the
    RetinaNet paper's gamma with its best alpha."""
    ax = _axes(axes, kwargs)
    lengths = {len(v) for v in ax.values()}
    if len(lengths) > 1:
        raise ValueError(f"zipped axes differ in length: { {k: len(v) for k, v in ax.items()} }")
    return [dict(zip(ax, values, strict=True)) for values in zip(*ax.values(), strict=True)]


def format_value(value: Any) -> str:
    """Short text of an override value for a run name: 0.25, 2, resnet18, 0.5_1_2 (sequences)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "_".join(format_value(v) for v in value) if value else "none"
    return str(value).replace("/", "-").replace(",", "-").replace(" ", "")


def run_name(overrides: Mapping[str, Any]) -> str:
    """`loss.gamma=2,loss.alpha=0.25,seed=1` (or the setting's `_name`, then the seed)."""
    parts = []
    if NAME_KEY in overrides:
        parts.append(str(overrides[NAME_KEY]))
    parts += [f"{k}={format_value(v)}" for k, v in overrides.items() if k != NAME_KEY and
              (NAME_KEY not in overrides or k == "seed")]
    return ",".join(parts) or "default"


def cli_value(value: Any) -> str:
    """An override value as `jaxcv.main` (ml_collections config_flags) parses it: tuples as a Python
    literal `(a, b)`, floats with full precision, strings bare."""
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass
class Run:
    """One run of a sweep: `setting` (its name without the seed) groups the seeds of one setting."""

    name: str
    setting: str
    overrides: dict[str, Any]  # the swept ones (and seed), not `fixed`
    seed: int | None = None
    workdir: Path = field(default_factory=Path)

    def finished(self) -> bool:
        return (self.workdir / "eval" / "metrics.json").exists()

    def started(self) -> bool:
        return self.workdir.exists() and (self.workdir / "checkpoints").exists()


@dataclass
class Sweep:
    """A loaded sweep: the config to run, the overrides every run shares and the runs."""

    config: str
    fixed: dict[str, Any]
    runs: list[Run]
    metrics: list[str] | None = None
    sweep_file: str = ""


def expand(settings: Iterable[Mapping[str, Any]], seeds: Sequence[int] | None, workdir: str | Path) -> list[Run]:
    """Runs of every setting (x every seed, as the `seed` override); names must be unique."""
    runs: list[Run] = []
    for s in settings:
        s = dict(s)
        setting = run_name({k: v for k, v in s.items() if k != "seed"})
        for seed in (seeds if seeds else [None]):
            over = dict(s) if seed is None else {**s, "seed": int(seed)}
            name = run_name(over)
            swept = {k: v for k, v in over.items() if k != NAME_KEY}
            run_seed = over.get("seed")
            runs.append(Run(name, setting, swept, None if run_seed is None else int(run_seed), Path(workdir) / name))
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"sweep has runs with the same name (same overrides?): {dupes}")
    return runs


def load_sweep_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep file {path} not found")
    spec = importlib.util.spec_from_file_location(f"jaxcv_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
        raise ValueError(f"sweep file {path} defines no get_sweep()")
    return module


def load(sweep_file: str | Path, workdir: str | Path, config: str | None = None) -> Sweep:
    """Reads a sweep file into runs under `workdir`. `config` overrides the file's `config`."""
    module = load_sweep_file(sweep_file)
    settings = module.get_sweep()
    if not isinstance(settings, (list, tuple)) or not all(isinstance(s, Mapping) for s in settings):
        raise ValueError(f"{sweep_file}: get_sweep() must return a list of dicts of overrides")
    config = config or getattr(module, "config", None)
    if not config:
        raise ValueError("no config: pass --config or set `config` in the sweep file")
    seeds = getattr(module, "seeds", None)
    metrics = getattr(module, "metrics", None)
    return Sweep(config=config, fixed=dict(getattr(module, "fixed", {}) or {}),
                 runs=expand(settings, seeds, workdir), metrics=list(metrics) if metrics else None,
                 sweep_file=str(sweep_file))


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def command(sweep: Sweep, run: Run, extra: Sequence[str] = ()) -> list[str]:
    """argv of `python -m jaxcv.main` for `run` (fixed overrides first, then the swept ones)."""
    argv = [sys.executable, "-m", "jaxcv.main", f"--config={sweep.config}", f"--workdir={run.workdir}"]
    for k, v in {**sweep.fixed, **run.overrides}.items():
        argv.append(f"--config.{k}={cli_value(v)}")
    return argv + list(extra)


def write_manifest(sweep: Sweep, workdir: Path, extra: Sequence[str] = ()) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": sweep.config,
        "sweep_file": sweep.sweep_file,
        "fixed": sweep.fixed,
        "extra_args": list(extra),
        "metrics": sweep.metrics,
        "runs": [{"name": r.name, "setting": r.setting, "seed": r.seed, "overrides": r.overrides} for r in sweep.runs],
    }
    (workdir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=list) + "\n")


def _env() -> dict[str, str]:
    """The child's environment: this checkout importable even when the cwd is elsewhere."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _launch(argv: list[str], run: Run, log: Callable[[str], None]) -> int:
    run.workdir.mkdir(parents=True, exist_ok=True)
    how = "resuming" if run.started() else "starting"
    log(f"[sweep] {how} {run.name}")
    t0 = time.time()
    with open(run.workdir / RUN_LOG, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env=_env())
    seconds = time.time() - t0
    if rc == 0 and run.finished():
        (run.workdir / RUN_TIME).write_text(json.dumps({"seconds": seconds, "how": how}) + "\n")
        log(f"[sweep] finished {run.name} in {seconds:.0f} s")
    else:
        log(f"[sweep] FAILED {run.name} (exit {rc}; see {run.workdir / RUN_LOG})")
    return rc


def run_sweep(sweep: Sweep, workdir: str | Path, parallel: int = 1, extra: Sequence[str] = (),
              log: Callable[[str], None] = print) -> dict[str, int]:
    """Runs every unfinished run (`parallel` at a time), then writes the tables.

    Returns {run name: exit code} of the runs it launched (finished ones are skipped and left out).
    """
    workdir = Path(workdir)
    write_manifest(sweep, workdir, extra)
    todo = []
    for r in sweep.runs:
        if r.finished():
            log(f"[sweep] skip {r.name} (finished: {r.workdir / 'eval' / 'metrics.json'} exists)")
        else:
            todo.append(r)
    log(f"[sweep] {len(sweep.runs)} run(s): {len(sweep.runs) - len(todo)} finished, {len(todo)} to run")
    codes: dict[str, int] = {}
    if parallel <= 1:
        for r in todo:
            codes[r.name] = _launch(command(sweep, r, extra), r, log)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {r.name: pool.submit(_launch, command(sweep, r, extra), r, log) for r in todo}
            codes = {name: f.result() for name, f in futures.items()}
    write_results(workdir, sweep.metrics)
    return codes


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif v is None:  # non-finite values are written as null
            out[k] = float("nan")
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for one value) of the finite values."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def collect(workdir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], list[str]]:
    """Reads `workdir/sweep.json` and each run's `eval/metrics.json`.

    Returns (runs, groups, keys, metrics): one row per run {name, setting, seed, status, seconds,
    overrides..., metrics...}; one row per setting {setting, overrides..., num_seeds, num_runs,
    metric: mean, metric_std: std}, in sweep order; the swept keys; the metric names.
    """
    workdir = Path(workdir)
    manifest = json.loads((workdir / MANIFEST).read_text())
    wanted = manifest.get("metrics")
    keys: list[str] = []
    for r in manifest["runs"]:
        keys += [k for k in r["overrides"] if k != "seed" and k not in keys]
    rows, metric_names = [], []
    for r in manifest["runs"]:
        rd = workdir / r["name"]
        path = rd / "eval" / "metrics.json"
        row: dict[str, Any] = {"name": r["name"], "setting": r["setting"], "seed": r["seed"]}
        row.update({k: r["overrides"].get(k) for k in keys})
        if path.exists():
            m = _scalars(json.loads(path.read_text()))
            row["status"] = "finished"
            t = rd / RUN_TIME
            row["seconds"] = json.loads(t.read_text())["seconds"] if t.exists() else None
            metric_names += [k for k in m if k not in metric_names]
            row["metrics"] = m
        else:
            row["status"] = "started" if rd.exists() else "missing"
            row["seconds"] = None
            row["metrics"] = {}
        rows.append(row)
    if wanted:
        metric_names = [m for m in wanted]
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        g = groups.setdefault(row["setting"], {"setting": row["setting"], **{k: row[k] for k in keys},
                                               "num_runs": 0, "num_seeds": 0, "_m": {}})
        g["num_runs"] += 1
        if row["status"] == "finished":
            g["num_seeds"] += 1
            for k, v in row["metrics"].items():
                g["_m"].setdefault(k, []).append(v)
    out_groups = []
    for g in groups.values():
        values = g.pop("_m")
        for k in metric_names:
            g[k], g[f"{k}_std"] = mean_std(values.get(k, []))
        out_groups.append(g)
    return rows, out_groups, keys, metric_names


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return json.dumps(list(v))
    return str(v)


def _md_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_md_value(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """"0.512 ± 0.013" ("0.512" for one seed, "—" without a value)."""
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_results(workdir: str | Path, metrics: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Writes `runs.csv`, `results.csv` and `results.md` in `workdir` from its runs' metrics."""
    workdir = Path(workdir)
    rows, groups, keys, names = collect(workdir)
    if metrics:
        names = list(metrics)
    with open(workdir / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "setting", "seed", *keys, "status", "seconds", *names])
        for r in rows:
            w.writerow([r["name"], r["setting"], _cell(r["seed"]), *(_cell(r[k]) for k in keys), r["status"],
                        _cell(r["seconds"]), *(_cell(r["metrics"].get(m)) for m in names)])
    results_csv = workdir / "results.csv"
    with open(results_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", *keys, "num_seeds", *itertools.chain.from_iterable((m, f"{m}_std") for m in names)])
        for g in groups:
            w.writerow([g["setting"], *(_cell(g[k]) for k in keys), g["num_seeds"],
                        *itertools.chain.from_iterable((_cell(g.get(m)), _cell(g.get(f"{m}_std"))) for m in names)])
    manifest = json.loads((workdir / MANIFEST).read_text())
    lines = [f"Config `{manifest['config']}`"
             + (f", sweep `{manifest['sweep_file']}`" if manifest.get("sweep_file") else "") + "."]
    if manifest.get("fixed"):
        lines.append("Every run: " + ", ".join(f"`{k}={_md_value(v)}`" for k, v in manifest["fixed"].items()) + ".")
    if manifest.get("extra_args"):
        lines.append("Extra arguments: `" + " ".join(manifest["extra_args"]) + "`.")
    seeds = max((g["num_runs"] for g in groups), default=1)
    lines.append(f"Values: mean ± sample std over seeds ({seeds} per setting)" if seeds > 1 else
                 "Values: one run per setting (no seeds swept)")
    unfinished = [r["name"] for r in rows if r["status"] != "finished"]
    if unfinished:
        lines.append(f"Not finished ({len(unfinished)}): " + ", ".join(f"`{n}`" for n in unfinished) + ".")
    lines.append("")
    header = ["run", *keys] + (["seeds"] if seeds > 1 else []) + names
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for g in groups:
        cells = [g["setting"], *(_md_value(g[k]) for k in keys)]
        if seeds > 1:
            cells.append(f"{g['num_seeds']}/{g['num_runs']}")
        cells += [format_mean_std(g[m], g[f"{m}_std"]) for m in names]
        lines.append("| " + " | ".join(cells) + " |")
    results_md = workdir / "results.md"
    results_md.write_text("\n".join(lines) + "\n")
    return results_csv, results_md


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    from jaxcv import runtime

    runtime.configure()  # the entry points' CPU settings (import jaxcv alone changes nothing)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m jaxcv.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="configs/NAME.py[:ARG] (default: the sweep file's `config`)")
    parser.add_argument("--sweep", required=True, help="sweep file defining get_sweep()")
    parser.add_argument("--workdir", required=True, help="the sweep's directory; run i goes to WORKDIR/<name i>")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (local processes)")
    parser.add_argument("--print_commands", action="store_true",
                        help="print one shell command per unfinished run (for a scheduler) and exit")
    parser.add_argument("--collect_only", action="store_true", help="only rewrite the tables from the workdirs")
    parser.add_argument("--metrics", default="", help="comma-separated metric columns (default: all)")
    args = parser.parse_args(argv)
    sweep = load(args.sweep, args.workdir, args.config)
    if args.metrics:
        sweep.metrics = [m for m in args.metrics.split(",") if m]
    workdir = Path(args.workdir)
    if args.print_commands:
        write_manifest(sweep, workdir, extra)
        for r in sweep.runs:
            if r.finished():
                print(f"# finished: {r.name}", file=sys.stderr)
            else:
                print(shlex.join(command(sweep, r, extra)))
        return 0
    if args.collect_only:
        write_manifest(sweep, workdir, extra)
        write_results(workdir, sweep.metrics)
        print(f"[sweep] wrote {workdir / 'results.md'}")
        return 0
    codes = run_sweep(sweep, workdir, parallel=args.parallel, extra=extra)
    print(f"[sweep] wrote {workdir / 'results.csv'} and {workdir / 'results.md'}")
    print((workdir / "results.md").read_text())
    failed = [n for n, c in codes.items() if c]
    if failed:
        print(f"[sweep] {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
