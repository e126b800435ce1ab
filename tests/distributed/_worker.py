"""One rank of a distributed test job: `mpiexec -n N python tests/distributed/_worker.py ...`.

    _worker.py train OUT_DIR DATA_DIR SCENARIO [SCENARIO ...]
        runs each scenario of dist_scenarios.py through Engine(..., comm=MPIComm) (data files
        in DATA_DIR); writes OUT_DIR/<scenario>.rank<r>.npz (per-step losses, final model and
        optimizer state) and .json (evaluation metrics, the keys that hold label rows, the
        epoch's mean loss, the number of ranks)
    _worker.py uncaught RANK
        rank RANK raises outside any guard: MPIComm's excepthook must still end the job
    _worker.py fail RANK [MESSAGE]
        rank RANK raises (the others wait in a collective): the job must end within seconds
        with that rank's error on stderr
    _worker.py kill RANK
        rank RANK kills itself (SIGKILL) while the others wait in a collective
    _worker.py collectives
        checks every collective of the communicator against its definition on host arrays
        (uneven row counts, 0-d arrays, in place, max, objects) and prints "rank r: ok"
    _worker.py gpu-collectives KIND
        the same on device arrays, with a GPU backend and from_environment(KIND) (needs CuPy
        and a GPU; "nccl" with one GPU per rank gives NCCLComm, two ranks on one GPU MPIComm)
    _worker.py mismatch
        every rank but rank 0 starts with another configuration: check_same_everywhere must
        raise on every rank, naming the ranks that differ
    _worker.py detect [KIND]
        prints the communicator from_environment(KIND) gives this rank (on the CPU backend, so
        "nccl" must fall back to MPI and say why)

The repository root goes first on sys.path, so the ranks import this checkout's `engine`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]

import numpy  # noqa: E402

from engine.distributed import abort_on_error, from_environment  # noqa: E402


def say(line):
    """One whole line in one write (print's separate newline interleaves between ranks)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train(comm, out_dir, data_dir, names):
    from dist_runs import run_engine
    for name in names:
        result = run_engine(name, data_dir, comm)
        base = os.path.join(out_dir, f"{name}.rank{comm.rank}")
        arrays = {"losses": result["losses"]}
        arrays.update({"state/" + k: numpy.asarray(v) for k, v in result["state"].items()})
        numpy.savez(base + ".npz", **arrays)
        with open(base + ".json", "w") as f:
            json.dump({"metrics": result["metrics"], "sharded": result["sharded"],
                       "train_loss": result["train_loss"], "size": comm.size}, f)


def collectives(comm, backend=None):
    """Each collective against what it must return, from arrays every rank can compute. With a
    GPU `backend` the arrays live on the device (NCCL, or MPI with host staging) and come back
    to the host only to be compared."""
    n, r = comm.size, comm.rank
    dev = (lambda a: a) if backend is None else backend.asarray
    host = (lambda a: a) if backend is None else backend.to_host
    xp = numpy if backend is None else backend.xp

    def block(rank, rows):               # rank `rank`'s contribution: distinct known values
        return (numpy.arange(rows * 3, dtype=numpy.float64).reshape(rows, 3) + 100 * rank)

    def same(got, want):
        assert not isinstance(got, numpy.ndarray) or backend is None, "device result on the host"
        numpy.testing.assert_array_equal(host(got), want)

    counts = [q + 1 for q in range(n)]    # uneven: rank q has q + 1 rows
    numpy.testing.assert_array_equal(comm.row_counts(r + 1), counts)
    whole = numpy.concatenate([block(q, counts[q]) for q in range(n)])
    same(comm.allgatherv(dev(block(r, r + 1))), whole)
    same(comm.allgatherv(dev(block(r, r + 1)), counts), whole)
    same(comm.allgather(dev(block(r, 2))), numpy.concatenate([block(q, 2) for q in range(n)]))
    ints = comm.allgatherv(dev(numpy.arange(r + 1, dtype=numpy.int64)))
    assert ints.dtype == numpy.int64 and ints.shape == (sum(counts),)
    # reduce-scatter: every rank holds (sum counts, 3); rank r gets its rows of the sum
    x = numpy.concatenate([block(q, counts[q]) for q in range(n)]) * (r + 1)
    total = sum(range(1, n + 1))
    mine = comm.reduce_scatter(dev(x), counts)
    offset = sum(counts[:r])
    same(mine, whole[offset:offset + counts[r]] * total)
    even = comm.reduce_scatter(dev(numpy.ones((2 * n, 2)) * (r + 1)))
    same(even, numpy.full((2, 2), float(total)))
    # all-reduce: sum, max, 0-d, in place, a non-contiguous input, float32
    assert float(host(comm.allreduce(dev(numpy.array(r + 1.0))))) == total
    assert comm.allreduce(dev(numpy.array(r + 1.0))).shape == ()
    assert float(host(comm.allreduce(dev(numpy.array(float(r))), "max"))) == n - 1
    buf = dev(numpy.full(5, r + 1.0))
    out = comm.allreduce(buf, "sum", inplace=True)
    assert out is buf and bool(xp.all(buf == total))
    strided = dev(numpy.arange(12.0).reshape(3, 4) * (r + 1))[:, ::2]
    same(comm.allreduce(strided), numpy.arange(12.0).reshape(3, 4)[:, ::2] * total)
    same(comm.allreduce(dev(numpy.full(3, r + 0.5, dtype=numpy.float32))),
         numpy.full(3, sum(q + 0.5 for q in range(n)), dtype=numpy.float32))
    # broadcast and the control messages
    same(comm.bcast(dev(numpy.full(4, float(r))), root=n - 1), numpy.full(4, float(n - 1)))
    assert comm.allgather_object(("rank", r)) == [("rank", q) for q in range(n)]
    assert comm.bcast_object({"from": r}, root=0) == {"from": 0}
    comm.barrier()
    assert n == 1 or comm.stats.ops["allreduce"][0] >= 5    # SingleProcess moves nothing
    say(f"rank {r}: ok")


def gpu_collectives(kind):
    """`collectives` on device arrays through from_environment(kind) with a GPU backend: each
    rank takes GPU (local rank mod count), as `engine train` does; prints the communicator."""
    from engine.backend import get_backend
    from engine.distributed.run import _select_gpu
    _select_gpu("gpu")
    backend = get_backend("gpu", verbose=False)
    comm = from_environment(kind, backend=backend)
    say(f"rank {comm.rank} of {comm.size}: {type(comm).__name__} on GPU {backend.device_id}")
    collectives(comm, backend)


def fail(comm, rank, message):
    numpy.zeros(1)
    if comm.rank == rank:
        time.sleep(0.2)
        raise RuntimeError(message)
    comm.allreduce(numpy.ones(3), "sum")       # the others wait here for the failed rank


def kill(comm, rank):
    if comm.rank == rank:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    comm.allreduce(numpy.ones(3), "sum")


def main(argv):
    comm = from_environment()
    if argv[0] == "uncaught":
        fail(comm, int(argv[1]), "uncaught failure")
    with abort_on_error(comm):
        what = argv[0]
        if what == "train":
            train(comm, argv[1], argv[2], argv[3:])
        elif what == "fail":
            fail(comm, int(argv[1]), " ".join(argv[2:]) or "deliberate failure")
        elif what == "kill":
            kill(comm, int(argv[1]))
        elif what == "collectives":
            collectives(comm)
        elif what == "gpu-collectives":
            gpu_collectives(argv[1])
        elif what == "uncaught":
            pass
        elif what == "mismatch":
            from engine.distributed.step import check_same_everywhere
            check_same_everywhere(comm, "configurations", {"lr": 0.1 if comm.rank == 0 else 0.2})
        elif what == "detect":
            if len(argv) > 1:
                from engine.backend import Backend
                comm = from_environment(argv[1], backend=Backend())
            say(f"rank {comm.rank} of {comm.size}: {type(comm).__name__}")
        else:
            raise SystemExit(f"_worker.py: unknown command {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
