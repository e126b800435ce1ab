"""The MPI communicator under mpiexec: every collective, detection, and failing ranks.

A rank that raises outside any guard must end the whole job within seconds with its error on
stderr (MPIComm's excepthook prints and calls MPI_Abort; without it the other ranks would wait
in their collective forever). A rank that raises inside `engine train`, or is killed there:
test_cli_ranks.py.
"""
from __future__ import annotations

import re

import pytest

from mpi_jobs import mpi_skip_reason, run_job

pytestmark = pytest.mark.skipif(mpi_skip_reason() is not None, reason=str(mpi_skip_reason()))

#: A failed job must end well before this (measured: about 1 s after the failure, plus the
#: start of the ranks, on the 2-core development machine).
FAIL_SECONDS = 30


@pytest.mark.parametrize("n", [2, 3])
def test_collectives(n):
    proc = run_job(n, "collectives", timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(re.findall(r"rank \d+: ok", proc.stdout)) == [f"rank {r}: ok" for r in range(n)]


def test_detects_mpiexec():
    proc = run_job(2, "detect", timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(re.findall(r"rank \d of \d: \w+", proc.stdout)) == ["rank 0 of 2: MPIComm",
                                                                     "rank 1 of 2: MPIComm"]


def test_nccl_without_a_gpu_per_rank_falls_back_to_mpi():
    proc = run_job(2, "detect", "nccl", timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(re.findall(r"rank \d of \d: \w+", proc.stdout)) == ["rank 0 of 2: MPIComm",
                                                                     "rank 1 of 2: MPIComm"]
    assert proc.stderr.count("[engine] NCCL not used: rank 0: NCCL needs the GPU backend") == 1


def test_an_uncaught_exception_ends_the_job():
    """Outside abort_on_error: the excepthook MPIComm installs prints and aborts."""
    proc = run_job(2, "uncaught", 0, timeout=FAIL_SECONDS)
    assert proc.returncode != 0
    assert "[rank 0/2] RuntimeError: uncaught failure" in proc.stderr
    assert proc.seconds < FAIL_SECONDS


def test_ranks_started_with_different_configurations_are_detected():
    proc = run_job(3, "mismatch", timeout=FAIL_SECONDS)
    assert proc.returncode != 0
    assert ("ValueError: ranks were started with different configurations: rank(s) [1, 2] "
            "differ from rank 0") in proc.stderr
