"""Thread count of a job: OMP_NUM_THREADS wins, else usable CPUs (affinity) shared among parallel jobs."""

from __future__ import annotations

import os

import pytest
import torch

from cg_lightning.runtime import device
from cg_lightning.runtime.device import (
    configure_cpu_threads,
    cpu_threads,
    launcher_parallel_jobs,
    usable_cpus,
)


def test_explicit_omp_num_threads_wins():
    assert cpu_threads(parallel_jobs=8, environ={"OMP_NUM_THREADS": "3"}) == 3


@pytest.mark.parametrize("value", ["", "0", "-2", "two"])
def test_unusable_omp_values_fall_back_to_the_affinity(monkeypatch, value):
    monkeypatch.setattr(device, "usable_cpus", lambda: 4)
    assert cpu_threads(environ={"OMP_NUM_THREADS": value}, load=0.0) == 4


def test_parallel_jobs_share_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(device, "usable_cpus", lambda: 4)
    assert cpu_threads(parallel_jobs=2, environ={}, load=0.0) == 2
    assert cpu_threads(parallel_jobs=3, environ={}, load=0.0) == 1
    assert cpu_threads(parallel_jobs=16, environ={}, load=0.0) == 1  # never below one thread


def test_a_busy_machine_gets_one_thread(monkeypatch):
    monkeypatch.setattr(device, "usable_cpus", lambda: 4)
    assert cpu_threads(environ={}, load=3.5) == 4
    assert cpu_threads(environ={}, load=4.0) == 1
    assert cpu_threads(environ={"OMP_NUM_THREADS": "2"}, load=9.0) == 2  # the user's choice still wins


def test_usable_cpus_follows_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity API on this platform")
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_without_hydra_one_job_runs_at_a_time():
    assert launcher_parallel_jobs() == 1


def test_configure_sets_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        assert configure_cpu_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
