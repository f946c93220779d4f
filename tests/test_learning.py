"""Real learning on real data: a tiny ResNet on scikit-learn's digits at 25% DoF."""

from __future__ import annotations

from hf_rpg_studies.demo import run_digits_demo


def test_rpg_at_quarter_dof_learns_about_as_well_as_dense(tmp_path):
    result = run_digits_demo(model="resnet", dof=0.25, epochs=15, seed=0, output_dir=tmp_path)
    print(result.table())
    assert result.dense_accuracy > 0.95
    assert result.rpg_accuracy > 0.95
    assert result.rpg_accuracy >= result.dense_accuracy - 0.03
    assert 0.2 < result.report.ring_fraction < 0.3
    assert result.rpg_bytes * 3 < result.dense_bytes
