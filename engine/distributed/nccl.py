"""NCCL communicator (`cupy.cuda.nccl`) for ranks that each own a GPU.

`NCCLComm(backend, mpi=None)`: MPI (an `MPIComm`) starts the job and carries the control
messages; rank 0 draws NCCL's unique id and broadcasts it over MPI, every rank then creates its
`NcclCommunicator(size, uid, rank)` on the backend's device, as ChainerMN did. The collectives
run on CuPy's current stream with the device pointers of C-contiguous CuPy arrays (shapes: see
comm.py). NCCL has no variable-count gather or reduce-scatter: `allgatherv` / `reduce_scatter`
with unequal row counts pad every rank's block to the largest count (the counts are host ints
the caller knows or one small MPI exchange), which moves at most N - 1 padding rows.

Host (NumPy) arrays given to an NCCLComm (initial states, configuration checks) go over MPI.

One GPU per rank: before creating the communicator the ranks exchange (host, PCI bus id) of
their device; two ranks on the same GPU make NCCL fail (it refuses duplicate devices), so
`make_nccl_or_mpi` then falls back to MPI with host staging and says so on rank 0.

Not exercised on this project's CI (no GPU): tests/distributed/test_gpu_comm.py checks it where GPUs and NCCL
exist; the MPI path is the tested reference.
"""
from __future__ import annotations

import socket
import sys

import numpy

from .comm import Communicator, check_counts, report_error

_NCCL_TYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
               "uint32": "NCCL_UINT32", "int64": "NCCL_INT64", "uint64": "NCCL_UINT64",
               "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


class NCCLUnavailable(RuntimeError):
    """NCCL cannot serve this job (no NCCL in CuPy, or two ranks on one GPU)."""


def device_identity(backend):
    """(host name, PCI bus id) of the backend's GPU: equal for two ranks sharing one device."""
    xp = backend.xp
    return socket.gethostname(), xp.cuda.Device(backend.device_id).pci_bus_id


def _local_nccl(backend):
    """(("ok", device identity) or ("no", reason), the nccl module or None) on this rank."""
    if backend is None or backend.device == "cpu":
        return ("no", "NCCL needs the GPU backend (device='gpu')"), None
    try:
        from cupy.cuda import nccl
    except Exception as exc:
        return ("no", f"cupy.cuda.nccl is not importable ({exc})"), None
    if not getattr(nccl, "available", True):
        return ("no", "this CuPy was built without NCCL"), None
    return ("ok", device_identity(backend)), nccl


class NCCLComm(Communicator):
    kind = "nccl"

    def __init__(self, backend, mpi=None):
        super().__init__()
        if mpi is None:
            from .mpi import MPIComm
            mpi = MPIComm()
        self.mpi = mpi
        self.rank, self.size = mpi.rank, mpi.size
        # every rank learns every rank's answer, so all take the same branch
        local, nccl = _local_nccl(backend)
        answers = mpi.allgather_object(local)
        problems = [f"rank {r}: {a[1]}" for r, a in enumerate(answers) if a[0] != "ok"]
        if problems:
            raise NCCLUnavailable("; ".join(problems))
        ids = [a[1] for a in answers]
        if len(set(ids)) < len(ids):
            raise NCCLUnavailable(f"ranks share a GPU (host, PCI bus id per rank: {ids}); NCCL "
                                  f"needs one GPU per rank")
        self.nccl = nccl
        self.bind(backend)
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = mpi.bcast_object(uid, root=0)
        with backend.xp.cuda.Device(backend.device_id):
            self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX}

    def bind(self, backend):
        super().bind(backend)
        if getattr(self, "mpi", None) is not None:
            self.mpi.bind(backend)
        return self

    # -- helpers -------------------------------------------------------------------------------
    def _dtype(self, a):
        name = numpy.dtype(a.dtype).name
        if name == "bool":
            raise TypeError("NCCLComm: convert bool arrays to uint8 first")
        try:
            return getattr(self.nccl, _NCCL_TYPES[name])
        except KeyError:
            raise TypeError(f"NCCLComm: no NCCL type for dtype {name}") from None

    def _prepare(self, x):
        xp = self.backend.xp
        return x if x.flags.c_contiguous else xp.ascontiguousarray(x)

    def _stream(self):
        return self.backend.xp.cuda.get_current_stream().ptr

    @staticmethod
    def _host(x):
        return isinstance(x, numpy.ndarray)

    # -- collectives ------------------------------------------------------------------------
    def allreduce(self, x, op="sum", inplace=False):
        if self._host(x):
            return self.mpi.allreduce(x, op, inplace)
        self._check_op(op)
        buf = self._prepare(x)
        out = buf if inplace else self.backend.xp.empty_like(buf)
        self.comm.allReduce(buf.data.ptr, out.data.ptr, buf.size, self._dtype(buf),
                            self._ops[op], self._stream())
        self.stats.add("allreduce", buf.nbytes, out.nbytes)
        if inplace and out is not x:
            x[...] = out
            return x
        return out

    def allgather(self, x):
        if self._host(x):
            return self.mpi.allgather(x)
        buf = self._prepare(x)
        out = self.backend.xp.empty((self.size * buf.shape[0],) + buf.shape[1:], dtype=buf.dtype)
        self.comm.allGather(buf.data.ptr, out.data.ptr, buf.size, self._dtype(buf), self._stream())
        self.stats.add("allgather", buf.nbytes, out.nbytes)
        return out

    def allgatherv(self, x, counts=None):
        if self._host(x):
            return self.mpi.allgatherv(x, counts)
        xp = self.backend.xp
        counts = self.row_counts(x.shape[0]) if counts is None else check_counts(counts, self.size)
        top = max(counts)
        if min(counts) == top:
            return self.allgather(x)
        padded = xp.zeros((top,) + tuple(x.shape[1:]), dtype=x.dtype)
        padded[:x.shape[0]] = x
        blocks = self.allgather(padded).reshape((self.size, top) + tuple(x.shape[1:]))
        return xp.concatenate([blocks[r, :counts[r]] for r in range(self.size)], axis=0)

    def reduce_scatter(self, x, counts=None):
        if self._host(x):
            return self.mpi.reduce_scatter(x, counts)
        xp = self.backend.xp
        if counts is None:
            if x.shape[0] % self.size:
                raise ValueError(f"reduce_scatter: {x.shape[0]} rows do not split evenly over "
                                 f"{self.size} ranks; give counts")
            counts = [x.shape[0] // self.size] * self.size
        counts = check_counts(counts, self.size)
        if sum(counts) != x.shape[0]:
            raise ValueError(f"reduce_scatter: counts {counts} for {x.shape[0]} rows")
        top = max(counts)
        tail = tuple(x.shape[1:])
        if min(counts) == top:
            send = self._prepare(x)
        else:
            send = xp.zeros((self.size, top) + tail, dtype=x.dtype)
            offset = 0
            for r, c in enumerate(counts):
                send[r, :c] = x[offset:offset + c]
                offset += c
        out = xp.empty((top,) + tail, dtype=x.dtype)
        self.comm.reduceScatter(send.data.ptr, out.data.ptr, out.size, self._dtype(out),
                                self._ops["sum"], self._stream())
        self.stats.add("reduce_scatter", send.nbytes, out.nbytes)
        return out[:counts[self.rank]]

    def bcast(self, x, root=0):
        if self._host(x):
            return self.mpi.bcast(x, root)
        buf = self._prepare(x)
        if buf is x and self.rank != root:
            buf = buf.copy()
        self.comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), int(root), self._stream())
        self.stats.add("bcast", buf.nbytes, buf.nbytes)
        return buf

    def allgather_object(self, obj):
        return self.mpi.allgather_object(obj)

    def bcast_object(self, obj, root=0):
        return self.mpi.bcast_object(obj, root)

    def barrier(self):
        self.backend.synchronize()
        self.mpi.barrier()

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(code)


def make_nccl_or_mpi(backend, mpi=None, stream=None):
    """NCCL when every rank has its own GPU, else MPI with host staging; rank 0 says which when
    it falls back. Every rank takes the same branch (the check is collective)."""
    from .mpi import MPIComm
    mpi = mpi if mpi is not None else MPIComm()
    try:
        return NCCLComm(backend, mpi)
    except NCCLUnavailable as exc:
        if mpi.rank == 0:
            (stream or sys.stderr).write(f"[engine] NCCL not used: {exc}; communicating over MPI "
                                         f"with host staging instead\n")
        return mpi.bind(backend)
    except Exception:
        report_error(mpi)
        mpi.abort(1)
        raise


__all__ = ["NCCLComm", "NCCLUnavailable", "make_nccl_or_mpi", "device_identity"]
