"""hf-rpg sweep: a tiny real sweep on digits writes CSV/JSON/PNG, a killed sweep resumes
without re-running finished points, bad arguments are one line, and the ablations'
index override generates the weights they are specified to."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_resnet

from hf_rpg import RPGConfig, RPGConfigError, apply_rpg
from hf_rpg.api.cli import main
from hf_rpg.spec.generator import build_signed_index, derive_key
from hf_rpg_studies.sweep import SweepConfig, log_linear_fit, run_sweep, sweep_points

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--max-train-samples", "200", "--max-eval-samples", "100", "--epochs", "1"]


def test_tiny_sweep_writes_csv_json_and_plots(tmp_path, capsys):
    argv = ["sweep", *TINY, "--dof", "0.02", "5%", "0.5", "--equal-dof", "--ablations", "plain_tiling"]
    assert main([*argv, "--log-every", "2", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    points = 1 + 3 * 3  # dense; per DoF: rpg, narrow, plain tiling
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == points and {r["kind"] for r in rows} == {"dense", "rpg", "narrow"}
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["settings"]["dofs"] == [0.02, 0.05, 0.5] and len(document["runs"]) == points
    fit = document["summary"]["fit"]
    assert fit["points"] == 3 and -1.0 <= fit["r2"] <= 1.0 and "points per decade" in printed
    for run in document["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and run["steps"] == 4 and run["loss_curve"][0][0] == 2
    narrow = [r for r in document["runs"] if r["kind"] == "narrow"]
    rpg = {r["dof"]: r["trainable"] for r in document["runs"] if r["kind"] == "rpg" and r["variant"] == "rpg-v1"}
    for run in narrow:  # the closest narrow network to the RPG model's trainable count
        assert run["budget"] == rpg[run["dof"]] and abs(run["trainable"] - run["budget"]) < 0.25 * run["budget"]
        assert all(w <= d for w, d in zip(run["widths"], (16, 32, 64), strict=True))
    for name in ("sweep.png", "convergence.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "narrow" in printed and "files:" in printed


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "sweep"
    args = [*TINY, "--dof", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "--seeds", "0", "1", "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "hf_rpg.api.cli", "sweep", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    runs = out / "runs.jsonl"
    deadline = time.monotonic() + 120
    while (not runs.exists() or len(runs.read_text().splitlines()) < 2) and process.poll() is None:
        assert time.monotonic() < deadline, "the sweep wrote no run in 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = [json.loads(line) for line in runs.read_text().splitlines()]
    assert 2 <= len(finished) < 14, "the kill came too late to test resuming"
    with open(runs, "a") as handle:
        handle.write('{"key": "rpg/rpg-v1/dof=0.5/se')  # a line torn by the kill

    config = SweepConfig(dataset="digits", dofs=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5), seeds=(0, 1), epochs=1,
                         max_train_samples=200, max_eval_samples=100)  # fmt: skip
    lines = []
    result = run_sweep(config, out, log=lines.append)
    assert result.skipped == [r["key"] for r in finished]
    assert sorted(result.ran + result.skipped) == sorted(p.key for p in sweep_points(config))
    assert lines[0].startswith(f"resuming {out}: {len(finished)} of 14 runs already finished")
    again = [json.loads(line) for line in runs.read_text().splitlines()]
    assert again[: len(finished)] == finished and len(again) == 14  # the torn line is gone, nothing re-run
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 14

    # a finished sweep runs nothing; other settings in the same directory are refused
    assert run_sweep(config, out, log=lines.append).ran == []
    with pytest.raises(RPGConfigError, match=r"holds a sweep with other settings \(epochs=1 there, 2 now\)"):
        run_sweep(SweepConfig(**{**config.settings(), "epochs": 2}), out)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--dof", "1"], 2, "--dof 1 would be a ring of one entry; write 1.0"),
        (["--dof", "lots"], 2, "--dof must be a ring size"),
        (["--dataset", "cifar"], 2, "argument --dataset: invalid choice: 'cifar'"),
        (["--ablations", "no_ring"], 2, "argument --ablations: invalid choice: 'no_ring'"),
        (["--epochs", "0"], 1, "epochs must be a positive int, got 0"),
        (["--model", "resnet50"], 1, "model must be 'resnet', 'vit' or 'module:function', got 'resnet50'"),
        (["--model", "no_such_module:build"], 1, "model 'no_such_module:build': cannot import 'build'"),
        (["--dof", "0.1", "0.1"], 1, "dofs and seeds must not repeat"),
        (["--dof", "999999999"], 1, "dofs [999999999] exceed the 72,464 generated elements of 'resnet'"),
        (["--model", "some.module:build", "--ablations", "local_rings"], 1, "local_rings ablation knows"),
    ],
)
def test_bad_arguments_are_one_line_and_a_nonzero_exit(tmp_path, capsys, argv, code, message):
    try:
        status = main(["sweep", *TINY, *argv, "--output-dir", str(tmp_path / "x")])
    except SystemExit as exit_info:  # argparse
        status = exit_info.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == code and len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith("hf-rpg sweep: error:")
    assert not (tmp_path / "x" / "runs.jsonl").exists()


def test_a_bad_argument_in_a_fresh_process_is_one_line_on_stderr(tmp_path):
    command = [sys.executable, "-m", "hf_rpg.api.cli", "sweep", "--dof", "0.1", "1", "--output-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    ours = [line for line in result.stderr.splitlines() if line.startswith(("hf-rpg", "usage"))]
    assert result.returncode == 2 and ours == [
        "hf-rpg sweep: error: argument --dof: --dof 1 would be a ring of one entry; write 1.0 or 100% for full DoF "
        "(or a ring size >= 2) (see hf-rpg sweep --help)"
    ]


def small_resnet(num_labels: int, image_size: int, widths: tuple[int, ...] | None = None) -> torch.nn.Module:
    """A factory as a user would write one (found by the sweep as ``test_sweep:small_resnet``)."""
    from hf_rpg_studies.demo import build_digits_model

    return build_digits_model("resnet", image_size, num_labels, widths or (8, 8, 16))


def test_a_factory_given_as_module_function(tmp_path):
    config = SweepConfig(model="test_sweep:small_resnet", dataset="digits", dofs=(0.1,), epochs=1,
                         max_train_samples=100, max_eval_samples=50)  # fmt: skip
    result = run_sweep(config, tmp_path, log=lambda line: None)
    assert [r["kind"] for r in result.runs] == ["dense", "rpg"] and result.runs[1]["ring_dof"] > 0


def test_log_linear_fit():
    fit = log_linear_fit([10, 100, 1000], [0.5, 0.6, 0.7])
    assert fit["slope_per_decade"] == pytest.approx(0.1) and fit["r2"] == pytest.approx(1.0)
    assert fit["intercept"] == pytest.approx(0.4)
    assert log_linear_fit([10, 10], [0.1, 0.2]) is None


# ------------------------------------------------------------------------------- ablations


def _weights(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: weight.detach().clone().flatten() for name, weight in model.generated_weights()}


@pytest.mark.parametrize("variant", ["no_permutation", "no_sign", "plain_tiling"])
def test_ablation_override_generates_what_it_specifies(variant):
    from hf_rpg_studies.sweep.models import _signed_override

    torch.manual_seed(0)
    model = apply_rpg(make_resnet(), RPGConfig(dof=0.1, seed=4))
    ring_layout = model.layout.rings["default"]
    ring, size = model.rpg_rings["default"].detach(), ring_layout.size
    signed = build_signed_index(ring_layout.elements, size, derive_key(4, "default")).to(torch.int64)
    sign = 1.0 - 2.0 * (signed >= size).float()
    permuted = signed % size
    before = _weights(model)
    model.eval()
    _signed_override(model, variant)
    after = _weights(model)
    for target in model.layout.targets:
        positions = torch.arange(target.offset, target.offset + target.numel)
        tiled = positions % size
        expected = {
            "no_permutation": sign[positions] * ring[tiled],
            "no_sign": ring[permuted[positions]],
            "plain_tiling": ring[tiled],
        }[variant] * target.gain
        assert torch.equal(after[target.name], expected.to(after[target.name].dtype))
        assert torch.equal(before[target.name], target.gain * sign[positions] * ring[permuted[positions]])


def test_set_index_override_checks_its_input():
    model = apply_rpg(make_resnet(), RPGConfig(dof=0.1))
    ring = model.layout.rings["default"]
    with pytest.raises(KeyError, match="no ring 'other'"):
        model.set_index_override("other", torch.zeros(ring.elements, dtype=torch.int32))
    with pytest.raises(ValueError, match=rf"int32 of shape \[{ring.elements}\], got torch.int64"):
        model.set_index_override("default", torch.zeros(ring.elements, dtype=torch.int64))
    with pytest.raises(ValueError, match=rf"values must lie in \[0, {2 * ring.size}\)"):
        model.set_index_override("default", torch.full((ring.elements,), 2 * ring.size, dtype=torch.int32))
    lazy = apply_rpg(make_resnet(), RPGConfig(dof=0.1, index_cache="none"))
    with pytest.raises(RuntimeError, match="needs index_cache='int32'"):
        lazy.set_index_override("default", torch.zeros(ring.elements, dtype=torch.int32))


def test_text_sweep_minilm_delta_on_rt_polarity(tmp_path, minilm):
    argv = ["sweep", "--model", "minilm", "--dataset", "rt_polarity", "--dof", "0.001", "--epochs", "1", "--no-dense"]
    argv += ["--max-train-samples", "48", "--max-eval-samples", "32", "--batch-size", "16", "--log-every", "1"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["settings"]["mode"] == "delta" and document["settings"]["lr"] == 5e-4
    assert document["settings"]["dense_lr"] == 5e-5
    [rpg] = document["runs"]
    assert rpg["kind"] == "rpg" and rpg["steps"] == 3 and rpg["trainable"] < rpg["model_parameters"] / 20
    assert 0.0 <= rpg["accuracy"] <= 1.0 and (tmp_path / "sweep.png").is_file()
    with pytest.raises(RPGConfigError, match="model 'minilm' does not fit dataset 'digits'"):
        SweepConfig(model="minilm", dataset="digits").validate()
    with pytest.raises(RPGConfigError, match="equal_dof knows the widths of the resnet and vit only"):
        SweepConfig(model="minilm", dataset="rt_polarity", equal_dof=True).validate()
