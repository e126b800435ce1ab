"""The communicator interface every distributed piece talks to, and its single-process case.

One object per process: `rank` (0 ... size - 1) and `size` (N ranks), and the collectives the
engine needs. Arrays of the bound backend go in and arrays of the same backend come out (NumPy
arrays when no backend is bound); the communication engine underneath is MPI (mpi.py) or NCCL
(nccl.py). Shapes, with N ranks and R_r rows on rank r:

    allreduce(x, op)          x (...) on every rank -> (...) elementwise sum or max over ranks
    allgather(x)              x (R, ...) equal on every rank -> (N R, ...) in rank order
    allgatherv(x, counts)     x (R_r, ...) -> (sum_r R_r, ...) in rank order; counts (N,) rows
                              per rank, exchanged first when not given
    reduce_scatter(x, counts) x (sum_r R_r, ...) on every rank -> (R_rank, ...): this rank's
                              block of rows of the elementwise sum over ranks
    bcast(x, root)            x (...) -> root's x on every rank
    allgather_object(obj), bcast_object(obj, root)
                              small pickled control messages (configuration checks, counts);
                              never used for arrays of data
    barrier(), abort(code)    abort ends every rank of the job at once (MPI_Abort)

A result may be the input array itself (always so for `SingleProcess`): callers treat inputs
as consumed. `allreduce(x, op, inplace=True)` reduces into x where the engine allows it.

`stats` counts, per collective, the calls and the payload bytes this rank handed in and got
back (what the benchmark compares with the formula of docs' bytes-per-step model).

`SingleProcess` is the default: every collective returns its input, nothing is imported.
"""
from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager

import numpy

OPS = ("sum", "max")


class CommStats:
    """Calls and payload bytes per collective on this rank (in = handed in, out = got back)."""

    def __init__(self):
        self.ops = {}

    def add(self, op, bytes_in, bytes_out):
        calls, b_in, b_out = self.ops.get(op, (0, 0, 0))
        self.ops[op] = (calls + 1, b_in + int(bytes_in), b_out + int(bytes_out))

    def reset(self):
        self.ops = {}

    def total_bytes(self):
        """Bytes handed in plus bytes got back, over every collective since the last reset."""
        return sum(b_in + b_out for _, b_in, b_out in self.ops.values())

    def as_dict(self):
        return {op: {"calls": c, "bytes_in": i, "bytes_out": o}
                for op, (c, i, o) in self.ops.items()}


def check_counts(counts, size, what="counts"):
    """A host list of `size` non-negative row counts."""
    counts = [int(c) for c in numpy.asarray(counts).reshape(-1)]
    if len(counts) != size or min(counts) < 0:
        raise ValueError(f"{what}: expected {size} non-negative row counts, got {counts}")
    return counts


class Communicator:
    """The interface (see the module docstring); subclasses implement the `_`-prefixed parts."""

    kind = "base"

    def __init__(self):
        self.rank, self.size = 0, 1
        self.backend = None
        self.stats = CommStats()

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    def bind(self, backend):
        """Arrays of `backend` go in and come out (device arrays are staged where needed)."""
        self.backend = backend
        return self

    @property
    def is_root(self):
        return self.rank == 0

    # -- collectives ------------------------------------------------------------------------
    def allreduce(self, x, op="sum", inplace=False):
        raise NotImplementedError

    def allgather(self, x):
        raise NotImplementedError

    def allgatherv(self, x, counts=None):
        raise NotImplementedError

    def reduce_scatter(self, x, counts=None):
        raise NotImplementedError

    def bcast(self, x, root=0):
        raise NotImplementedError

    def allgather_object(self, obj):
        raise NotImplementedError

    def bcast_object(self, obj, root=0):
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def abort(self, code=1):
        raise NotImplementedError

    # -- helpers shared by every implementation ---------------------------------------------
    def row_counts(self, rows):
        """The row counts of every rank (host list of N ints), from this rank's `rows`."""
        mine = numpy.array([int(rows)], dtype=numpy.int64)
        return [int(c) for c in numpy.asarray(self.allgather(mine)).reshape(-1)]

    def equal_counts(self, total):
        """`total` rows split in rank order: rank r gets [r T / N, (r + 1) T / N)."""
        return [(r + 1) * total // self.size - r * total // self.size for r in range(self.size)]

    def _check_op(self, op):
        if op not in OPS:
            raise ValueError(f"{type(self).__name__}: op must be one of {OPS}, got {op!r}")


class SingleProcess(Communicator):
    """One rank: every collective returns its input; imports nothing and costs nothing."""

    kind = "single"

    def allreduce(self, x, op="sum", inplace=False):
        self._check_op(op)
        return x

    def allgather(self, x):
        return x

    def allgatherv(self, x, counts=None):
        if counts is not None:
            check_counts(counts, 1)
        return x

    def reduce_scatter(self, x, counts=None):
        if counts is not None and check_counts(counts, 1)[0] != x.shape[0]:
            raise ValueError(f"reduce_scatter: counts {list(counts)} for {x.shape[0]} rows")
        return x

    def bcast(self, x, root=0):
        return x

    def allgather_object(self, obj):
        return [obj]

    def bcast_object(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def abort(self, code=1):
        raise SystemExit(code)


def report_error(comm, exc_info=None, stream=None):
    """Print the current exception (or `exc_info`) to stderr, prefixed by the rank."""
    stream = stream if stream is not None else sys.stderr
    etype, value, tb = exc_info or sys.exc_info()
    text = "".join(traceback.format_exception(etype, value, tb))
    prefix = f"[rank {comm.rank}/{comm.size}] "
    stream.write("".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")))
    stream.flush()


@contextmanager
def abort_on_error(comm, code=1):
    """Run a block so that an exception on any rank ends the whole job within seconds: the rank
    prints its error (prefixed with the rank) and calls `comm.abort`, so no other rank waits
    forever in a collective. In a single process the exception propagates unchanged."""
    try:
        yield comm
    except BaseException as exc:
        if comm.size <= 1 or isinstance(exc, SystemExit) and not exc.code:
            raise
        report_error(comm)
        comm.abort(code)
        raise


__all__ = ["Communicator", "SingleProcess", "CommStats", "abort_on_error", "report_error",
           "check_counts", "OPS"]
