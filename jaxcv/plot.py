"""Plots of sweeps and runs (matplotlib, Agg backend: no display needed).

    python -m jaxcv.plot --sweep_dir=DIR --x=loss.gamma --y=AP50 [--series=loss.alpha] [--out=FILE.png]
    python -m jaxcv.plot --workdirs=A,B,... --curves [--y=AP] [--out=FILE.png]

The first draws a metric against a swept value from a `jaxcv.sweep` directory: one point per setting
at the mean over its seeds with a ±1 sample-std error bar, each annotated with its run name. Numeric
values get a numeric axis; names (encoders) and tuples (anchor scales) are placed in sweep order.
The second overlays the training curves of several workdirs from their `metrics.jsonl` (like
`jaxcv.viz.plot_training_curves` does for one run): training loss over steps, and evaluation metrics
over steps (a run evaluated only at its end is one point).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxcv.sweep import collect


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_label(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _matches(value: Any, wanted: str) -> bool:
    """`--where` comparison: numerically for numbers (`0` matches 0.0), else by the text of the value."""
    if _numeric(value):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    return _label(value) == wanted or str(value) == wanted


def sweep_points(sweep_dir: str | Path, x: str, y: str, series: str | None = None,
                 where: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """[{setting, x, y, std, n, series}] of the finished settings of a sweep directory (mean/std over
    seeds, as in its results.csv); `where` keeps the settings whose swept keys have those values."""
    _, groups, keys, _ = collect(sweep_dir)
    for k in (x, series, *(where or {})):
        if k and k not in keys:
            raise ValueError(f"{k!r} is not a swept key of {sweep_dir}; swept: {', '.join(keys) or 'none'}")
    points = []
    for g in groups:
        if y not in g:
            raise ValueError(f"metric {y!r} not in {sweep_dir}'s results")
        if g["num_seeds"] == 0 or not math.isfinite(g[y]):
            continue
        if where and not all(_matches(g[k], v) for k, v in where.items()):
            continue
        points.append({"setting": g["setting"], "x": g[x], "y": g[y], "std": g[f"{y}_std"],
                       "n": g["num_seeds"], "series": g[series] if series else None})
    if not points:
        raise ValueError(f"no finished run with {y!r} in {sweep_dir}")
    return points


def plot_sweep(sweep_dir: str | Path, x: str, y: str, out: str | Path | None = None,
               series: str | None = None, title: str | None = None, where: dict[str, str] | None = None) -> Path:
    """Metric `y` against swept key `x` (points annotated with run names, error bars over seeds);
    `where` ({key: value}) keeps a subset of the settings."""
    plt = _pyplot()
    sweep_dir = Path(sweep_dir)
    points = sweep_points(sweep_dir, x, y, series, where)
    numeric = all(_numeric(p["x"]) for p in points)
    if not numeric:  # categories in sweep order
        cats: list[str] = []
        for p in points:
            if _label(p["x"]) not in cats:
                cats.append(_label(p["x"]))
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    groups: dict[str, list[dict[str, Any]]] = {}
    stacked: dict[tuple[float, float], int] = {}
    for p in points:
        groups.setdefault(_label(p["series"]) if series else "", []).append(p)
    for label, pts in groups.items():
        xs = [p["x"] if numeric else cats.index(_label(p["x"])) for p in pts]
        ys = [p["y"] for p in pts]
        errs = [p["std"] if math.isfinite(p["std"]) else 0.0 for p in pts]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        unique_x = len(set(xs)) == len(xs)
        line = numeric and unique_x and len(xs) > 1  # categories (encoders, anchor sets) are not joined
        ax.errorbar([xs[i] for i in order], [ys[i] for i in order], yerr=[errs[i] for i in order],
                    fmt="o-" if line else "o", capsize=4, label=f"{series}={label}" if series else None)
        for k, (xi, p) in enumerate(zip(xs, pts, strict=True)):
            note = p["setting"] + (f" (n={p['n']})" if p["n"] > 1 else "")
            spot = (round(float(xi), 6), round(p["y"], 6))
            stacked[spot] = stacked.get(spot, -1) + 1  # coincident points: their names one under another
            dy = (7 if order.index(k) % 2 == 0 else -12) - 10 * stacked[spot]  # alternate along x
            ax.annotate(note, (xi, p["y"]), textcoords="offset points", xytext=(5, dy), fontsize=7)
    if not numeric:
        ax.set_xticks(range(len(cats)), cats, rotation=15 if max(map(len, cats)) > 8 else 0)
        ax.set_xlim(-0.5, len(cats) - 0.5 + 0.9)  # room for the last annotation
    else:
        lo, hi = min(p["x"] for p in points), max(p["x"] for p in points)
        pad = 0.08 * (hi - lo) if hi > lo else 0.5
        ax.set_xlim(lo - pad, hi + 3 * pad)
    ax.set_xlabel(x)
    ax.set_ylabel(y + (" (mean ± std over seeds)" if any(p["n"] > 1 for p in points) else ""))
    ax.set_title(title or f"{y} vs {x} ({sweep_dir.name})")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out) if out else sweep_dir / f"{y}_vs_{x}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_curves(workdirs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] = (),
                labels: Sequence[str] | None = None) -> Path:
    """Training loss and evaluation metrics over steps of several runs, one colour per run.

    `metrics`: the eval metrics to draw (default: each run's first eval metric, e.g. AP or accuracy).
    """
    from jaxcv.logs import read_metrics

    plt = _pyplot()
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11.0, 4.2), sharex=True)  # one eval point: at its step
    labels = list(labels) if labels else [Path(w).name for w in workdirs]
    values: list[float] = []
    for i, (wd, label) in enumerate(zip(workdirs, labels, strict=True)):
        records = read_metrics(wd)
        if not records:
            raise FileNotFoundError(f"{wd} has no metrics.jsonl records")
        color = f"C{i % 10}"
        train = [r for r in records if r["split"] == "train" and _finite(r.get("loss"))]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color=color, label=label)
        values += [r["loss"] for r in train]
        evals = [r for r in records if r["split"] == "eval"]
        names = list(metrics)
        if not names and evals:  # the run's first eval metric (AP, accuracy, mIoU ...)
            names = [k for k in evals[-1] if k not in ("step", "split") and _finite(evals[-1][k])][:1]
        for j, m in enumerate(names):
            pts = [(r["step"], r[m]) for r in evals if _finite(r.get(m)) and r[m] != -1]
            if pts:
                ax_eval.plot(*zip(*pts, strict=True), marker="os^dv"[j % 5], color=color,
                             linestyle="-" if j == 0 else "--", label=f"{label}: {m} ({pts[-1][1]:.3g})")
    if values and all(v > 0 for v in values) and max(values) / min(values) > 10:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    ax_eval.set_xlabel("step")
    ax_eval.set_title("evaluation")
    ax_eval.grid(alpha=0.3)
    if ax_eval.lines:
        ax_eval.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _finite(v: Any) -> bool:
    return _numeric(v) and math.isfinite(v)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxcv.plot", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep_dir", default="", help="a jaxcv.sweep --workdir")
    parser.add_argument("--x", default="", help="swept key for the x axis, e.g. loss.gamma")
    parser.add_argument("--y", default="", help="metric, e.g. AP50 (with --curves: comma-separated eval metrics)")
    parser.add_argument("--series", default="", help="swept key drawn as separate lines (optional)")
    parser.add_argument("--title", default="")
    parser.add_argument("--where", default="", help="keep settings with these swept values: k=v[,k=v]")
    parser.add_argument("--workdirs", default="", help="comma-separated run workdirs (with --curves)")
    parser.add_argument("--curves", action="store_true", help="training curves of --workdirs")
    parser.add_argument("--out", default="", help="output PNG")
    args = parser.parse_args(argv)
    if args.curves:
        if not args.workdirs:
            parser.error("--curves needs --workdirs=A,B,...")
        dirs = [w for w in args.workdirs.split(",") if w]
        out = plot_curves(dirs, args.out or "curves.png", [m for m in args.y.split(",") if m])
    else:
        if not (args.sweep_dir and args.x and args.y):
            parser.error("give --sweep_dir, --x and --y (or --curves --workdirs=...)")
        where = dict(kv.split("=", 1) for kv in args.where.split(",") if kv) if args.where else None
        out = plot_sweep(args.sweep_dir, args.x, args.y, args.out or None, args.series or None, args.title or None,
                         where)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
