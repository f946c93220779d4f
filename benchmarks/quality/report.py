"""The markdown report and its plots, rebuilt from the results file alone."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.lr_selection import pick_lr

from . import verdicts as quality_verdicts
from .protocol import METHODS, PEERS, PLOT_DIR_NAME, PROTOCOL, PROTOCOL_VERSION, SEEDS, SUPERSEDED, is_rpg
from .record import fmt_count, fmt_lr
from .results import library_version, protocol_of, read_results


def _groups(runs: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        config = json.dumps(r["config"], sort_keys=True)
        key = (r["task"], r["method"], json.dumps(r["budget"]), config, library_version(r), protocol_of(r))
        out.setdefault(key, []).append(r)
    return out


def _method_rank(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


NUM_CLASSES = {"text": 2, "vision": 5}
NEAR_CHANCE = 0.03  # a run whose test accuracy is below chance + 3 points learnt (next to) nothing
SPREAD_GOAL = 0.015  # issue 17, item 4: a protocol long enough that seeds spread at most 1.5 points


def near_chance(rec: dict[str, Any]) -> bool:
    return rec["test_acc"] < 1 / NUM_CLASSES.get(rec["task"], 2) + NEAR_CHANCE


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, method, budget, config): the picked lr and the seeds at it."""
    rows = []
    for (task, method, _, _, library, protocol), group in _groups(runs).items():
        picked = pick_lr(group)
        if picked is None:
            continue
        at = sorted((r for r in group if math.isclose(r["lr"], picked)), key=lambda r: r["seed"])
        tests = [r["test_acc"] for r in at]
        seed0 = next(r for r in at if r["seed"] == 0)
        lrs = sorted({r["lr"] for r in group if r["seed"] == 0})
        grid = {r["lr"]: r["val_acc"] for r in group if r["seed"] == 0}
        rows.append(
            {
                "task": task,
                "method": method,
                "budget": seed0["budget"],
                "config": seed0["config"],
                "library": library,
                "protocol": protocol,
                "label": method if library is None else f"{method} [hf_rpg {library}]",
                "trainable": seed0["trainable"],
                "lr": picked,
                "edge": len(lrs) > 1 and (math.isclose(picked, lrs[0]) or math.isclose(picked, lrs[-1])),
                "lrs": lrs,
                "grid": grid,
                "val_acc": seed0["val_acc"],
                "test_mean": statistics.fmean(tests),
                "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "n": len(tests),
                "near_chance": sum(near_chance(r) for r in at),
                "spe": statistics.fmean(r["seconds_per_epoch"] for r in at),
                "run_seconds": statistics.fmean(r["train_seconds"] + r["eval_seconds"] for r in group),
                "rss": max(r["peak_rss_mib"] for r in at),
                "finite": all(r["finite"] for r in group),
                "runs": len(group),
            }
        )
    rows.sort(key=lambda r: (r["task"], _method_rank(r["method"]), r["trainable"]))
    return rows


def _config_text(method: str, config: dict[str, Any]) -> str:
    if not config:
        return ""
    parts = []
    for k, v in config.items():
        if k in ("dof", "theta_d_length"):
            continue
        parts.append(f"{k}={v}")
    return ", ".join(parts).replace("|", "/")


def _budget_label(budget: Any) -> str:
    if isinstance(budget, int) and budget >= 1000:
        return f"{budget // 1000}k" if budget % 1000 == 0 else f"{budget:,}"
    return str(budget)


def plot(rows: list[dict[str, Any]], task: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    task_rows = [r for r in rows if r["task"] == task]
    labels = sorted({(r["method"], r["label"]) for r in task_rows}, key=lambda m: (_method_rank(m[0]), m[1]))
    colors = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for number, (method, label) in enumerate(labels):
        mrows = sorted((r for r in task_rows if r["label"] == label), key=lambda r: r["trainable"])
        if method == "head":
            r = mrows[0]
            ax.axhline(
                100 * r["test_mean"], color="grey", linestyle=":", label=f"head only ({100 * r['test_mean']:.1f})"
            )
            continue
        ours = is_rpg(method)
        ax.errorbar(
            [r["trainable"] for r in mrows],
            [100 * r["test_mean"] for r in mrows],
            yerr=[100 * r["test_std"] for r in mrows],
            marker="s" if method == "full" else ("^" if ours else "o"),
            linestyle="--" if ours else "-",
            color=colors(number % 20),
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters of the method (head excluded)")
    ax.set_ylabel("test accuracy (%), mean ± std over the seeds")
    ax.set_title(f"{task}: test accuracy vs trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _best_per_budget(rows: list[dict[str, Any]], budgets: list[int], keep: Callable[[str], bool]) -> list[str]:
    """For each budget, the row with the best test mean among the methods ``keep`` accepts
    (rows with every seed only), as "8k: label mean ± std"."""
    best = []
    for b in budgets:
        candidates = [r for r in rows if r["budget"] == b and keep(r["method"]) and r["n"] == len(SEEDS)]
        if candidates:
            top = max(candidates, key=lambda r: r["test_mean"])
            best.append(
                f"{_budget_label(b)}: {top['label']} {100 * top['test_mean']:.2f} ± {100 * top['test_std']:.2f}"
            )
    return best


def _task_section(
    task: str,
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    omitted: list[dict[str, Any]],
    out: Path,
    *,
    plots: bool,
    heading: str = "##",
    plot_suffix: str = "",
) -> list[str]:
    """The markdown of one task under one protocol: its table, best rows, near-chance runs, lr grids,
    plot and omitted budgets (``rows`` and ``runs`` of that protocol only)."""
    trows = [r for r in rows if r["task"] == task]
    if not trows:
        return []
    settings = next(r for r in runs if r["task"] == task).get("settings", {})
    lines = [f"{heading} {task}: {settings.get('model', '')} on {settings.get('data', '')}", ""]
    lines.append(
        f"Train {settings.get('train')}, validation {settings.get('val')}, test {settings.get('test')}, "
        f"batch {settings.get('batch_size')}, {settings.get('epochs')} epoch(s). Mean time of one run "
        f"(training + validation + test evaluation) over the {sum(r['runs'] for r in trows)} runs of this "
        f"task: {statistics.fmean(r['run_seconds'] for r in trows):.1f} s."
    )
    lines.append("")
    lines.append(
        "| method | budget | trainable | config | picked lr | val acc (seed 0) | test acc mean ± std (n) "
        "| s/epoch | peak RSS MiB |"
    )
    lines.append("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in trows:
        lr = fmt_lr(r["lr"]) + (" (edge)" if r["edge"] else "")
        warn = "" if r["finite"] else " ⚠ non-finite loss"
        if r["near_chance"]:
            warn += f" ⚠ {r['near_chance']} near chance"
        lines.append(
            f"| {r['label']} | {_budget_label(r['budget'])} | {fmt_count(r['trainable'])} "
            f"| {_config_text(r['method'], r['config'])} | {lr} | {100 * r['val_acc']:.2f} "
            f"| {100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f} ({r['n']}){warn} | {r['spe']:.1f} "
            f"| {r['rss']:.0f} |"
        )
    lines.append("")
    budgets = sorted({r["budget"] for r in trows if isinstance(r["budget"], int) and r["budget"] > 0})
    for title, keep in (("Best peer per budget", lambda m: m in PEERS), ("Best hf_rpg variant per budget", is_rpg)):
        best = _best_per_budget(trows, budgets, keep)
        if best:
            lines += [f"**{title}** (test mean, 3 seeds): " + "; ".join(best) + ".", ""]
    seeded = [r for r in trows if r["n"] == len(SEEDS)]
    if seeded:
        widest = max(seeded, key=lambda r: r["test_std"])
        at_picks = sum(r["near_chance"] for r in seeded)
        lines += [
            f"Protocol check (issue 17, item 4: no method near chance, seed spreads <= {100 * SPREAD_GOAL:.1f} "
            f"points): over the {len(seeded)} rows with every seed, the widest spread is {widest['label']} "
            f"{_budget_label(widest['budget'])} at {100 * widest['test_std']:.2f}; "
            f"{sum(r['test_std'] > SPREAD_GOAL for r in seeded)} row(s) above {100 * SPREAD_GOAL:.1f}; "
            f"{at_picks} run(s) at the picks near chance.",
            "",
        ]
    chance = [r for r in runs if r["task"] == task and near_chance(r)]
    if chance:
        limit = 100 * (1 / NUM_CLASSES.get(task, 2) + NEAR_CHANCE)
        listed = ", ".join(
            f"{r['method']} {_budget_label(r['budget'])} lr {fmt_lr(r['lr'])} seed {r['seed']} "
            f"({100 * r['test_acc']:.1f})"
            for r in sorted(chance, key=lambda r: (_method_rank(r["method"]), str(r["budget"]), r["lr"]))
        )
        lines += [
            f"Runs that ended near chance (test accuracy below {limit:.0f}%; a collapse to one class, or too "
            f"little change, under this short schedule): {len(chance)} of "
            f"{sum(1 for r in runs if r['task'] == task)}: {listed}.",
            "",
        ]
    lines += ["Validation accuracy (seed 0) of every lr tried (picked in bold):", ""]
    for r in trows:
        if len(r["grid"]) < 2:
            continue
        cells = [
            (f"**{fmt_lr(lr)}: {100 * acc:.2f}**" if math.isclose(lr, r["lr"]) else f"{fmt_lr(lr)}: {100 * acc:.2f}")
            for lr, acc in sorted(r["grid"].items())
        ]
        lines.append(f"- {r['label']} {_budget_label(r['budget'])}: " + ", ".join(cells))
    lines.append("")
    if plots:
        png = out.parent / PLOT_DIR_NAME / f"{task}{plot_suffix}.png"
        if plot(trows, task, png):
            lines += [f"![{task}: test accuracy vs trainable parameters]({PLOT_DIR_NAME}/{task}{plot_suffix}.png)", ""]
    tomit = [o for o in omitted if o["task"] == task]
    if tomit:
        lines += ["Omitted budgets:", ""]
        seen = set()
        for o in sorted(tomit, key=lambda o: (_method_rank(o["method"]), o["budget"])):
            key = (o["method"], o["budget"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- {o['method']} {_budget_label(o['budget'])}: {o['reason']}")
        lines.append("")
    return lines


def report(results: Path, out: Path, *, plots: bool = True) -> str:
    records = read_results(results)
    runs = [r for r in records if r.get("kind") == "run"]
    omitted = [r for r in records if r.get("kind") == "omitted"]
    pretrain = [r for r in records if r.get("kind") == "pretrain"]
    rows = [r for r in summarise(runs) if r["method"] not in SUPERSEDED]
    lines = ["# Fine-tuning quality at equal trainable budgets", ""]
    lines.append(
        "Generated by `python -m benchmarks quality --report-only` from its results file "
        f"(`{results.name}`, {len(runs)} runs). Measured numbers only; nothing here is extrapolated."
    )
    lines.append("")
    if runs:
        meta = runs[-1]
        m = meta.get("machine", {})
        v = m.get("versions", {})
        dates = sorted(r.get("date", "") for r in runs)
        commits = sorted({r.get("commit", "?") for r in runs})
        lines += [
            f"- Machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} logical CPUs, "
            f"{m.get('torch_threads', '?')} torch thread(s) (OMP_NUM_THREADS={m.get('omp_num_threads')}); "
            f"{m.get('platform', '?')}, Python {m.get('python', '?')}",
            f"- Versions: torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}, "
            f"numpy {v.get('numpy')}",
            f"- Runs from {dates[0]} to {dates[-1]}; report written {time.strftime('%Y-%m-%d %H:%M')}; "
            f"commit(s) of the hf_rpg that ran: {', '.join(commits)}",
            "",
        ]
    lines += ["## Protocol", "", PROTOCOL, ""]
    for p in pretrain:
        lines.append(
            f"ViT pretraining (classes 0-4, cached): {p['train_images']:,} images, {p['epochs']} epoch(s), batch "
            f"{p['batch_size']}, AdamW lr {p['lr']:g} weight decay {p['weight_decay']}, {p['schedule']}: "
            f"test accuracy on the {p['test_images']:,} test images of classes 0-4 = **{100 * p['test_acc']:.2f}%** "
            f"({p['seconds']:.0f} s)."
        )
        lines.append("")
    current = [r for r in rows if r["protocol"] == PROTOCOL_VERSION]
    current_runs = [r for r in runs if protocol_of(r) == PROTOCOL_VERSION]
    if not current:
        lines += [f"No run of protocol {PROTOCOL_VERSION} has finished yet.", ""]
    for task in ("text", "vision"):
        lines += _task_section(task, current, current_runs, omitted, out, plots=plots)
    for old in sorted({r["protocol"] for r in rows} - {PROTOCOL_VERSION}, reverse=True):
        lines += [
            f"## Protocol {old} (superseded)",
            "",
            "Its runs are kept in the results file; they rank methods after too few steps (see the protocol).",
            "",
        ]
        old_runs = [r for r in runs if protocol_of(r) == old]
        old_rows = [r for r in rows if r["protocol"] == old]
        for task in ("text", "vision"):
            lines += _task_section(
                task, old_rows, old_runs, omitted, out, plots=plots, heading="###", plot_suffix=f"-protocol{old}"
            )
    check_path = results.with_name(results.stem + "-defaults-check.json")
    check = json.loads(check_path.read_text()) if check_path.is_file() else None
    lines += quality_verdicts.verdict_lines(current, check)
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


# ---------------------------------------------------------------------------- main
