"""The thread count the demo and examples choose: asked for, else OMP_NUM_THREADS, else the idle cores."""

from __future__ import annotations

import os

import pytest
import torch

from hf_rpg_studies import threads


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``cores`` physical cores and a 1-minute load of ``load``, no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_machine(cores: int, load: float) -> None:
        monkeypatch.setattr(threads, "physical_cores", lambda: cores)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return set_machine


@pytest.mark.parametrize(
    ("cores", "load", "processes", "expected"),
    [
        (2, 0.2, 1, 2),  # an idle laptop: both cores
        (2, 1.0, 1, 1),  # one other busy process: what is left (torch's default, 2, took 50x longer)
        (2, 4.7, 1, 1),  # overloaded: one thread, never zero
        (16, 0.0, 1, threads.MAX_AUTO_THREADS),  # a wide idle machine: capped, tiny models gain nothing more
        (16, 10.0, 1, 4),
        (8, 0.0, 2, 4),  # two processes share the idle cores
        (4, 2.0, 2, 1),
    ],
)
def test_automatic_choice_follows_idle_cores(machine, cores, load, processes, expected):
    machine(cores, load)
    choice = threads.choose_threads(processes=processes)
    assert choice.threads == expected
    assert f"{cores} physical cores, load {load:.1f}" in str(choice)
    assert str(choice).startswith(f"torch threads: {expected} (")


def test_asked_for_and_omp_num_threads_win(machine, monkeypatch):
    machine(16, 0.0)
    assert threads.choose_threads(3).threads == 3
    assert str(threads.choose_threads(3)) == "torch threads: 3 (asked for)"
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert str(threads.choose_threads()) == "torch threads: 6 (OMP_NUM_THREADS)"
    assert threads.choose_threads(2).threads == 2  # --threads over the variable
    monkeypatch.setenv("OMP_NUM_THREADS", "5,2")  # OpenMP's nested list: the outer level
    assert threads.choose_threads().threads == 5


@pytest.mark.parametrize("bad", ["0", "many", "-1", ",2"])
def test_bad_omp_num_threads_is_an_error(monkeypatch, bad):
    monkeypatch.setenv("OMP_NUM_THREADS", bad)
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS must be a positive int, got {bad!r}"):
        threads.choose_threads()


@pytest.mark.parametrize(("kwargs", "name"), [({"requested": 0}, "threads"), ({"processes": 0}, "processes")])
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got 0"):
        threads.choose_threads(**kwargs)


def test_use_threads_applies_the_choice():
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(2).threads == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_this_machine_is_described():
    assert 1 <= threads.physical_cores() <= threads.usable_cpus()
