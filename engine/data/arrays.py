"""In-memory minibatches over (x, y) arrays, with the same protocol as the streaming loaders.

Protocol shared by every loader the Engine takes: `__len__` (batches per epoch),
`num_examples`, `iter_from(epoch, start_batch)` yielding `(x, y)` backend arrays — epoch
`e` is shuffled by `numpy.random.default_rng([seed, e])`, so the same (seed, epoch) gives the
same batches and a resumed epoch yields exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import numpy


class ArrayLoader:
    def __init__(self, x, y, batch_size, shuffle=True, seed=0, backend=None, drop_last=False):
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

    @property
    def num_examples(self):
        return self.x.shape[0]

    def __len__(self):
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch):
        if not self.shuffle:
            return numpy.arange(self.num_examples)
        return numpy.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def iter_from(self, epoch=0, start_batch=0):
        order = self.order(epoch)
        put = self.backend.asarray if self.backend is not None else (lambda a: a)
        for i in range(start_batch, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield put(self.x[idx]), put(self.y[idx])

    def __iter__(self):
        return self.iter_from(0, 0)
