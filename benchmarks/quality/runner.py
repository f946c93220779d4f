"""The runner: runs a task's protocol, skips what the results file already holds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hf_rpg
from benchmarks.library_identity import kind_digests, probe_digest
from benchmarks.lr_selection import MAX_WIDENINGS, pick_lr, widen

from .methods import Plan
from .protocol import PROTOCOL_VERSION, REPO, SEEDS
from .record import fmt_lr, git_commit, machine, source_hash
from .results import append_result, read_results, run_key
from .tasks import Task
from .training import run_one


class Runner:
    def __init__(self, results: Path, smoke: bool):
        self.results = results
        self.smoke = smoke
        self.done = {run_key(r): r for r in read_results(results) if r.get("kind") == "run"}
        library = Path(hf_rpg.__file__).resolve().parent
        self.meta = {
            "commit": git_commit(library),  # of the hf_rpg that runs (it may be another checkout's)
            "hf_rpg_path": str(library),
            "hf_rpg_source": source_hash(library),
            "hf_rpg_numerics": probe_digest(),
            **kind_digests(),
            "script_commit": git_commit(REPO),
            "machine": machine(),
            "smoke": smoke,
            "protocol": PROTOCOL_VERSION,
        }
        self.count = 0

    def log(self, text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, flush=True)

    def note(self, rec: dict[str, Any]) -> None:
        """Append a non-run record (omitted budget, pretraining) unless it is already there."""
        key = json.dumps({k: v for k, v in rec.items() if k not in ("date",)}, sort_keys=True)
        for old in read_results(self.results):
            if (
                old.get("kind") == rec["kind"]
                and json.dumps({k: v for k, v in old.items() if k not in ("date",)}, sort_keys=True) == key
            ):
                return
        append_result(self.results, {**rec, "date": time.strftime("%Y-%m-%d %H:%M")})

    def run(self, task: Task, p: Plan, lr: float, seed: int) -> dict[str, Any]:
        probe = {"task": task.name, "method": p.method, "budget": p.budget, "config": p.config, "lr": lr, "seed": seed}
        probe.update({k: v for k, v in self.meta.items() if k.startswith("hf_rpg_numerics")})
        probe["protocol"] = PROTOCOL_VERSION
        key = run_key(probe)
        if key in self.done:
            return self.done[key]
        self.count += 1
        rec = run_one(task, p, lr, seed)
        rec.update(self.meta, date=time.strftime("%Y-%m-%d %H:%M"), settings=task.settings)
        append_result(self.results, rec)
        self.done[key] = rec
        flag = "" if rec["finite"] else "  NON-FINITE LOSS"
        self.log(
            f"[{self.count}] {task.name} {p.method} budget={p.budget} n={rec['trainable']:,} lr={fmt_lr(lr)} "
            f"seed={seed}: val {rec['val_acc']:.4f} test {rec['test_acc']:.4f} "
            f"train {rec['train_seconds']:.1f}s eval {rec['eval_seconds']:.1f}s rss {rec['peak_rss_mib']:.0f}MiB{flag}"
        )
        return rec

    def protocol(self, task: Task, p: Plan) -> None:
        if p.omitted:
            self.log(f"{task.name} {p.method} budget={p.budget}: omitted ({p.omitted})")
            self.note(
                {"kind": "omitted", "task": task.name, "method": p.method, "budget": p.budget, "reason": p.omitted}
            )
            return
        seeds = SEEDS[:1] if self.smoke else SEEDS
        if p.method == "head":
            for seed in seeds:
                self.run(task, p, p.lrs[0], seed)
            return
        lrs = list(p.lrs)
        grid = [self.run(task, p, lr, 0) for lr in lrs]
        for _ in range(0 if self.smoke else MAX_WIDENINGS):
            picked = pick_lr(grid)
            extra = None if picked is None else widen(lrs, picked)
            if extra is None:
                break
            self.log(f"  {task.name} {p.method} {p.budget}: best lr {fmt_lr(picked)} at a grid edge, +{fmt_lr(extra)}")
            lrs.append(extra)
            grid.append(self.run(task, p, extra, 0))
        picked = pick_lr(grid)
        if picked is None:
            self.log(f"  {task.name} {p.method} {p.budget}: no finite run on the grid")
            return
        for seed in seeds[1:]:
            self.run(task, p, picked, seed)


# ---------------------------------------------------------------------------- report
