"""Streaming n-gram batches from a language-model corpus: `NGramLoader`.

An example is one position i of a split's token stream: x = the `context` ids before it,
y = the id at i. Every position is an example, so every token is predicted exactly once per epoch
and the number of examples equals the split length. Positions 0..context-1 lack predecessors:
their windows are left-padded with the eos id (the stream start counts as a sentence boundary,
exactly as after an `<eos>`).

Shapes: x is (B, C) int32, y is (B,) int32 (B = batch size, C = context). Batches are
`backend.asarray` of those (NumPy arrays with backend=None).

Streaming: the split is cut into chunks of `chunk_tokens` positions; a chunk is read from HDF5
with its `context` predecessors (the overlap), so at most one chunk is in memory. The epoch is
the concatenation, in chunk order, of each chunk's positions; batches are consecutive runs of
`batch_size` of that sequence (a batch may span two chunks).

Shuffling (deterministic): the chunk order is a permutation drawn from
`numpy.random.default_rng([seed, epoch])`; the positions of chunk c are permuted with
`default_rng([seed, epoch, c])`. Seeding each chunk on its own (rather than drawing every
permutation from the epoch's one generator) lets `iter_from(epoch, start_batch)` jump straight to
the chunk holding that batch when resuming mid-epoch, without replaying the chunks before it.
The same (seed, epoch) always gives the same batches; with shuffle=False the order is the stream
order. Across chunks, examples mix at the granularity of a chunk: keep `chunk_tokens` large (the
default, 16 Mi positions, holds PTB, the shipped SOTU corpus and text8 whole, so their shuffle is
global) so a batch draws from a wide stretch of the corpus.

A rank's share (`part=(rank, size)`, distributed training): each global batch i of B_i rows
is formed as above, and only its rows [rank B_i / size, (rank + 1) B_i / size) are gathered from
the chunk windows (engine/data/arrays.py); the batches' number and order do not change.

Prefetch: with prefetch=True a background thread prepares the next batches (host indexing and
`backend.asarray`, i.e. the host-to-device copy) into a queue of 2 while the consumer works on the
current one. An exception in the thread is re-raised in the consumer; when the consumer stops
early (break, exception, the iterator dropped) the thread is told to stop and joined, so no thread
outlives its iterator. `backend.asarray` therefore runs in that thread: a GPU backend must select
its device there itself (CuPy's current device and stream are per thread).
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, Optional, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .arrays import Loader, check_part, part_slice
from .errors import DataError
from .hdf5_schema import LMCorpus, open_lm_corpus

PREFETCH_DEPTH = 2
#: Positions per chunk. A split up to this long is one chunk, so its shuffle is global; a longer
#: one mixes within 16 Mi-token stretches. Memory: 4 bytes of ids + 8 of permutation per position
#: (192 MiB for a full chunk). Smaller chunks bias batches: SOTU, whose training split runs in
#: year order, showed a loss jump mid-epoch with 1 Mi-token chunks (two halves of history).
DEFAULT_CHUNK_TOKENS = 1 << 24


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class NGramLoader(Loader):
    """Batches (x, y) of (previous `context` ids, next id) over a split, streamed and shuffled.

    `corpus_or_path`: an open `LMCorpus` (left open by `close`) or a path (opened, validated and
    owned). `len(loader)` is the number of batches per epoch, `num_examples` the split length.
    Iterating yields the batches of the epoch set by `set_epoch` (0 at first); `iter_from(epoch,
    start_batch)` resumes mid-epoch with exactly the batches the full epoch yields from there.
    """

    def __init__(self, corpus_or_path, split: str, context: int, batch_size: int,
                 shuffle: bool = True, seed: int = 0, backend=None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 drop_last: bool = False, prefetch: bool = True, part=None):
        self.context = _positive_int("context", context)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.chunk_tokens = _positive_int("chunk_tokens", chunk_tokens)
        self.seed = _positive_int("seed", seed, 0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.prefetch = bool(prefetch)
        self.backend = backend
        self.split = split
        self.part = check_part(part)            # (rank, size): this rank's rows of each batch
        if isinstance(corpus_or_path, LMCorpus):
            self.corpus, self._owns_corpus = corpus_or_path, False
        else:
            self.corpus, self._owns_corpus = open_lm_corpus(corpus_or_path), True
        try:
            self._n = self.corpus.require_split(split, purpose="training or evaluation")
        except DataError:
            self.close()
            raise
        self.eos_id = self.corpus.eos_id
        self.num_chunks = -(-self._n // self.chunk_tokens)
        self.epoch = 0
        self._cache: Tuple[Optional[int], Optional[np.ndarray]] = (None, None)

    def __repr__(self):
        return (f"NGramLoader({self.corpus.path!r}, split={self.split!r}, context={self.context},"
                f" batch_size={self.batch_size}, examples={self._n:,}, batches={len(self):,})")

    # ----------------------------------------------------------------------- sizes
    @property
    def num_examples(self) -> int:
        """Examples per epoch: the split length (one per token)."""
        return self._n

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self._n // self.batch_size
        return -(-self._n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (hence the shuffle) that iterating the loader yields."""
        self.epoch = _positive_int("epoch", epoch, 0)

    # ------------------------------------------------------------------ the order
    def chunk_order(self, epoch: int) -> np.ndarray:
        """The chunk ids in the order epoch `epoch` visits them."""
        if not self.shuffle:
            return np.arange(self.num_chunks)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks)

    def _chunk_bounds(self, c: int) -> Tuple[int, int]:
        start = c * self.chunk_tokens
        return start, min(start + self.chunk_tokens, self._n)

    def _chunk_positions(self, epoch: int, c: int, size: int) -> np.ndarray:
        """Positions (relative to the chunk start) in the order the epoch takes them."""
        if not self.shuffle:
            return np.arange(size)
        return np.random.default_rng([self.seed, epoch, c]).permutation(size)

    def _chunk_windows(self, c: int) -> np.ndarray:
        """(size, context + 1) view: row r = the ids at chunk positions r-context .. r."""
        cached_c, windows = self._cache
        if cached_c == c:
            return windows
        start, stop = self._chunk_bounds(c)
        lo = max(0, start - self.context)
        ids = self.corpus.read_tokens(self.split, lo, stop)
        if ids.shape[0] != stop - lo:
            raise DataError(f"{self.corpus.path}: /{self.split}/tokens[{lo}:{stop}] returned "
                            f"{ids.shape[0]} ids (file changed while reading?)")
        pad = self.context - (start - lo)
        if pad:
            ids = np.concatenate([np.full(pad, self.eos_id, dtype=np.int32), ids])
        windows = sliding_window_view(ids, self.context + 1)
        self._cache = (c, windows)
        return windows

    # ------------------------------------------------------------------- batches
    def _host_batches(self, epoch: int, start_batch: int) -> Iterator[Tuple[np.ndarray, ...]]:
        """The epoch's host batches from `start_batch` on (arguments checked by the caller)."""
        B, C = self.batch_size, self.context
        order = self.chunk_order(epoch)
        sizes = np.array([self._chunk_bounds(c)[1] - self._chunk_bounds(c)[0] for c in order],
                         dtype=np.int64)
        ends = np.cumsum(sizes)
        first = start_batch * B                      # position in the epoch's sequence
        k0 = int(np.searchsorted(ends, first, side="right"))
        remaining = len(self) - start_batch          # batches still to yield
        batch = start_batch
        mine = self._own_rows(batch)                 # this rank's rows of the current batch
        pending, have = [], 0
        for k in range(k0, len(order)):
            c = int(order[k])
            windows = self._chunk_windows(c)
            positions = self._chunk_positions(epoch, c, int(sizes[k]))
            if k == k0:
                positions = positions[first - (int(ends[k]) - int(sizes[k])):]
            i = 0
            while i < positions.shape[0]:
                take = positions[i:i + B - have]
                lo, hi = max(mine.start - have, 0), min(mine.stop - have, take.shape[0])
                if lo < hi:
                    pending.append(windows[take[lo:hi]])
                have += take.shape[0]
                i += take.shape[0]
                if have == B:
                    yield self._split_xy(pending, C)
                    remaining -= 1
                    if remaining <= 0:
                        return
                    batch += 1
                    mine = self._own_rows(batch)
                    pending, have = [], 0
        if have and remaining > 0 and not self.drop_last:
            yield self._split_xy(pending, C)

    def _own_rows(self, batch):
        """This loader's rows of batch `batch` (all of them, or a rank's share of them)."""
        rows = min(self.batch_size, self._n - batch * self.batch_size)
        return part_slice(rows, self.part)

    @staticmethod
    def _split_xy(pieces, C):
        if not pieces:                               # a rank's empty share of a small batch
            return np.zeros((0, C), dtype=np.int32), np.zeros((0,), dtype=np.int32)
        rows = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return np.ascontiguousarray(rows[:, :C]), np.ascontiguousarray(rows[:, C])

    def _convert(self, batch):
        if self.backend is None:
            return batch
        x, y = batch
        return self.backend.asarray(x), self.backend.asarray(y)

    def iter_from(self, epoch: int, start_batch: int = 0) -> Iterator[Tuple[object, object]]:
        """Batches `start_batch`, `start_batch + 1`, ... of epoch `epoch` (for resuming)."""
        epoch = _positive_int("epoch", epoch, 0)
        start_batch = _positive_int("start_batch", start_batch, 0)
        if start_batch >= len(self):
            return iter(())
        batches = map(self._convert, self._host_batches(epoch, start_batch))
        if not self.prefetch:
            return batches
        return _prefetched(batches, PREFETCH_DEPTH)

    def __iter__(self):
        return self.iter_from(self.epoch, 0)

    # --------------------------------------------------------------------- closing
    def close(self) -> None:
        """Close the corpus if this loader opened it."""
        self._cache = (None, None)
        if self._owns_corpus and self.corpus is not None:
            self.corpus.close()



# ------------------------------------------------------------------------- prefetching
_ITEM, _DONE, _ERROR = 0, 1, 2


def _put(q: queue.Queue, stop: threading.Event, message) -> bool:
    """Put `message`, waiting for room unless `stop` is set; False when stopped."""
    while not stop.is_set():
        try:
            q.put(message, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(source, q: queue.Queue, stop: threading.Event) -> None:
    """Thread body: run `source` into `q`. Holds no reference to the consumer's iterator."""
    try:
        for item in source:
            if not _put(q, stop, (_ITEM, item)):
                return
        _put(q, stop, (_DONE, None))
    except BaseException as e:          # handed to the consumer, re-raised there
        _put(q, stop, (_ERROR, e))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _prefetched(source, depth: int):
    """Yield the items of `source`, computed `depth` ahead by a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(source, q, stop), daemon=True,
                              name="engine-ngram-prefetch")
    del source
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == _ITEM:
                yield item
            elif kind == _DONE:
                return
            else:
                raise item
    finally:
        stop.set()
        thread.join()
