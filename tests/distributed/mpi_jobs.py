"""Launch `mpiexec -n N python tests/distributed/_worker.py ...` from a test.

`mpi_skip_reason()` is None when mpi4py imports in this Python and an `mpiexec` is on PATH
(`pip install ".[distributed]"` gives both: mpi4py and the mpich wheel); otherwise the reason
the MPI tests skip with. `run_job(n, *args)` returns the CompletedProcess (with its wall time
as `.seconds`); the workers run one BLAS / numba thread each (the CI machine has 2 cores).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mpiexec():
    return shutil.which("mpiexec")


def mpi_skip_reason():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install \".[distributed]\")"
    if mpiexec() is None:
        return "no mpiexec on PATH (pip install \".[distributed]\" brings the mpich wheel's)"
    return None


def run_job(n, *args, timeout=180):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ENGINE_DISTRIBUTED", None)
    cmd = [mpiexec(), "-n", str(n), sys.executable, WORKER, *[str(a) for a in args]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    proc.seconds = time.perf_counter() - t0
    return proc
