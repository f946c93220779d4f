"""Which hf_rpg ran a benchmark run, by the numbers it computes rather than by its source text.

A quality benchmark keys an hf_rpg run by the library that ran it, so that a run of another
library is neither skipped nor mixed into its row. Keying by a hash of the source text would
make every refactor (a moved file, a docstring) throw away hours of CPU runs whose numbers it
cannot have changed. Here the identity is a digest of a probe: the hf_rpg update kinds the
benchmarks use (delta at full rank on q/v, low rank, every linear layer, replace), each trained
three AdamW steps and then evaluated, on a Llama shaped like SmolLM2's attention (hidden 576,
key/value 192), in float32 on one thread. Two libraries share an identity only if all of those
numbers agree bit for bit.

Records carry ``hf_rpg_numerics`` since this module exists; records older than that carry only
``hf_rpg_source``, and count as the identity that ``hf-rpg-numerics.json`` maps their source to.
That file is written only by ``python -m benchmarks.library_identity --commit C``, which checks
the commit out in a temporary worktree and runs the probe there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EQUIVALENCE_FILE = REPO / "benchmarks" / "results" / "hf-rpg-numerics.json"

# RPGConfig keyword arguments of the probe's cases (each also gets dof and seed). An hf_rpg from
# before ``update`` existed had only full-rank updates without a rank: the cases' "update" is
# dropped for it (``_probe_case``), so both compute the same thing.
PROBE_CASES: dict[str, dict[str, Any]] = {
    "delta": {"mode": "delta", "update": "full"},
    "delta-lowrank": {"mode": "delta", "rank": "auto"},
    "delta-all-linear": {"mode": "delta", "target_modules": "all-linear", "update": "full"},
    "replace": {"mode": "replace"},
}
# Update kinds added later, each with its own digest (recorded as ``hf_rpg_numerics_<kind>``):
# the identity of a run of that kind includes it, that of any other run does not, so a new kind
# leaves the runs of the others keyed as they were.
KIND_PROBE_CASES: dict[str, dict[str, Any]] = {"lora": {"mode": "delta", "update": "lora"}}
PROBE_STEPS = 3


def _probe_case(kwargs: dict[str, Any], digest: Any) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_rpg import RPGConfig, apply_rpg

    if "update" in kwargs and not hasattr(RPGConfig(), "update"):
        kwargs = {k: v for k, v in kwargs.items() if k != "update"}
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=576,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).float()
    model.requires_grad_(False)
    model = apply_rpg(model, RPGConfig(dof=1000, seed=1, **kwargs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=generator)
    model.train()
    for _ in range(PROBE_STEPS):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        digest.update(loss.detach().double().numpy().tobytes())
    model.eval()
    with torch.no_grad():
        digest.update(model(input_ids=ids).logits.numpy().tobytes())
    for p in params:
        digest.update(p.detach().numpy().tobytes())


def _digest(cases: dict[str, dict[str, Any]]) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reductions in one order, as the benchmarks run
    try:
        digest = hashlib.sha256()
        for name, kwargs in cases.items():
            digest.update(name.encode())
            _probe_case(kwargs, digest)
        return digest.hexdigest()[:12]
    finally:
        torch.set_num_threads(threads)


def probe_digest() -> str:
    """The identity of the hf_rpg this process imports: a digest of the probe's numbers."""
    return _digest(PROBE_CASES)


def kind_digests() -> dict[str, str]:
    """``{"hf_rpg_numerics_<kind>": digest}`` of each later update kind (``KIND_PROBE_CASES``)."""
    return {f"hf_rpg_numerics_{kind}": _digest({kind: kwargs}) for kind, kwargs in KIND_PROBE_CASES.items()}


def read_equivalences(path: Path = EQUIVALENCE_FILE) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def library_identity(rec: dict[str, Any], equivalences: dict[str, dict[str, Any]] | None = None) -> str | None:
    """An hf_rpg run's library identity: its probe digest, else the digest its source hash was
    measured to have, else ``source:<hash>`` (equal only to runs of the very same source); a run
    of a later update kind (``KIND_PROBE_CASES``) adds that kind's digest."""
    base = _base_identity(rec, equivalences)
    kind = (rec.get("config") or {}).get("update") if isinstance(rec.get("config"), dict) else None
    if base is None or kind not in KIND_PROBE_CASES:
        return base
    return f"{base}+{kind}:{rec.get(f'hf_rpg_numerics_{kind}', 'unknown')}"


def _base_identity(rec: dict[str, Any], equivalences: dict[str, dict[str, Any]] | None) -> str | None:
    if rec.get("hf_rpg_numerics"):
        return rec["hf_rpg_numerics"]
    source = rec.get("hf_rpg_source") or rec.get("commit")
    if source is None:
        return None
    known = (read_equivalences() if equivalences is None else equivalences).get(source)
    return known["numerics"] if known else f"source:{source}"


def measure_commit(commit: str, path: Path = EQUIVALENCE_FILE) -> dict[str, Any]:
    """Check ``commit`` out in a temporary worktree, run the probe against its hf_rpg in a fresh
    process, and record ``{source hash: digest}`` in ``path``."""
    from benchmarks.quality.record import source_hash

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True)
        try:
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
            code = (
                "import importlib.util, sys; "
                f"spec = importlib.util.spec_from_file_location('probe', {str(Path(__file__))!r}); "
                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                "import hf_rpg; print(hf_rpg.__file__); print(m.probe_digest())"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, cwd=tmp, capture_output=True, text=True, check=True
            ).stdout.split()
            library, digest = Path(out[-2]).parent, out[-1]
            if not library.is_relative_to(tree):
                raise RuntimeError(f"the probe imported {library}, not the worktree's hf_rpg")
            source = source_hash(library)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    table = read_equivalences(path)
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", commit], capture_output=True, text=True).stdout
    table[source] = {"numerics": digest, "commit": full.strip()[:10]}
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    return {"source": source, **table[source]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.library_identity", description=__doc__.split("\n")[0])
    parser.add_argument("--commit", nargs="*", default=[], help="record these commits' digests in the table")
    args = parser.parse_args(argv)
    for commit in args.commit:
        print(commit, measure_commit(commit))
    if not args.commit:
        print(probe_digest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
