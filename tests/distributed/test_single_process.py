"""The single-process communicator and the launcher detection (no MPI needed)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy
import pytest

from engine.distributed import SingleProcess, abort_on_error, from_environment, launched_size
from mpi_jobs import REPO, WORKER


def test_single_process_collectives_return_their_input():
    comm = SingleProcess()
    x = numpy.arange(6.0).reshape(3, 2)
    assert (comm.rank, comm.size) == (0, 1)
    for result in (comm.allreduce(x), comm.allreduce(x, "max"), comm.allgather(x),
                   comm.allgatherv(x), comm.allgatherv(x, [3]), comm.reduce_scatter(x),
                   comm.reduce_scatter(x, [3]), comm.bcast(x)):
        assert result is x
    assert comm.allgather_object("a") == ["a"] and comm.bcast_object(1) == 1
    assert comm.row_counts(7) == [7]
    assert comm.stats.total_bytes() == 0
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(x, "min")
    with pytest.raises(ValueError, match="counts"):
        comm.reduce_scatter(x, [2])


def test_single_process_passes_the_collectives_check():
    """The worker's check of every collective, run without mpiexec."""
    proc = subprocess.run([sys.executable, WORKER, "collectives"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rank 0: ok"


def test_abort_on_error_reraises_in_one_process():
    with pytest.raises(KeyError):
        with abort_on_error(SingleProcess()):
            raise KeyError("x")


@pytest.mark.parametrize("env, size", [({}, 1), ({"PMI_SIZE": "4"}, 4),
                                       ({"OMPI_COMM_WORLD_SIZE": "2"}, 2),
                                       ({"MV2_COMM_WORLD_SIZE": "3"}, 3), ({"PMI_SIZE": "1"}, 1)])
def test_launched_size(env, size):
    assert launched_size(env) == size


def test_launched_size_rejects_garbage():
    with pytest.raises(ValueError, match="PMI_SIZE"):
        launched_size({"PMI_SIZE": "many"})


def test_from_environment_defaults_to_single_process():
    assert isinstance(from_environment(environ={}), SingleProcess)
    assert isinstance(from_environment(environ={"PMI_SIZE": "1"}), SingleProcess)
    assert isinstance(from_environment("single", environ={"PMI_SIZE": "8"}), SingleProcess)
    assert isinstance(from_environment(environ={"PMI_SIZE": "8", "ENGINE_DISTRIBUTED": "single"}),
                      SingleProcess)
    with pytest.raises(ValueError, match="kind must be one of"):
        from_environment("gloo", environ={})


def test_single_process_never_imports_mpi4py():
    code = ("import sys, numpy, engine, engine.distributed as d, engine.distributed.step; "
            "from engine.distributed.environment import requested; "
            "c = d.from_environment(); assert type(c).__name__ == 'SingleProcess'; "
            "assert requested('auto') is None; "
            "e = engine.Engine(engine.MLPClassifier(3, 4, hidden=[2]), engine.SGD(lr=0.1), "
            "device='cpu', verbose=False); "
            "e.train((numpy.ones((4, 3)), numpy.arange(4)), batch_size=2, progress=False); "
            "assert e.comm.size == 1 and e._distributed is None; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'; "
            "assert 'cupy' not in sys.modules; print('ok')")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                        "ENGINE_DISTRIBUTED")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
