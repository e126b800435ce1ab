"""Launch `mpiexec -n N python tests/distributed/_worker.py ...` from a test.

`mpi_skip_reason()` is None when mpi4py imports in this Python and an `mpiexec` is on PATH
(`pip install ".[distributed]"` gives both: mpi4py and the mpich wheel); otherwise the reason
the MPI tests skip with. `run_job(n, *args)` (the test worker), `run_engine(n, *args)` (the
`engine` command), `run_planted` (engine with a failing rank) and `run_mpmd` (ranks started
with different arguments) return the CompletedProcess (with its wall time as `.seconds`); the
ranks run one BLAS / numba thread each (the CI machine has 2 cores).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
PLANTED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_planted.py")
NO_PLOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_no_plot")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mpiexec():
    return shutil.which("mpiexec")


def mpi_skip_reason():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install \".[distributed]\")"
    if mpiexec() is None:
        return "no mpiexec on PATH (pip install \".[distributed]\" brings the mpich wheel's)"
    return None


def _env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ENGINE_DISTRIBUTED", None)
    return env


def run_job(n, *args, timeout=180):
    """`mpiexec -n N python _worker.py ARGS`."""
    return run([mpiexec(), "-n", str(n), sys.executable, WORKER, *[str(a) for a in args]],
               timeout)


def run_engine(n, *args, timeout=180, plots=True):
    """`mpiexec -n N engine ARGS` (python -m engine.cli from the repository root, so the ranks
    run this checkout's engine); plots=False hides matplotlib (no plot.png, a second saved per
    epoch)."""
    return run([mpiexec(), "-n", str(n), sys.executable, "-m", "engine.cli",
                *[str(a) for a in args]], timeout, plots)


def run_planted(n, how, rank, step, *args, timeout=180):
    """`mpiexec -n N engine ARGS` with a failure planted on rank RANK at step STEP + 1."""
    return run([mpiexec(), "-n", str(n), sys.executable, PLANTED, how, str(rank), str(step),
                "--", *[str(a) for a in args]], timeout, plots=False)


def run_mpmd(*commands, timeout=180):
    """`mpiexec -n 1 engine ARGS_0 : -n 1 engine ARGS_1 ...`: ranks started differently."""
    cmd = [mpiexec()]
    for i, args in enumerate(commands):
        cmd += ([":"] if i else []) + ["-n", "1", sys.executable, "-m", "engine.cli",
                                       *[str(a) for a in args]]
    return run(cmd, timeout, plots=False)


def run(cmd, timeout=180, plots=True, env_extra=None):
    """Run a launcher command line from the repository root (the launcher passes its environment,
    with `env_extra` added, on to the ranks); the CompletedProcess has .seconds."""
    env = dict(_env(), **(env_extra or {}))
    if not plots:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [NO_PLOT, env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    proc.seconds = time.perf_counter() - t0
    return proc
