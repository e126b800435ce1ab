"""MPI communicator on mpi4py: buffer-based upper-case calls on contiguous arrays.

`MPIComm(comm=None, cuda_aware=None)` wraps `MPI.COMM_WORLD` (or the given mpi4py
communicator). Every array collective is one upper-case mpi4py call (`Allreduce`, `Allgather`,
`Allgatherv`, `Reduce_scatter`, `Bcast`) on a C-contiguous buffer whose MPI datatype mpi4py reads
from the array; nothing is pickled but the small control messages of `allgather_object` /
`bcast_object`. Shapes: see comm.py.

Device arrays (a bound GPU backend): with a CUDA-aware MPI (`cuda_aware=True`, or the
environment variable ENGINE_MPI_CUDA_AWARE=1) the CuPy buffers go to MPI directly after a device
synchronisation; otherwise they are staged through host memory (`backend.to_host`, then
`backend.asarray` of the result), which is also what two ranks sharing one GPU use (NCCL
refuses that case, see nccl.py). The pip-installable MPI is the `mpich` wheel
(`pip install ".[distributed]"`), which runs as root without extra flags.

Creating an MPIComm installs a `sys.excepthook` that prints an uncaught exception with its rank
and calls MPI_Abort, so a rank that raises anywhere ends the job instead of leaving the others
waiting in a collective (an MPI job whose rank exits by an exception otherwise hangs).
"""
from __future__ import annotations

import os
import sys

import numpy

from .comm import Communicator, check_counts, report_error


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError("distributed training over MPI needs mpi4py and an MPI library: "
                           "pip install \".[distributed]\" (mpi4py and the mpich wheel), or "
                           f"mpi4py built against the system MPI ({exc})") from None
    return MPI


def _contiguous(a):
    """`a` itself when C-contiguous, else a C-ordered copy (0-d arrays stay 0-d, unlike
    numpy.ascontiguousarray)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class MPIComm(Communicator):
    kind = "mpi"

    def __init__(self, comm=None, cuda_aware=None, install_excepthook=True):
        super().__init__()
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.cuda_aware = (_env_flag("ENGINE_MPI_CUDA_AWARE") if cuda_aware is None
                           else bool(cuda_aware))
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX}
        if install_excepthook:
            self._install_excepthook()

    # -- staging between the backend's arrays and what MPI reads -----------------------------
    def _on_device(self, x):
        """Whether `x` is a device array of the bound backend (host arrays pass as they are,
        also under a GPU backend: configuration checks and initial states are host arrays)."""
        return self.backend is not None and not isinstance(x, numpy.ndarray)

    def _to_buffer(self, x):
        """(buffer MPI reads, device flag): the array itself (host, or device with a CUDA-aware
        MPI, after a synchronisation so its data is written), or a host copy of a device array."""
        if self._on_device(x):
            if self.cuda_aware:
                self.backend.synchronize()
                return _contiguous(x), True
            return _contiguous(numpy.asarray(self.backend.to_host(x))), True
        return _contiguous(numpy.asarray(x)), False

    def _empty(self, shape, dtype, device):
        if device and self.cuda_aware:
            return self.backend.empty(shape, dtype)
        return numpy.empty(shape, dtype=dtype)

    def _from_buffer(self, buf, device):
        if device and not self.cuda_aware:
            return self.backend.asarray(buf)
        return buf

    def _mpi_op(self, op):
        self._check_op(op)
        return self._ops[op]

    # -- collectives ------------------------------------------------------------------------
    def allreduce(self, x, op="sum", inplace=False):
        mpi_op = self._mpi_op(op)
        buf, dev = self._to_buffer(x)
        if inplace and buf.flags.writeable:      # x itself, or its host staging copy
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=mpi_op)
            out = buf
        else:
            out = self._empty(buf.shape, buf.dtype, dev)
            self.comm.Allreduce(buf, out, op=mpi_op)
        self.stats.add("allreduce", buf.nbytes, out.nbytes)
        result = self._from_buffer(out, dev)
        if inplace and result is not x:
            x[...] = result
            return x
        return result

    def allgather(self, x):
        buf, dev = self._to_buffer(x)
        out = self._empty((self.size * buf.shape[0],) + buf.shape[1:], buf.dtype, dev)
        self.comm.Allgather(buf, out)
        self.stats.add("allgather", buf.nbytes, out.nbytes)
        return self._from_buffer(out, dev)

    def allgatherv(self, x, counts=None):
        buf, dev = self._to_buffer(x)
        counts = (self.row_counts(buf.shape[0]) if counts is None
                  else check_counts(counts, self.size))
        if counts[self.rank] != buf.shape[0]:
            raise ValueError(f"allgatherv: rank {self.rank} has {buf.shape[0]} rows, counts say "
                             f"{counts[self.rank]}")
        width = int(numpy.prod(buf.shape[1:], dtype=numpy.int64))
        out = self._empty((sum(counts),) + buf.shape[1:], buf.dtype, dev)
        elems = [c * width for c in counts]
        displs = numpy.concatenate([[0], numpy.cumsum(elems)[:-1]]).astype(numpy.int64).tolist()
        self.comm.Allgatherv(buf, [out, (elems, displs)])
        self.stats.add("allgatherv", buf.nbytes, out.nbytes)
        return self._from_buffer(out, dev)

    def reduce_scatter(self, x, counts=None):
        buf, dev = self._to_buffer(x)
        if counts is None:
            if buf.shape[0] % self.size:
                raise ValueError(f"reduce_scatter: {buf.shape[0]} rows do not split evenly over "
                                 f"{self.size} ranks; give counts")
            counts = [buf.shape[0] // self.size] * self.size
        counts = check_counts(counts, self.size)
        if sum(counts) != buf.shape[0]:
            raise ValueError(f"reduce_scatter: counts {counts} for {buf.shape[0]} rows")
        width = int(numpy.prod(buf.shape[1:], dtype=numpy.int64))
        out = self._empty((counts[self.rank],) + buf.shape[1:], buf.dtype, dev)
        self.comm.Reduce_scatter(buf, out, [c * width for c in counts], op=self.MPI.SUM)
        self.stats.add("reduce_scatter", buf.nbytes, out.nbytes)
        return self._from_buffer(out, dev)

    def bcast(self, x, root=0):
        buf, dev = self._to_buffer(x)
        if not buf.flags.writeable or (buf is x and self.rank != root):
            buf = buf.copy()
        self.comm.Bcast(buf, root=root)
        self.stats.add("bcast", buf.nbytes, buf.nbytes)
        return self._from_buffer(buf, dev)

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(int(code))

    # -- a rank that raises ends the job ------------------------------------------------------
    def _install_excepthook(self):
        if self.size <= 1:
            return
        previous = sys.excepthook

        def hook(etype, value, tb):
            if issubclass(etype, SystemExit) and not value.code:
                return previous(etype, value, tb)
            report_error(self, (etype, value, tb))
            self.abort(1)

        sys.excepthook = hook


__all__ = ["MPIComm"]
