"""A sweep's results: the resumable ``runs.jsonl``, the log-linear fit, the summary,
``results.csv`` / ``results.json`` and the plots."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ABLATIONS, CSV_COLUMNS, RUNS_NAME, SweepConfig


def read_runs(directory: Path) -> list[dict[str, Any]]:
    """The finished runs recorded in ``directory/runs.jsonl``; a torn last line (a kill
    while writing) is dropped from the file."""
    path = directory / RUNS_NAME
    if not path.exists():
        return []
    runs, good = [], 0
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not line.endswith("\n") or not isinstance(record, dict) or "key" not in record:
            break
        runs.append(record)
        good += len(line)
    if good != len(text):
        path.write_text(text[:good], encoding="utf-8")
    return runs


def _append_run(directory: Path, record: dict[str, Any]) -> None:
    with open(directory / RUNS_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def log_linear_fit(dofs: Sequence[float], accuracies: Sequence[float]) -> dict[str, float] | None:
    """Least squares ``accuracy = intercept + slope * log10(dof)``, with R²; None for < 2 DoFs."""
    xs = [math.log10(d) for d in dofs]
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(accuracies) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, accuracies, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in accuracies)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, accuracies, strict=True))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return {"intercept": intercept, "slope_per_decade": slope, "r2": r2, "points": n}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of accuracy per (kind, variant, dof) and the fit of the
    ``rpg-v1`` means against ring DoF."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["kind"], run["variant"], run["dof"]), []).append(run)
    rows = []
    for (kind, variant, dof), members in groups.items():
        accuracy = [m["accuracy"] for m in members]
        mean = sum(accuracy) / len(accuracy)
        std = math.sqrt(sum((a - mean) ** 2 for a in accuracy) / (len(accuracy) - 1)) if len(accuracy) > 1 else 0.0
        rows.append({"kind": kind, "variant": variant, "dof": dof, "seeds": len(members), "accuracy_mean": mean,
                     "accuracy_std": std, "ring_dof": members[0].get("ring_dof"),
                     "trainable": members[0]["trainable"]})  # fmt: skip
    rpg = sorted((r for r in rows if r["kind"] == "rpg" and r["variant"] == "rpg-v1"), key=lambda r: r["ring_dof"])
    fit = log_linear_fit([r["ring_dof"] for r in rpg], [r["accuracy_mean"] for r in rpg])
    return {"groups": rows, "fit": fit}


def write_results(directory: Path, config: SweepConfig, runs: list[dict[str, Any]], machine: str) -> dict[str, Any]:
    """``results.csv`` and ``results.json`` from the finished runs; returns the summary."""
    summary = summarize(runs)
    with open(directory / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            writer.writerow({**run, "widths": " ".join(map(str, run.get("widths") or []))})
    document = {"settings": config.settings(), "machine": machine, "summary": summary, "runs": runs}
    (directory / "results.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return summary


def plot_results(directory: Path, config: SweepConfig, runs: list[dict[str, Any]]) -> list[Path]:
    """``sweep.png`` and ``convergence.png`` (matplotlib, Agg backend)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(runs)
    groups = summary["groups"]
    narrow = [g for g in groups if g["kind"] == "narrow"]
    fig, axes = plt.subplots(1, 2 if narrow else 1, figsize=(12 if narrow else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    markers = dict(zip(("rpg-v1", *ABLATIONS), "os^vD", strict=True))

    def series(variant: str, order: str) -> list[dict[str, Any]]:
        return sorted((g for g in groups if g["kind"] == "rpg" and g["variant"] == variant), key=lambda g: g[order])

    def bars(axis, rows: list[dict[str, Any]], x: str, **style: Any) -> None:
        xs, ys = [r[x] for r in rows], [100 * r["accuracy_mean"] for r in rows]
        axis.errorbar(xs, ys, yerr=[100 * r["accuracy_std"] for r in rows], capsize=3, **style)

    for variant in [v for v in ("rpg-v1", *ABLATIONS) if series(v, "ring_dof")]:
        label = "RPG (rpg-v1, global ring)" if variant == "rpg-v1" else variant.replace("_", " ")
        style = {"marker": markers[variant], "linestyle": "-" if variant == "rpg-v1" else ":", "label": label}
        bars(ax, series(variant, "ring_dof"), "ring_dof", **style)
    fit = summary["fit"]
    if fit is not None:
        xs = [g["ring_dof"] for g in series("rpg-v1", "ring_dof")]
        ys = [100 * (fit["intercept"] + fit["slope_per_decade"] * math.log10(x)) for x in xs]
        label = f"fit: {100 * fit['slope_per_decade']:.2f} points/decade, R² {fit['r2']:.3f}"
        ax.plot(xs, ys, "k--", linewidth=1, label=label)
    dense = [g for g in groups if g["kind"] == "dense"]
    for g in dense:
        ax.axhline(100 * g["accuracy_mean"], color="grey", label=f"dense ({g['trainable']:,} params)")
        if g["accuracy_std"]:
            low, high = 100 * (g["accuracy_mean"] - g["accuracy_std"]), 100 * (g["accuracy_mean"] + g["accuracy_std"])
            ax.axhspan(low, high, color="grey", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("ring DoF (log scale)")
    ax.set_ylabel("test accuracy (%)")
    seeds = len(config.seeds)
    ax.set_title(f"{config.model} on {config.dataset}, {config.epochs} epoch(s), {seeds} seed(s): mean ± std")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if narrow:
        ax = axes[0][1]
        bars(ax, series("rpg-v1", "trainable"), "trainable", marker="o", label="RPG, full width (trainable)")
        bars(ax, sorted(narrow, key=lambda g: g["trainable"]), "trainable", marker="s", label="narrow dense")
        for g in dense:
            bars(ax, [g], "trainable", marker="*", markersize=10, color="grey", linestyle="none", label="dense")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("equal DoF: RPG vs narrower dense networks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [directory / "sweep.png", directory / "convergence.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.8))
    curves: dict[str, list[list[list[float]]]] = {}
    for run in runs:
        if run["kind"] == "dense" or (run["kind"] == "rpg" and run["variant"] == "rpg-v1"):
            label = "dense" if run["kind"] == "dense" else f"RPG ring DoF {run['ring_dof']:,}"
            curves.setdefault(label, []).append(run["loss_curve"])
    for label, members in sorted(curves.items(), key=lambda kv: (kv[0] != "dense", len(kv[0]), kv[0])):
        length = min(len(c) for c in members)
        steps = [members[0][i][0] for i in range(length)]
        mean = [sum(c[i][1] for c in members) / len(members) for i in range(length)]
        ax.plot(steps, mean, label=label, color="black" if label == "dense" else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training loss (mean of {config.log_every} steps, over seeds)")
    ax.set_yscale("log")
    ax.set_title(f"convergence: {config.model} on {config.dataset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
