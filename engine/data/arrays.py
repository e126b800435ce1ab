"""The loader protocol (`Loader`) and in-memory minibatches over (x, y) arrays (`ArrayLoader`).

Every loader the Engine takes is a `Loader`: `__len__` (batches per epoch), `num_examples`,
`iter_from(epoch, start_batch)` yielding `(x, y)` backend arrays, and `close()` (a no-op unless
the loader holds a file). Epoch `e` is shuffled by `numpy.random.default_rng([seed, e])`, so the
same (seed, epoch) gives the same batches and a resumed epoch yields exactly the batches the
uninterrupted one would have. Subclasses: ArrayLoader (here), NGramLoader (loader.py),
ClassificationLoader (classification.py), XMCLoader (xmc.py).

A rank's share (distributed training, engine/distributed): every loader here takes
`part=(rank, size)` and then yields only rows [rank B_i / size, (rank + 1) B_i / size) of each
global minibatch i (B_i rows: the batch size, or fewer for the last one), reading only those
rows; the global minibatches, their number and their order are those of the single-process
loader with the same seed, so the ranks' shares in rank order are its minibatches. A share may
have no row (a minibatch smaller than the number of ranks).
"""
from __future__ import annotations

import abc

import numpy


def batches_per_epoch(num_examples, batch_size, drop_last=False):
    """Batches in one epoch of the loader protocol (the last one short unless drop_last)."""
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


def check_part(part):
    """None, or a valid (rank, size) pair (see the module docstring)."""
    if part is None:
        return None
    rank, size = (int(v) for v in part)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"part must be (rank, size) with 0 <= rank < size, got {part!r}")
    return rank, size


def part_slice(rows, part):
    """This rank's rows of a global minibatch of `rows` rows: [r B / N, (r + 1) B / N)."""
    if part is None:
        return slice(0, rows)
    rank, size = part
    return slice(rank * rows // size, (rank + 1) * rows // size)


def epoch_order(num_examples, shuffle, seed, epoch):
    """Example order of epoch `epoch`: a permutation drawn from (seed, epoch), or 0 ... N - 1."""
    if not shuffle:
        return numpy.arange(num_examples)
    return numpy.random.default_rng([seed, epoch]).permutation(num_examples)


class Loader(abc.ABC):
    """Base class of the loaders: the protocol above, with the shared pieces. A class that
    defines `iter_from` and `__len__` counts as a Loader without subclassing it (as
    collections.abc does for its protocols); `epoch_batches` and `close_loader` serve both."""

    @classmethod
    def __subclasshook__(cls, other):
        if cls is Loader:
            defined = set().union(*(vars(base) for base in other.__mro__))
            if {"iter_from", "__len__"} <= defined:
                return True
        return NotImplemented

    def __len__(self):
        raise NotImplementedError

    @property
    def num_examples(self):
        raise NotImplementedError

    def iter_from(self, epoch=0, start_batch=0):
        """The batches `start_batch`, `start_batch + 1`, ... of epoch `epoch`."""
        raise NotImplementedError

    def __iter__(self):
        return self.iter_from(0, 0)

    def close(self):
        """Release what the loader holds (files, host copies). The default holds nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def epoch_batches(loader, epoch=0, start_batch=0):
    """`loader.iter_from(epoch, start_batch)` as a generator whose `close()` also stops the
    iterator underneath (a prefetch thread, an open chunk), whatever its kind."""
    yield from loader.iter_from(epoch, start_batch)


class ArrayLoader(Loader):
    def __init__(self, x, y, batch_size, shuffle=True, seed=0, backend=None, drop_last=False,
                 part=None):
        x, y = numpy.asarray(x), numpy.asarray(y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"ArrayLoader: x has {x.shape[0]} rows but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("ArrayLoader: empty dataset (0 examples)")
        if batch_size < 1:
            raise ValueError(f"ArrayLoader: batch_size must be positive, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.backend, self.drop_last = backend, drop_last
        self.part = check_part(part)

    @property
    def num_examples(self):
        return self.x.shape[0]

    def __len__(self):
        return batches_per_epoch(self.num_examples, self.batch_size, self.drop_last)

    def order(self, epoch):
        return epoch_order(self.num_examples, self.shuffle, self.seed, epoch)

    def iter_from(self, epoch=0, start_batch=0):
        order = self.order(epoch)
        put = self.backend.asarray if self.backend is not None else (lambda a: a)
        for i in range(start_batch, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            idx = idx[part_slice(idx.shape[0], self.part)]
            yield put(self.x[idx]), put(self.y[idx])
