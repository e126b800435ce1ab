"""The communicators on device arrays, under mpiexec (GPU tests: skipped without CuPy and a GPU).

With one GPU per rank `--distributed nccl` must give an NCCLComm whose every collective matches
its definition; two ranks on one GPU (NCCL refuses duplicate devices) must fall back to MPI with
host staging, say so once, and still give the same results on device arrays. The CPU
counterparts (the same checks on host arrays, and the fallback on the CPU backend) are in
test_mpi_comm.py.
"""
from __future__ import annotations

import re
import sys

import pytest

from devices import _gpu_status
from mpi_jobs import WORKER, mpi_skip_reason, mpiexec, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(mpi_skip_reason() is not None, reason=str(mpi_skip_reason()))]


def _gpu_count():
    ok, _ = _gpu_status()
    if not ok:
        return 0
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


def _job(n, kind, visible=None):
    """`mpiexec -n N _worker.py gpu-collectives KIND`, optionally with CUDA_VISIBLE_DEVICES."""
    return run([mpiexec(), "-n", str(n), sys.executable, WORKER, "gpu-collectives", kind],
               timeout=240,
               env_extra={"CUDA_VISIBLE_DEVICES": visible} if visible is not None else None)


def _ok(proc, n):
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(re.findall(r"rank \d+: ok", proc.stdout)) == [f"rank {r}: ok" for r in range(n)]


def test_nccl_collectives_with_one_gpu_per_rank():
    if _gpu_count() < 2:
        pytest.skip(f"needs 2 GPUs, found {_gpu_count()}")
    proc = _job(2, "nccl")
    _ok(proc, 2)
    found = sorted(re.findall(r"rank (\d) of 2: (\w+) on GPU (\d+)", proc.stdout))
    assert [f[1] for f in found] == ["NCCLComm", "NCCLComm"]
    assert found[0][2] != found[1][2], f"both ranks on one GPU: {found}"


def test_two_ranks_on_one_gpu_fall_back_to_mpi_with_host_staging():
    if _gpu_count() < 1:
        pytest.skip("no GPU")
    proc = _job(2, "nccl", visible="0")
    _ok(proc, 2)
    assert sorted(re.findall(r"rank \d of 2: (\w+)", proc.stdout)) == ["MPIComm", "MPIComm"]
    assert proc.stderr.count("[engine] NCCL not used") == 1, proc.stderr[-2000:]
