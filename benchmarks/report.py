"""Render benchmark results (the JSON that run.py writes) as markdown."""

from __future__ import annotations

GOALS = {
    "step_ratio": 1.10,
    "step_ratio_gpu": 1.05,
    "generation_ns": 6.0,
    "inference_ratio": 1.02,
    "peer_ratio": 1.04,
}


def _verdict(value: float, goal: float) -> str:
    if value <= goal:
        return f"met (goal <= {goal:g})"
    return f"missed by {100 * (value / goal - 1):.1f}% (goal <= {goal:g})"


def _spread(row: dict) -> str:
    ratios = row.get("ratios") or [row["ratio"]]
    return f"{min(ratios):.3f}-{max(ratios):.3f} ({len(ratios)})"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"  # GPU steps take a few ms


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _machine(m: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    gpu = m["cuda"] or "none"
    return (
        f"Measured {m['date']} on {m['cpu']} ({m['logical_cores']} logical cores), "
        f"torch threads: {m['torch_threads']}, GPU: {gpu}, timed models on: {m.get('device', 'cpu')}, "
        f"Python {m['python']}; {versions}."
    )


def _step(rows: list[dict], device: str = "cpu") -> str:
    goal = GOALS["step_ratio_gpu"] if device.startswith("cuda") else GOALS["step_ratio"]
    table = _table(
        [
            "workload",
            "RPG config",
            "generated",
            "trainable",
            "dense ms",
            "RPG ms",
            "ratio",
            "range (processes)",
            "goal",
        ],
        [
            [
                r["workload"],
                r["config"],
                f"{r['generated']:,}",
                f"{r['trainable']:,}",
                _ms(r["dense_ms"]),
                _ms(r["rpg_ms"]),
                f"{r['ratio']:.3f}",
                _spread(r),
                _verdict(r["ratio"], goal),
            ]
            for r in rows
        ],
    )
    return (
        "## 1. Train-step time, RPG / dense\n\nForward, backward and AdamW on the same model and batch, "
        "dense and RPG (same initialisation) timed alternately in one process (median of 7 steps after "
        "warm-up); each case in several fresh processes, the table shows the process with the median ratio "
        "and the range over processes (timings move by 10-20% between processes on this shared machine).\n\n" + table
    )


def _memory(data: dict) -> str:
    per = data["bytes_per_generated_element"]
    first = _table(
        ["what", "bytes per generated element"],
        [
            ["int32 index cache (default)", f"{per['index_cache_int32']:.2f}"],
            ['on-the-fly indices (`index_cache="none"`)', f"{per['index_cache_none']:.2f}"],
            [
                "training output buffer kept between steps (the generated weights)",
                f"{per['training_buffer_between_steps']:.2f}",
            ],
            ["reference implementation (int64 index + float32 sign)", f"{per['reference_implementation']:.0f}"],
        ],
    )
    second = _table(
        ["workload (dof=0.1)", "dense peak RSS MiB", "RPG peak RSS MiB", "dense step MiB", "RPG step MiB"],
        [
            [
                p["workload"],
                f"{p['dense_peak_mib']:.0f}",
                f"{p['rpg_peak_mib']:.0f}",
                f"{p['dense_step_mib']:.0f}",
                f"{p['rpg_step_mib']:.0f}",
            ]
            for p in data["peak_rss"]
        ],
    )
    return (
        "## 2. Memory\n\n" + first + "\n\nPeak resident memory of a process that builds the model and runs two "
        'training steps ("step" = peak minus the resident size before the first step).\n\n' + second
    )


def _generation(rows: list[dict]) -> str:
    table = _table(
        ["ring N", "elements P", "indices", "forward ns/elt", "forward+backward ns/elt", "goal", "cache build ns/elt"],
        [
            [
                f"{r['ring']:,}",
                f"{r['elements']:,}",
                r["index"],
                f"{r['forward_ns']:.2f}",
                f"{r['forward_backward_ns']:.2f}",
                _verdict(r["forward_backward_ns"], GOALS["generation_ns"]) if r["index"] == "int32 cache" else "-",
                f"{r['cache_build_ns']:.1f}",
            ]
            for r in rows
        ],
    )
    return (
        "## 3. Generation throughput\n\nEight targets of P/8 elements each on one ring, generated into the reusable "
        "buffer and back-propagated (scatter-add into the signed ring); single process.\n\n" + table
    )


def _embeddings(data: dict) -> str:
    return (
        "## 4. Embeddings: looked-up rows only\n\n"
        f"Forward + backward of a {data['shape'][0]:,} x {data['shape'][1]} generated embedding for a "
        f"{data['batch'][0]} x {data['batch'][1]} batch: rows only {data['rows_ms']:.1f} ms, whole table "
        f"{data['full_ms']:.1f} ms, **{data['speedup']:.1f}x** faster."
    )


def _load(data: dict) -> str:
    table = _table(
        ["", "bytes on disk", "from_pretrained s", "load + first forward s"],
        [
            [
                "transformers, dense safetensors",
                f"{data['dense_bytes']:,}",
                f"{data['dense_seconds']:.2f}",
                f"{data['dense_first_output_seconds']:.2f}",
            ],
            [
                "hf_rpg checkpoint",
                f"{data['rpg_bytes']:,}",
                f"{data['rpg_seconds']:.2f}",
                f"{data['rpg_first_output_seconds']:.2f}",
            ],
            [
                "ratio",
                f"{data['rpg_bytes'] / data['dense_bytes']:.3f}",
                f"{data['rpg_seconds'] / data['dense_seconds']:.2f}",
                f"{data['rpg_first_output_seconds'] / data['dense_first_output_seconds']:.2f}",
            ],
        ],
    )
    return (
        f"## 5. Loading\n\n{data['model']}; each load in a fresh process with the model classes already "
        'imported, median of three; "first forward" adds one eval batch of 8 x 128 tokens (the RPG model '
        "generates its weights there).\n\n" + table
    )


def _inference(data: dict) -> str:
    text = (
        f"## 6. Inference\n\n{data['workload']}, no grad, weights materialised once: dense "
        f"{data['dense_ms']:.1f} ms, RPG {data['rpg_ms']:.1f} ms, ratio **{data['ratio']:.3f}** (range over "
        f"processes {_spread(data)}) — {_verdict(data['ratio'], GOALS['inference_ratio'])}.\n\n"
    )
    c = data["compile"]
    if c.get("works"):
        reasons = "; ".join(c["break_reasons"]) or "none"
        training_reasons = "; ".join(c.get("training_break_reasons", [])) or "none"
        text += (
            f"`torch.compile(rpg_model)` works. Inference (no grad): {c['graph_breaks']} graph break(s) "
            f"({reasons}); largest difference to eager {c['max_abs_difference']:.2e}; first call "
            f"{c['first_call_seconds']:.1f} s; eager {c['eager_ms']:.1f} ms vs compiled {c['compiled_ms']:.1f} ms. "
            f"Training (grad): {c.get('training_graph_breaks', '?')} graph break(s) ({training_reasons})."
        )
    else:
        text += f"`torch.compile(rpg_model)` failed: {c['error']}"
    return text


def _peers(rows: list[dict]) -> str:
    if "ratio" not in rows[0]:
        return "## 7. Peers\n\n" + rows[0]["method"]
    table = _table(
        [
            "method",
            "step ms",
            "ratio to frozen base",
            "range (processes)",
            "trainable",
            "adapter bytes",
            "buffer bytes added",
        ],
        [
            [
                r["method"],
                _ms(r["step_ms"]),
                f"{r['ratio']:.3f}",
                _spread(r),
                f"{r['trainable']:,}",
                f"{r['adapter_bytes']:,}" if "adapter_bytes" in r else "-",
                f"{r['buffer_bytes']:,}" if "buffer_bytes" in r else "-",
            ]
            for r in rows
        ],
    )
    return (
        "## 7. Peers: MiniLM fine-tuning, side by side\n\nall-MiniLM-L6-v2 with a 2-class head, batch 16 x 64 "
        "tokens. The frozen base trains only the classifier but back-propagates through every layer (as any "
        "adapter must). PEFT methods target query and value; hf_rpg delta is shown with its defaults (query "
        "and value, full rank), with low-rank updates (rank='auto') and on every layer (embeddings included), "
        "with a ring of 73,728 "
        "(LoRA r=8's trainable size) unless the row says otherwise. Buffer bytes: registered buffers PEFT adds "
        "(projections, indices); for hf_rpg, its index cache plus the reusable training buffers.\n\n"
        f"{table}\n\n{_peer_verdicts(rows)}"
    )


def _peer_verdicts(rows: list[dict]) -> str:
    """hf_rpg's defaults and its low-rank option against LoRA at the same trainable count:
    step ratio <= LoRA's, and bytes added (adapter file plus buffers) <= LoRA's + 10%."""
    lines = []
    by_trainable = {r["trainable"]: r for r in rows if r["method"].startswith("LoRA")}
    for row in rows:
        if not row["method"].startswith(("hf_rpg delta, defaults", "hf_rpg delta, rank=")):
            continue
        lora = by_trainable.get(row["trainable"])
        if lora is None:
            lines.append(f"- {row['method']}: no LoRA row with {row['trainable']:,} trainable parameters")
            continue
        added = row["adapter_bytes"] + row["buffer_bytes"]
        lora_added = lora["adapter_bytes"] + lora["buffer_bytes"]
        step = "met" if row["ratio"] <= lora["ratio"] else f"missed by {100 * (row['ratio'] / lora['ratio'] - 1):.1f}%"
        memory = "met" if added <= 1.1 * lora_added else f"missed by {100 * (added / (1.1 * lora_added) - 1):.1f}%"
        lines.append(
            f"- {row['method']} vs {lora['method']} (both {row['trainable']:,} trainable): step ratio "
            f"{row['ratio']:.3f} vs {lora['ratio']:.3f}, {step} (goal <= LoRA's); bytes added (adapter file + "
            f"buffers) {added:,} vs {lora_added:,}, {memory} (goal <= LoRA's + 10%)"
        )
    return "\n".join(lines)


def render(results: dict) -> str:
    parts = [
        "# hf_rpg benchmarks",
        "Written by `python -m benchmarks suite`"
        + (" --quick" if results.get("quick") else "")
        + ". "
        + _machine(results["machine"]),
        "See `docs/performance.md` for what the numbers mean and what would close each missed goal.",
    ]
    device = results["machine"].get("device", "cpu")
    renderers = {
        "step": lambda rows: _step(rows, device),
        "memory": _memory,
        "generation": _generation,
        "embeddings": _embeddings,
        "load": _load,
        "inference": _inference,
        "peers": _peers,
    }
    for name, renderer in renderers.items():
        if name in results:
            parts.append(renderer(results[name]))
    return "\n\n".join(parts) + "\n"
