"""What `Engine` does differently over N ranks (engine/engine.py calls these when its
communicator has more than one rank; the single-process engine never imports this module).

    backend, comm = attach(comm, device, verbose)   # the communicator, and this rank's device
    prepare_model(comm, model, optimizer, seed, dtype)  # the same model everywhere; shard it
    run_dir = check_run(comm, config, data, run_dir)    # the same run everywhere; rank 0's folder
    log = RankLog(run_dir)                          # ranks > 0: no console, no files but shards
    loader = rank_share(loader, comm)               # a caller's loader cut to this rank's rows
    sums = reduce_sums(comm, xp, sums)              # evaluation: one all-reduce at the end
    ids, logp = predict_topk(engine, x, k)          # every rank gets every row's top-k

Rows: rank r trains on rows [r B / N, (r + 1) B / N) of every global minibatch of B rows
(engine/data/arrays.py `part`), in the single-process order for the same seed.

Device: with `comm` given as a kind ("auto", "mpi", "nccl", "single") and more than one rank
launched, a GPU run puts rank r on GPU (local rank mod the number of GPUs) before the backend
is made; the local rank comes from the launcher (MPI_LOCALRANKID for MPICH's Hydra,
OMPI_COMM_WORLD_LOCAL_RANK for Open MPI, MV2_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID).
"""
from __future__ import annotations

import hashlib
import os

import numpy

from .comm import Communicator, SingleProcess
from .environment import from_environment, launched_rank, launched_size
from .shard import batch_rows
from .step import check_same_everywhere, config_digest, shard_model

LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK",
                        "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


def local_rank(environ=None):
    """This process's rank among the ranks on its machine (the launcher's variables; else its
    global rank; else 0)."""
    env = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                break
    return launched_rank(env) or 0


def _select_gpu(device):
    """Make GPU (local rank mod GPU count) current, for a GPU run of several ranks on one machine
    (before the backend is made: CupyBackend takes the current device)."""
    if device not in ("gpu", "auto"):
        return
    from ..backend import gpu_available
    ok, _ = gpu_available()
    if not ok:
        return
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    if count > 1:
        cupy.cuda.Device(local_rank() % count).use()


def attach(comm, device="auto", verbose=True):
    """(backend, communicator) of an Engine. `comm`: None (one process), a kind for
    from_environment ("auto" detects the launcher), or a Communicator (bound to the new backend
    unless it already has one, which is then the Engine's: an NCCLComm is made with its GPU)."""
    from ..backend import get_backend
    if comm is None:
        return get_backend(device, verbose=verbose), SingleProcess()
    if isinstance(comm, Communicator):
        if comm.backend is not None:
            return comm.backend, comm
        if comm.size > 1:
            _select_gpu(device)
        backend = get_backend(device, verbose=verbose and comm.rank == 0)
        return backend, comm.bind(backend)
    if not isinstance(comm, str):
        raise TypeError(f"comm must be None, a Communicator or a kind (auto, single, mpi, nccl), "
                        f"got {type(comm).__name__}")
    several = launched_size() > 1 and comm.strip().lower() != "single"
    if several:
        _select_gpu(device)
    rank = (launched_rank() or 0) if several else 0
    backend = get_backend(device, verbose=verbose and rank == 0)
    return backend, from_environment(comm, backend)


def prepare_model(comm, model, optimizer, seed, dtype):
    """Check that every rank builds the same model and optimizer (one all-gather of a hash;
    ValueError on every rank naming those that differ), then replace the output layer by its
    label-sharded version (engine/distributed/step.py shard_model). Before the model is bound."""
    check_same_everywhere(comm, "configurations or data (their models or optimizers differ)", {
        "model": type(model).__name__, "config": model.config(),
        "optimizer": type(optimizer).__name__, "optimizer_config": optimizer.config(),
        "seed": int(seed), "dtype": str(dtype)})
    return shard_model(model, comm)


def _array_digest(a):
    """A hash of an in-memory array (dense, or scipy CSR by its three arrays)."""
    h = hashlib.sha256()
    parts = [a.indptr, a.indices, a.data] if hasattr(a, "indptr") else [numpy.asarray(a)]
    for p in parts:
        p = numpy.ascontiguousarray(p)
        h.update(f"{p.dtype.str}{p.shape}".encode())
        h.update(p.view(numpy.uint8).reshape(-1).data)
    return h.hexdigest()[:16]


def data_description(data):
    """What ranks compare about a data source: a dataset's summary (DatasetInfo, without its
    path: ranks may read copies, with a hash of its word or label counts), a hash of in-memory
    arrays, a loader's type and length."""
    from ..data.hdf5_schema import LMCorpus
    from ..data.info import DatasetInfo
    from ..data.registry import as_info
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike, DatasetInfo)):
        info = as_info(data)
        summary = dict(info.summary())
        summary.pop("path", None)
        for name in ("word_counts", "label_counts"):      # the file's content, roughly
            counts = getattr(info, name, None)
            if counts is not None:
                summary[name] = _array_digest(counts)
        return summary
    if isinstance(data, LMCorpus):
        return {"corpus_vocabulary": data.vocab_hash(),
                "splits": {s: data.split_length(s) for s in data.splits}}
    if isinstance(data, tuple) and len(data) == 2:
        return {"x": _array_digest(data[0]), "y": _array_digest(data[1])}
    return {"loader": type(data).__name__, "batches": len(data)}


def check_run(comm, config, train, valid, run_dir):
    """Every rank must run the same training (its resolved options, config.toml's content
    without the data's path) on the same data (data_description of train and valid): one
    all-gather of a hash, ValueError on every rank naming the ranks that differ from rank 0.
    Returns rank 0's run folder (a timestamped "auto" folder differs between ranks)."""
    config = {table: dict(entries) for table, entries in (config or {}).items()}
    config.pop("data", None)
    what = {"config": config, "train": data_description(train),
            "valid": data_description(valid)}
    answers = comm.allgather_object((config_digest(what), run_dir))
    odd = [r for r, (digest, _) in enumerate(answers) if digest != answers[0][0]]
    if odd:
        raise ValueError(f"ranks were started with different configurations or data: rank(s) "
                         f"{odd} differ from rank 0 (options, data file contents or arrays)")
    return answers[0][1]


class RankLog:
    """The run folder as ranks other than 0 see it: they write their checkpoint shards there
    and nothing else (rank 0 keeps log.txt, metrics.json, plot.png and config.toml)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.log_path = os.path.join(run_dir, "log.txt")
        self.metrics_path = os.path.join(run_dir, "metrics.json")
        self.plot_path = os.path.join(run_dir, "plot.png")
        self.checkpoint_path = os.path.join(run_dir, "checkpoint.h5")
        self.best_path = os.path.join(run_dir, "best.h5")
        self.config_path = os.path.join(run_dir, "config.toml")

    def write_config(self):
        return self.config_path

    def line(self, text):
        pass

    def write_metrics(self, history, steps):
        pass

    def plot(self, history, steps):
        return None


class RankShare:
    """A caller's loader (global minibatches) cut to this rank's rows of each: it reads whole
    minibatches; the engine's own loaders read only their share (engine/data/arrays.py part)."""

    def __init__(self, loader, rank, size):
        self.loader, self.rank, self.size = loader, rank, size

    def __len__(self):
        return len(self.loader)

    @property
    def num_examples(self):
        return self.loader.num_examples

    def iter_from(self, epoch=0, start_batch=0):
        for x, y in self.loader.iter_from(epoch, start_batch):
            rows = batch_rows(int(y.shape[0]), self.size, self.rank)
            yield x[rows], y[rows]

    def close(self):
        """The caller's loader stays open (the caller closes it)."""


def rank_share(loader, comm):
    """`loader` itself when it already yields this rank's share (its `part`), else RankShare."""
    if tuple(getattr(loader, "part", None) or ()) == (comm.rank, comm.size):
        return loader
    return RankShare(loader, comm.rank, comm.size)


def reduce_sums(comm, xp, sums):
    """{key: 0-d float64} summed over the ranks in one all-reduce (the keys come in the same
    order on every rank: every rank evaluates the same number of minibatches of one model)."""
    keys = list(sums)
    if not keys:
        return sums
    packed = xp.stack([xp.asarray(sums[k], dtype=numpy.float64).reshape(()) for k in keys])
    packed = comm.allreduce(packed, "sum", inplace=True)
    return {k: packed[i] for i, k in enumerate(keys)}


def predict_topk(engine, x, k):
    """Engine.predict_topk over the ranks: each rank runs its rows of x (every rank gives the
    same x), and every rank gets the (ids, log-probabilities or scores) of all rows."""
    comm, backend = engine.comm, engine.backend
    x = backend.asarray(x)
    rows = batch_rows(int(x.shape[0]), comm.size, comm.rank)
    ids, vals = engine.model.predict_topk(x[rows], k)
    counts = comm.row_counts(ids.shape[0])
    return comm.allgatherv(ids, counts), comm.allgatherv(vals, counts)


__all__ = ["attach", "prepare_model", "check_run", "data_description", "RankLog", "RankShare",
           "rank_share", "reduce_sums", "predict_topk", "local_rank", "launched_rank"]
