"""The benchmarks key hf_rpg runs by the numbers the library computes, not by its source text."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import library_identity as ident
from benchmarks.llm_quality.runner import run_key


def _rec(**extra):
    return {"task": "trec", "method": "rpg", "budget": 1000, "config": {"dof": 1000}, "lr": 0.01, "seed": 0, **extra}


def test_identity_from_probe_from_measured_source_or_own_source():
    table = {"aaa": {"numerics": "d1", "commit": "c1"}}
    assert ident.library_identity(_rec(hf_rpg_numerics="d2", hf_rpg_source="aaa"), table) == "d2"
    assert ident.library_identity(_rec(hf_rpg_source="aaa"), table) == "d1"
    assert ident.library_identity(_rec(hf_rpg_source="bbb"), table) == "source:bbb"


def test_committed_table_maps_old_runs_to_their_probe_digest():
    table = ident.read_equivalences()
    assert table, "benchmarks/results/hf-rpg-numerics.json is missing"
    for source, entry in table.items():
        assert len(source) == 10 and set(entry) == {"numerics", "commit"}


def test_a_run_is_skipped_only_for_a_library_with_the_same_numbers():
    old = _rec(hf_rpg_source=next(iter(ident.read_equivalences())))
    same = _rec(hf_rpg_numerics=ident.library_identity(old))
    other = _rec(hf_rpg_numerics="0" * 12)
    assert run_key(old) == run_key(same) != run_key(other)
    peer = {**_rec(), "method": "unilora"}
    assert run_key({**peer, "hf_rpg_numerics": "x"}) == run_key(peer)  # peers do not use hf_rpg


def test_probe_digest_sees_a_change_of_numerics(monkeypatch):
    first = ident.probe_digest()
    assert len(first) == 12 and int(first, 16) >= 0
    import hf_rpg

    real = hf_rpg.apply_rpg

    def shifted_seed(model, config, *args, **kwargs):  # a library whose permutations differ
        return real(model, dataclasses.replace(config, seed=config.seed + 1), *args, **kwargs)

    monkeypatch.setattr("hf_rpg.apply_rpg", shifted_seed)
    assert ident.probe_digest() != first


@pytest.mark.parametrize("case", sorted(ident.PROBE_CASES))
def test_probe_cases_are_valid_configs(case):
    from hf_rpg import RPGConfig

    RPGConfig(dof=10, **ident.PROBE_CASES[case])


def test_a_later_update_kind_keys_its_own_runs_only():
    lora = {**_rec(config={"dof": 1000, "update": "lora"}), "hf_rpg_numerics": "d0"}
    full = {**_rec(config={"dof": 1000, "update": "full"}), "hf_rpg_numerics": "d0"}
    assert ident.library_identity({**lora, "hf_rpg_numerics_lora": "k1"}) == "d0+lora:k1"
    assert run_key({**lora, "hf_rpg_numerics_lora": "k1"}) != run_key({**lora, "hf_rpg_numerics_lora": "k2"})
    # another kind's digest changes nothing for a full-rank run
    assert run_key({**full, "hf_rpg_numerics_lora": "k1"}) == run_key({**full, "hf_rpg_numerics_lora": "k2"})
    assert set(ident.kind_digests()) == {f"hf_rpg_numerics_{kind}" for kind in ident.KIND_PROBE_CASES}


def test_records_from_before_update_read_as_the_kind_their_library_ran():
    from benchmarks.rpg_update import normalise_record, with_update

    old_1k = normalise_record(_rec(), is_rpg=True)  # full rank was the default at 1k then
    assert old_1k["method"] == "rpg-full" and old_1k["config"] == {"dof": 1000, "update": "full"}
    old_10k = normalise_record({**_rec(), "budget": 10000, "config": {"dof": 10000}}, is_rpg=True)
    assert old_10k["method"] == "rpg" and old_10k["config"] == with_update({"dof": 10000}, 10000)
    lowrank = normalise_record({**_rec(), "method": "rpg-lowrank", "config": {"dof": 1000, "rank": "auto"}}, True)
    assert lowrank["config"]["update"] == "lowrank"
    assert with_update({"dof": 1000}, 1000) == {"dof": 1000, "update": "lora"}
    peer = {**_rec(), "method": "unilora"}
    assert normalise_record(peer, is_rpg=False) is peer
