"""Which communicator a process gets: detected from the launcher's environment, or forced.

`from_environment(kind="auto", backend=None)`:
    "single"  SingleProcess (never imports mpi4py)
    "mpi"     MPIComm over MPI.COMM_WORLD (mpi4py must import)
    "nccl"    NCCLComm for a GPU backend (falls back to MPI with host staging, and says so,
              when two ranks share a GPU or NCCL is missing)
    "auto"    the launcher's environment says how many ranks there are: more than one gives
              "nccl" for a GPU backend and "mpi" otherwise; one rank (or no launcher) gives
              "single", without importing mpi4py.
The variable ENGINE_DISTRIBUTED (single | mpi | nccl | auto) overrides an "auto" request, as a
command-line flag does.

Launchers and the variables they set for every rank (the world size):
    MPICH / Intel MPI (Hydra), also `mpiexec` of the mpich wheel:  PMI_SIZE, PMI_RANK
    Open MPI (4 and 5):                                            OMPI_COMM_WORLD_SIZE
    MVAPICH:                                                       MV2_COMM_WORLD_SIZE
A Slurm allocation alone (SLURM_NTASKS in a batch script that runs one python) is not a
multi-rank launch: use `srun --mpi=pmi2` (sets PMI_SIZE) or `mpiexec`, or force the kind.
"""
from __future__ import annotations

import os
import sys
import time

from .comm import SingleProcess

KINDS = ("auto", "single", "mpi", "nccl")
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
#: Seconds a rank other than 0 waits before printing its error and ending the job: when every
#: rank fails alike (a bad option), rank 0's line comes alone.
ERROR_DELAY = 1.0


def launched_size(environ=None) -> int:
    """The number of ranks the launcher started (1 when no launcher variable is set)."""
    env = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = env.get(name)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not a rank "
                                 f"count") from None
    return 1


def launched_rank(environ=None):
    """This process's rank as the launcher set it (None without a launcher)."""
    env = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                return None
    return None


def requested(kind: str = "auto", environ=None):
    """What an Engine's `comm` should be for a command-line kind: None (one process: the plain
    single-process engine) when there is one rank and nothing forces a communicator, else the
    kind itself (Engine resolves it with from_environment)."""
    env = os.environ if environ is None else environ
    if kind == "single":
        return None
    if kind == "auto" and launched_size(env) <= 1 and not env.get("ENGINE_DISTRIBUTED"):
        return None
    return kind


def abort_job(message, code, stream=None, environ=None):
    """End a command that failed. One process: print `message` and return `code`. Under a
    launcher with several ranks: print it (rank 0 at once, prefixed "[rank r/N]" elsewhere and
    after ERROR_DELAY seconds) and end every rank with MPI_Abort(code), because a rank that just
    exits leaves the others waiting in a collective."""
    stream = stream if stream is not None else sys.stderr
    size = launched_size(environ)
    if size <= 1:
        print(message, file=stream, flush=True)
        return code
    rank = launched_rank(environ) or 0
    if rank:
        time.sleep(ERROR_DELAY)
        message = f"[rank {rank}/{size}] {message}"
    print(message, file=stream, flush=True)
    try:
        from mpi4py import MPI
    except ImportError:
        return code
    sys.stdout.flush()
    MPI.COMM_WORLD.Abort(int(code))
    return code


def from_environment(kind: str = "auto", backend=None, environ=None):
    """The communicator for this process (see the module docstring); bound to `backend`."""
    env = os.environ if environ is None else environ
    if kind == "auto":
        kind = env.get("ENGINE_DISTRIBUTED", "auto").strip().lower() or "auto"
    if kind not in KINDS:
        raise ValueError(f"distributed: kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        if launched_size(env) <= 1:
            kind = "single"
        else:
            kind = "nccl" if backend is not None and backend.device != "cpu" else "mpi"
    if kind == "single":
        comm = SingleProcess()
    elif kind == "mpi":
        from .mpi import MPIComm
        comm = MPIComm()
    else:
        from .nccl import make_nccl_or_mpi
        return make_nccl_or_mpi(backend)
    return comm.bind(backend) if backend is not None else comm


__all__ = ["from_environment", "launched_size", "launched_rank", "requested", "abort_job",
           "KINDS", "SIZE_VARIABLES", "RANK_VARIABLES"]
