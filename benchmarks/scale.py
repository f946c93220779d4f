"""Memory that follows DoF, not model size: measured, not asserted.

    python -m benchmarks scale gpt2-medium          # delta fine-tune vs PEFT LoRA r=8 (needs .[bench])
    python -m benchmarks scale llama                # replace mode, a >= 4.5B Llama built on meta, 3 steps
    python -m benchmarks scale all

Each case runs in a fresh process (peak RSS is ``ru_maxrss`` of that process) on one torch
thread; results go to ``benchmarks/results/scale.json`` and ``benchmarks/results/scale.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks.common import RESULTS, ROOT

JSON_OUT = RESULTS / "scale.json"
MD_OUT = RESULTS / "scale.md"
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]

CASE = r"""
import json, os, resource, sys, time
import torch, transformers
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)
torch.manual_seed(0)

def rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

kind, case = {kind!r}, {case!r}
info = {{}}
if kind == "gpt2-medium":
    config = transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024)
    model = transformers.GPT2LMHeadModel(config)
    targets = {targets!r}
    if case == "lora":
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=targets, fan_in_fan_out=True))
    elif case in ("rpg", "rpg-keep"):
        from hf_rpg import RPGConfig, apply_rpg
        lora_size = sum(8 * (m.weight.shape[0] + m.weight.shape[1]) for n, m in model.named_modules()
                        if n.endswith(tuple(targets)) and hasattr(m, "weight"))
        keep = {{"weights_in_backward": "keep"}} if case == "rpg-keep" else {{}}
        model = apply_rpg(model, RPGConfig(mode="delta", dof=lora_size, target_modules=targets, **keep))
        info["index_cache_bytes"] = model.runtime_stats().index_cache_bytes
    elif case == "weight-grad":  # the floor of a full-rank update: dL/dW of every target, no optimizer
        for n, p in model.named_parameters():
            p.requires_grad_(n.rsplit(".", 2)[-2] in targets and n.endswith(".weight"))
    else:  # the frozen base alone, back-propagating to its inputs: the floor of any adapter
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    ids = torch.randint(0, config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    batch = {{"input_ids": ids, "labels": ids}}
else:
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                      num_hidden_layers=25, num_attention_heads=32, num_key_value_heads=8,
                                      max_position_embeddings=2048, tie_word_embeddings=True)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    from hf_rpg import RPGConfig, apply_rpg
    # one ring per group (the paper's local RPG) keeps each ring's positions below 2**32, the
    # domain of the fused uint32 kernels; a single ring of 4.4B positions would take the int64 path
    rings = {{"attention": r".*self_attn.*", "mlp": r".*mlp.*"}}
    model = apply_rpg(model, RPGConfig(dof=4_000_000, seed=0, rings=rings), device="cpu")
    info["rings"] = {{n: [r.size, r.elements] for n, r in model.layout.rings.items()}}
    info["index_cache_bytes"] = model.runtime_stats().index_cache_bytes
    info["generated"] = model.layout.generated_elements
    ids = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    batch = {{"input_ids": ids, "labels": ids}}

trainable = [p for p in model.parameters() if p.requires_grad]
info["trainable"] = sum(p.numel() for p in trainable)
optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable and case != "weight-grad" else None
model.train()
info["rss_before_kib"] = rss_kib()
times, losses = [], []
for _ in range(3):
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for p in trainable if optimizer is None else ():
        p.grad = None
    times.append(time.perf_counter() - start)
    losses.append(loss.item())
info.update(step_s=sorted(times[1:])[0] if len(times) > 1 else times[0], steps_s=times, losses=losses,
            peak_rss_kib=rss_kib())
print(json.dumps(info))
"""


def _run(kind: str, case: str) -> dict:
    code = CASE.format(kind=kind, case=case, targets=GPT2_TARGETS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{kind}/{case} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    print(f"{kind}/{case}: {result}", flush=True)
    return result


def _machine() -> str:
    import torch

    load = os.getloadavg()[0]
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, one-minute load {load:.1f} "
        f"at start; Python {platform.python_version()}, torch {torch.__version__}, one torch thread"
    )


# frozen: the base back-propagating to its inputs (any adapter's floor); weight-grad: also each
# target's dL/dW, no optimizer (a full-rank update's floor: the GEMM LoRA's factors avoid);
# rpg-keep: hf_rpg keeping the generated weights for backward (no regeneration pass).
GPT2_CASES = ("frozen", "weight-grad", "lora", "rpg", "rpg-keep")


def gpt2_medium() -> dict:
    """Delta fine-tune of a GPT-2-medium-sized model vs PEFT LoRA r=8, same targets and size."""
    return {case: _run("gpt2-medium", case) for case in GPT2_CASES}


def llama() -> dict:
    """Replace mode on a Llama config of >= 4.5B parameters built on meta: 3 training steps."""
    return {"rpg": _run("llama", "rpg")}


def _render(results: dict) -> str:
    lines = ["# Memory that follows DoF (`benchmarks/scale.py`)", ""]
    g = results.get("gpt2-medium")
    if g:
        lora_peak = g["lora"]["peak_rss_kib"]
        lines += [
            "## GPT-2-medium-sized delta fine-tune vs LoRA r=8",
            "",
            results.get("machine gpt2-medium", results.get("machine", "")),
            "",
            "GPT2LMHeadModel (1024 x 24 layers, 355M parameters, random weights), targets "
            "`c_attn, c_proj, c_fc`, batch 2 x 128, AdamW, 3 steps; hf_rpg's ring has LoRA r=8's trainable "
            "size. Step time: the faster of steps 2 and 3. A dense generated update needs each targeted "
            "weight's full gradient dL/dW (one GEMM per layer more than LoRA's factors): that is its floor.",
            "",
            "| case | trainable | peak RSS MiB | / LoRA | step s | / LoRA | / frozen base |",
            "|---|---|---|---|---|---|---|",
        ]
        for case, label in (
            ("frozen", "frozen base (grad to inputs)"),
            ("weight-grad", "frozen base + each target's dL/dW (no optimizer): a full-rank update's floor"),
            ("lora", "PEFT LoRA r=8"),
            ("rpg", "hf_rpg delta (default: regenerates in backward)"),
            ("rpg-keep", "hf_rpg delta, weights_in_backward='keep'"),
        ):
            if case not in g:
                continue
            r = g[case]
            lines.append(
                f"| {label} | {r['trainable']:,} | {r['peak_rss_kib'] / 1024:,.0f} | "
                f"{r['peak_rss_kib'] / lora_peak:.2f} | {r['step_s']:.2f} | {r['step_s'] / g['lora']['step_s']:.2f} | "
                f"{r['step_s'] / g['frozen']['step_s']:.2f} |"
            )
        lines.append("")
    ll = results.get("llama")
    if ll:
        r = ll["rpg"]
        params = r["parameters"]
        dense_gb = params * 16 / 1e9
        lines += [
            "## Replace mode, a Llama of several billion parameters built on the meta device",
            "",
            results.get("machine llama", results.get("machine", "")),
            "",
            f"LlamaForCausalLM config (hidden 4096, 25 layers, GQA 32/8 heads, vocab 32000, tied embeddings): "
            f"{params:,} parameters, {r['generated']:,} generated from rings of 4,000,000 entries in all "
            f"(attention, MLP and embeddings each on its own ring: {r['rings']}); batch 1 x 16, AdamW, "
            f"3 steps. Dense fp32 training would hold weights, gradients and AdamW's two moments: "
            f"16 bytes per parameter = {dense_gb:,.0f} GB.",
            "",
            "| peak RSS GiB | index cache bytes | step s (best of 2, 3) | steps s | losses |",
            "|---|---|---|---|---|",
            f"| {r['peak_rss_kib'] / 2**20:.2f} | {r['index_cache_bytes']:,} | {r['step_s']:.1f} | "
            f"{', '.join(f'{t:.1f}' for t in r['steps_s'])} | {', '.join(f'{v:.3f}' for v in r['losses'])} |",
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["gpt2-medium", "llama", "all"])
    args = parser.parse_args(argv)
    results = json.loads(JSON_OUT.read_text()) if JSON_OUT.exists() else {}
    measured = "Measured " + time.strftime("%Y-%m-%d %H:%M") + " on " + _machine() + "."
    for what, run in (("gpt2-medium", gpt2_medium), ("llama", llama)):
        if args.what in (what, "all"):
            results[what] = run()
            results[f"machine {what}"] = measured  # each section says when and where it ran
            JSON_OUT.write_text(json.dumps(results, indent=2) + "\n")
    MD_OUT.write_text(_render(results))
    print(f"wrote {JSON_OUT} and {MD_OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
