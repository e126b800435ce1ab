"""Training over several processes or GPUs: a data-parallel body and label-sharded outputs.

N ranks (processes, one device each) each take rows [r B / N, (r + 1) B / N) of the global
minibatch through a replicated body, and rank r owns the labels [r L / N, (r + 1) L / N) of
the output layer with their weights and optimizer state; only h (B x d), dh and a few numbers
per row move between ranks. With float64 the result equals the single-process run to rounding.

    comm.py             the communicator interface; SingleProcess (the default, imports nothing)
    mpi.py              MPIComm (mpi4py; device arrays staged through the host unless the MPI
                        is CUDA-aware)
    nccl.py             NCCLComm (cupy.cuda.nccl, one GPU per rank; MPI fallback otherwise)
    environment.py      from_environment(): which communicator this process gets
    shard.py            label ranges, minibatch rows, the ShardedOutput mixin, top-k merging
    sharded_softmax.py  exact softmax, whole or chunked (vocabulary-parallel)
    sharded_multilabel.py  squared hinge and BCE over dense or fixed fan-in weights
    sharded_factored.py    the exact factored layer (V sharded, the d x d state replicated)
    data_parallel.py    gradient all-reduce (one flat buffer) / row-sparse all-gather, and the
                        weighting of a replicated (data-parallel) output such as adaptive softmax
    step.py             shard_model, DistributedStep (one training step), eval_sums
    run.py              what Engine does over N ranks: the communicator and device, the
                        start-up checks, rank 0's run folder, each rank's data, evaluation sums
    checkpoints.py      sharded checkpoints (one file per rank and a manifest), merge and split

`Engine(model, optimizer, comm="auto")` (or `mpiexec -n N engine train ...`) uses all of it;
`engine checkpoint merge|split` moves a run between N ranks and one.

Importing this package imports neither mpi4py nor CuPy; `from_environment()` imports mpi4py
only when the launcher started more than one rank (or when asked to).
"""
from __future__ import annotations

from .comm import Communicator, SingleProcess, abort_on_error
from .environment import from_environment, launched_size
from .shard import batch_rows, label_range

__all__ = ["Communicator", "SingleProcess", "abort_on_error", "from_environment",
           "launched_size", "batch_rows", "label_range"]
