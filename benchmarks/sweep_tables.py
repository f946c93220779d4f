"""Markdown tables of ``hf-rpg sweep`` results (for docs/results.md).

    python -m benchmarks sweep_tables runs/resnet-law/results.json [more results.json ...]

Prints, per sweep: the DoF law (RPG mean ± std per DoF, the dense reference, the fit), the
equal-DoF comparison when the sweep has narrow dense runs, the ablations when it has them,
and the training seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _pct(group: dict[str, Any]) -> str:
    return f"{100 * group['accuracy_mean']:.2f} ± {100 * group['accuracy_std']:.2f}"


def tables(document: dict[str, Any]) -> str:
    """The markdown of one ``results.json``."""
    settings, summary, runs = document["settings"], document["summary"], document["runs"]
    groups = summary["groups"]
    dense = next((g for g in groups if g["kind"] == "dense"), None)
    rpg = sorted((g for g in groups if g["kind"] == "rpg" and g["variant"] == "rpg-v1"), key=lambda g: g["ring_dof"])
    out = [f"**{settings['model']} on {settings['dataset']}** ({len(settings['seeds'])} seeds, {settings['epochs']} "
           f"epochs, {settings['max_train_samples'] or 'all'} training images, lr {settings['lr']})", ""]  # fmt: skip
    out += ["| dof | ring DoF | trainable | accuracy % (mean ± std) | vs dense |", "|---|---|---|---|---|"]
    for g in rpg:
        gap = f"{100 * (g['accuracy_mean'] - dense['accuracy_mean']):+.2f} pt" if dense else "-"
        out.append(f"| {g['dof']} | {g['ring_dof']:,} | {g['trainable']:,} | {_pct(g)} | {gap} |")
    if dense:
        out.append(f"| dense | - | {dense['trainable']:,} | {_pct(dense)} | |")
    fit = summary["fit"]
    if fit:
        out += ["", f"Fit over {fit['points']} DoFs: accuracy = {100 * fit['intercept']:.2f} + "
                f"{100 * fit['slope_per_decade']:.2f} · log10(ring DoF) points, R² = {fit['r2']:.3f}."]  # fmt: skip
    narrow = {g["dof"]: g for g in groups if g["kind"] == "narrow"}
    if narrow:
        widths = {r["dof"]: r["widths"] for r in runs if r["kind"] == "narrow"}
        head = "| dof | RPG trainable | RPG accuracy % | narrow dense widths | parameters | accuracy % | RPG ahead by |"
        out += ["", head, "|---|---|---|---|---|---|---|"]
        for g in rpg:
            n = narrow.get(g["dof"])
            if n is not None:
                ahead = 100 * (g["accuracy_mean"] - n["accuracy_mean"])
                out.append(f"| {g['dof']} | {g['trainable']:,} | {_pct(g)} | {'-'.join(map(str, widths[g['dof']]))} "
                           f"| {n['trainable']:,} | {_pct(n)} | {ahead:+.2f} pt |")  # fmt: skip
    variants = sorted({g["variant"] for g in groups if g["kind"] == "rpg"} - {"rpg-v1"})
    if variants:
        by = {(g["variant"], g["dof"]): g for g in groups if g["kind"] == "rpg"}
        out += ["", "| dof | ring DoF | rpg-v1 (global ring) | " + " | ".join(variants) + " |",
                "|---" * (3 + len(variants)) + "|"]  # fmt: skip
        for g in rpg:
            cells = []
            for v in variants:
                a = by.get((v, g["dof"]))
                cells.append(f"{_pct(a)} ({100 * (a['accuracy_mean'] - g['accuracy_mean']):+.2f})" if a else "-")
            out.append(f"| {g['dof']} | {g['ring_dof']:,} | {_pct(g)} | " + " | ".join(cells) + " |")
    seconds = sum(r["train_seconds"] for r in runs)
    out += ["", f"{len(runs)} runs, {seconds / 60:.1f} min of training in all; machine: {document['machine']}."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print the tables of every ``results.json`` given."""
    for path in sys.argv[1:] if argv is None else argv:
        print(tables(json.loads(Path(path).read_text(encoding="utf-8"))) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
