"""The measurements of the benchmark suite, one function per section of suite.md (the PEFT peers: peers.py)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (
    ROOT,
    bench_device,
    bert_mini_workload,
    fresh_pair,
    interleaved_medians,
    minilm_workload,
    resnet18_workload,
    to_device,
    train_step_fn,
    vit_workload,
)
from hf_rpg import RPGConfig, RPGModel, apply_rpg
from hf_rpg.api.checkpoint import checkpoint_bytes
from hf_rpg.format.manifest import Layout, RingLayout, TargetLayout
from hf_rpg.runtime.buffer_pool import BufferPool
from hf_rpg.runtime.index_cache import RingIndices
from hf_rpg.runtime.ring_autograd import _GenerateFromRing, _Request
from hf_rpg.spec.generator import build_signed_index, derive_key

LORA_R8_MINILM = 73_728  # LoRA r=8 on query and value of MiniLM: 6 layers x 2 x 8 x (384 + 384)
LORA_R1_MINILM = LORA_R8_MINILM // 8


# ------------------------------------------------------------------------------ 1. step time


STEP_CASES = {
    "vit": (vit_workload, {"dof": 0.1}),
    "resnet18": (resnet18_workload, {"dof": 0.1}),
    "bert-mini": (bert_mini_workload, {"dof": 0.1}),
    "minilm-delta": (minilm_workload, {"mode": "delta", "dof": LORA_R8_MINILM}),
}


def step_case(name: str, repeats: int) -> dict:
    """One process's measurement of a step-time case (run by ``worker.py``)."""
    make, options = STEP_CASES[name]
    workload = make()
    config = RPGConfig(**options)
    dense, base = fresh_pair(workload)
    rpg = apply_rpg(base, config)
    dense, batch = to_device(dense, workload.batch())
    rpg = rpg.to(bench_device())
    times = interleaved_medians(
        {"dense": train_step_fn(dense, batch), "rpg": train_step_fn(rpg, batch)}, repeats=repeats
    )
    report = rpg.dof_report()
    return {
        "workload": workload.description,
        "config": f"{config.mode}, dof={config.dof}",
        "generated": report.generated_elements,
        "trainable": report.trainable,
        "dense_ms": 1e3 * times["dense"]["median"],
        "rpg_ms": 1e3 * times["rpg"]["median"],
        "ratio": times["rpg"]["median"] / times["dense"]["median"],
    }


def step_time(quick: bool) -> list[dict]:
    """Train-step time of RPG vs the same dense model on the same batch, measured in
    ``processes`` fresh processes (timings vary from process to process on a shared
    machine): the median process and the range of the ratio."""
    processes, repeats = (1, 5) if quick else (3, 7)
    rows = []
    for name in STEP_CASES:
        runs = [run_worker("step", name, repeats) for _ in range(processes)]
        rows.append(summarise(runs))
    return rows


def run_worker(section: str, case: str, repeats: int) -> dict | list:
    """Run one measurement in a fresh Python process and return its JSON result."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        section,
        case,
        str(repeats),
        str(torch.get_num_threads()),  # run.py --threads
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {section}/{case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """The run with the median ratio, plus the ratios of all runs."""
    ordered = sorted(runs, key=lambda r: r["ratio"])
    middle = dict(ordered[len(ordered) // 2])
    middle["ratios"] = [r["ratio"] for r in runs]
    return middle


# ------------------------------------------------------------------------------ 2. memory


MEMORY_PROBE = """
import json, sys, torch
from benchmarks.common import {workload}, train_step_fn
from hf_rpg import RPGConfig, apply_rpg
torch.set_num_threads(1)
torch.manual_seed(0)
w = {workload}()
model = w.build()
if {rpg!r}:
    model = apply_rpg(model, RPGConfig(dof=0.1))
batch = w.batch()

def high_water_kib():
    # VmHWM belongs to this process's memory map; ru_maxrss would include the parent's
    # peak, which Linux carries over fork and exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

before = high_water_kib()
step = train_step_fn(model, batch)
for _ in range(2):
    step()
print(json.dumps({{"before_kib": before, "peak_kib": high_water_kib()}}))
"""


def _peak_rss(workload: str, rpg: bool) -> dict:
    code = MEMORY_PROBE.format(workload=workload, rpg=rpg)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory(quick: bool) -> dict:
    """Bytes kept per generated element, and peak RSS of training steps vs dense."""
    torch.manual_seed(0)
    w = bert_mini_workload()
    cached = apply_rpg(w.build(), RPGConfig(dof=0.1))
    fly = apply_rpg(w.build(), RPGConfig(dof=0.1, index_cache="none"))
    step = train_step_fn(cached, w.batch())
    step()
    p = cached.layout.generated_elements
    per_element = {
        "index_cache_int32": cached.runtime_stats().index_cache_bytes / p,
        "index_cache_none": fly.runtime_stats().index_cache_bytes / p,
        "training_buffer_between_steps": cached.runtime_stats().pooled_bytes / p,
        "reference_implementation": 12.0,
    }
    del cached, fly
    gc.collect()
    peaks = []
    for name in ("bert_mini_workload",) if quick else ("bert_mini_workload", "resnet18_workload", "vit_workload"):
        dense, rpg = _peak_rss(name, False), _peak_rss(name, True)
        peaks.append(
            {
                "workload": name.removesuffix("_workload"),
                "dense_peak_mib": dense["peak_kib"] / 1024,
                "rpg_peak_mib": rpg["peak_kib"] / 1024,
                "dense_step_mib": (dense["peak_kib"] - dense["before_kib"]) / 1024,
                "rpg_step_mib": (rpg["peak_kib"] - rpg["before_kib"]) / 1024,
            }
        )
    return {"bytes_per_generated_element": per_element, "peak_rss": peaks}


# ------------------------------------------------------------------------------ 3. generation


class _Root(torch.nn.Module):
    def __init__(self, ring: torch.Tensor) -> None:
        super().__init__()
        self.rpg_rings = torch.nn.ParameterDict({"default": torch.nn.Parameter(ring)})


def ring_indices(total: int, size: int, cache: bool, tensors: int = 8):
    """The ring indices (``RingIndices``, what the autograd function gathers through) of
    ``tensors`` equal targets of ``total`` elements in all, the root holding the ring, the layout."""
    per = total // tensors
    targets = [TargetLayout(f"t{i}.weight", (per,), "default", i * per, 0.9) for i in range(tensors)]
    layout = Layout(rings={"default": RingLayout("default", size, per * tensors)}, targets=targets)
    root = _Root(torch.randn(size))
    indices = RingIndices(layout, 0, cache, lambda ring_name: root.rpg_rings[ring_name].element_size())
    indices.build()
    return indices, root, layout


def generation(quick: bool) -> list[dict]:
    """ns per generated element, forward + backward, cached and on the fly; cache build."""
    total = 2_000_000 if quick else 4_000_000
    rows = []
    for size in (total // 100, total // 10, total // 2):
        for cache in (True, False):
            engine, root, layout = ring_indices(total, size, cache)
            pool = BufferPool(total)
            ring = root.rpg_rings["default"]
            requests = [_Request(t, None) for t in layout.targets]
            grads = [torch.randn(t.shape) for t in layout.targets]

            def forward_backward(engine=engine, ring=ring, requests=requests, grads=grads, pool=pool):
                out = pool.take(sum(r.target.numel for r in requests), ring.dtype, ring.device)
                weights = _GenerateFromRing.apply(ring, engine, "default", requests, out)
                torch.autograd.backward(weights, grads)
                ring.grad = None
                del weights

            def forward_only(engine=engine, ring=ring, requests=requests, pool=pool):
                with torch.no_grad():
                    out = pool.take(sum(r.target.numel for r in requests), ring.dtype, ring.device)
                    _GenerateFromRing.apply(ring, engine, "default", requests, out)

            times = interleaved_medians(
                {"fb": forward_backward, "f": forward_only}, warmup=1, repeats=3 if quick else 5
            )
            start = time.perf_counter()
            build_signed_index(layout.generated_elements, size, derive_key(0, "default"))
            build = time.perf_counter() - start
            p = layout.generated_elements
            rows.append(
                {
                    "ring": size,
                    "elements": p,
                    "index": "int32 cache" if cache else "on the fly",
                    "forward_ns": 1e9 * times["f"]["median"] / p,
                    "forward_backward_ns": 1e9 * times["fb"]["median"] / p,
                    "cache_build_ns": 1e9 * build / p,
                }
            )
            del engine, root
            gc.collect()
    return rows


# ------------------------------------------------------------------------------ 4. embeddings


def embeddings(quick: bool) -> dict:
    """A 30,522 x 384 embedding: generating the looked-up rows vs the whole table."""
    vocab, dim, batch, seq = 30522, 384, 32, 128
    results = {}
    for rows in (True, False):
        torch.manual_seed(0)
        model = apply_rpg(torch.nn.Sequential(torch.nn.Embedding(vocab, dim)), RPGConfig(dof=0.1, embedding_rows=rows))
        model.train()
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

        def step(model=model, ids=ids):
            model(ids).square().mean().backward()
            model.rpg_rings["default"].grad = None

        results["rows" if rows else "full"] = interleaved_medians({"s": step}, repeats=5)["s"]["median"]
    return {
        "shape": [vocab, dim],
        "batch": [batch, seq],
        "rows_ms": 1e3 * results["rows"],
        "full_ms": 1e3 * results["full"],
        "speedup": results["full"] / results["rows"],
    }


# ------------------------------------------------------------------------------ 5. load


LOAD_PROBE = """
import sys, time, json, torch
import transformers
transformers.logging.set_verbosity_error()
from hf_rpg import RPGModel
torch.set_num_threads(1)
model_class = transformers.BertForMaskedLM  # imported before timing: both paths use it
batch = {{"input_ids": torch.randint(0, 30522, (8, 128), generator=torch.Generator().manual_seed(0))}}
start = time.perf_counter()
if {rpg!r}:
    model = RPGModel.from_pretrained({path!r})
else:
    model = model_class.from_pretrained({path!r})
loaded = time.perf_counter() - start
with torch.no_grad():
    model.eval()
    model(**batch)
print(json.dumps({{"seconds": loaded, "first_output_seconds": time.perf_counter() - start}}))
"""


def load(quick: bool) -> dict:
    """from_pretrained of a BERT-base-sized model: RPG vs transformers' dense safetensors."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig()  # bert-base-uncased sizes: 12 x 768, 110M parameters
    model = transformers.BertForMaskedLM(config)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(Path(scratch) / "dense")
        rpg = apply_rpg(model, RPGConfig(dof=0.1))
        rpg.save_pretrained(Path(scratch) / "rpg")
        del rpg, model
        gc.collect()
        sizes = {name: checkpoint_bytes(Path(scratch) / name) for name in ("dense", "rpg")}
        seconds, first = {}, {}
        for name in ("dense", "rpg"):
            code = LOAD_PROBE.format(rpg=name == "rpg", path=str(Path(scratch) / name))
            runs = []
            for _ in range(2 if quick else 3):
                out = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
                ).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            runs.sort(key=lambda r: r["seconds"])
            seconds[name] = runs[len(runs) // 2]["seconds"]
            first[name] = sorted(r["first_output_seconds"] for r in runs)[len(runs) // 2]
    return {
        "model": f"BertForMaskedLM, bert-base sizes ({params / 1e6:.0f}M parameters), dof=0.1",
        "dense_bytes": sizes["dense"],
        "rpg_bytes": sizes["rpg"],
        "dense_seconds": seconds["dense"],
        "rpg_seconds": seconds["rpg"],
        "dense_first_output_seconds": first["dense"],
        "rpg_first_output_seconds": first["rpg"],
    }


# ------------------------------------------------------------------------------ 6. inference


def inference_case(repeats: int) -> dict:
    """One process's eval-forward timing of dense vs RPG with materialised weights."""
    w = bert_mini_workload()
    dense, base = fresh_pair(w)
    rpg = apply_rpg(base, RPGConfig(dof=0.1))
    dense, batch = to_device(dense, {k: v for k, v in w.batch().items() if k != "labels"})
    rpg = rpg.to(bench_device())
    dense.eval()
    rpg.eval()

    def run(model):
        def fn():
            with torch.no_grad():
                model(**batch)

        return fn

    times = interleaved_medians({"dense": run(dense), "rpg": run(rpg)}, repeats=repeats)
    return {
        "workload": w.description.replace("batch", "eval batch"),
        "dense_ms": 1e3 * times["dense"]["median"],
        "rpg_ms": 1e3 * times["rpg"]["median"],
        "ratio": times["rpg"]["median"] / times["dense"]["median"],
    }


def inference(quick: bool) -> dict:
    """Eval forward with materialised weights vs dense (several processes); torch.compile."""
    processes, repeats = (1, 5) if quick else (5, 15)
    result = summarise([run_worker("inference", "bert-mini", repeats) for _ in range(processes)])
    w = bert_mini_workload()
    torch.manual_seed(0)
    rpg, batch = to_device(apply_rpg(w.build(), RPGConfig(dof=0.1)), w.batch())
    rpg.eval()
    result["compile"] = _compile_report(rpg, {k: v for k, v in batch.items() if k != "labels"})
    del rpg
    gc.collect()
    return result


def _compile_report(rpg: RPGModel, batch: dict) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            explanation = torch._dynamo.explain(rpg)(**batch)
        breaks = explanation.graph_break_count
        reasons = sorted({str(b.reason).splitlines()[0][:120] for b in explanation.break_reasons})
        torch._dynamo.reset()
        rpg.train()
        training = torch._dynamo.explain(rpg)(**batch)
        rpg.eval()
        training_breaks = training.graph_break_count
        training_reasons = sorted({str(b.reason).splitlines()[0][:120] for b in training.break_reasons})
        torch._dynamo.reset()
        compiled = torch.compile(rpg)
        start = time.perf_counter()
        with torch.no_grad():
            reference = rpg(**batch).logits
            compiled_out = compiled(**batch).logits
        compile_seconds = time.perf_counter() - start

        def eager():
            with torch.no_grad():
                rpg(**batch)

        def fast():
            with torch.no_grad():
                compiled(**batch)

        times = interleaved_medians({"eager": eager, "compiled": fast}, repeats=5)
        return {
            "works": True,
            "graph_breaks": breaks,
            "break_reasons": reasons[:5],
            "training_graph_breaks": training_breaks,
            "training_break_reasons": training_reasons[:5],
            "max_abs_difference": float((compiled_out - reference).abs().max()),
            "first_call_seconds": compile_seconds,
            "eager_ms": 1e3 * times["eager"]["median"],
            "compiled_ms": 1e3 * times["compiled"]["median"],
        }
    except Exception as err:  # report, don't hide: the table says what failed
        return {"works": False, "error": f"{type(err).__name__}: {err}"[:300]}


# ------------------------------------------------------------------------------ 7. peers
