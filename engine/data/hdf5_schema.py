"""The HDF5 schema of a language-model corpus: atomic writer, validating reader.

Layout (``format = "engine-lm-corpus"``, ``format_version = 1``)::

    /                 attrs: format, format_version (int), vocab_size, unk_id, eos_id,
                             min_count, source (free text), vocab_sha256, plus any extra attrs
    /vocab            (V,) variable-length UTF-8 strings, frequency-sorted: id 0 the most frequent
    /counts           (V,) int64, the training-split count of each vocabulary id
    /{split}/tokens   (N,) int32, one stream per split (train, valid, test): the ids of the
                      split's sentences/lines, each followed by the <eos> id

Dimension letters: V = vocabulary size, N = tokens in a split.

`write_lm_corpus` (or `LMCorpusWriter`, which takes a split in pieces so a converter can stream)
writes atomically: into a temporary file beside the target, fsync, `os.replace`; on any error the
temporary file is removed and a file already at the target path is left untouched.
Token streams are chunked and gzip-compressed (gzip rather than lzf: any HDF5 tool reads it).

`open_lm_corpus` validates everything a training run relies on before it starts (format,
version, vocabulary/counts consistency, every token id in [0, V), scanned in bounded chunks)
and raises `DataError` naming the file, the field or split, and the first bad position.
`describe_file(path, open_file)` is the registry's description (a DatasetInfo: vocabulary,
counts, split lengths; tokens not scanned).
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import h5py
import numpy as np

from .atomic_h5 import AtomicH5Writer
from .errors import DataError

FORMAT = "engine-lm-corpus"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
TOKEN_CHUNK = 1 << 16          # HDF5 chunk of a token stream: 64 Ki ids = 256 KiB
CHECK_CHUNK = 1 << 22          # ids read at once when validating a split (16 MiB)
_STR = h5py.string_dtype("utf-8")


def vocab_hash(vocab: Iterable[str]) -> str:
    """A stable hash (sha256 hex) of a vocabulary: its words in id order.

    Two corpora share a hash exactly when they map the same words to the same ids, so a
    checkpoint can store it and refuse data with another vocabulary.
    """
    h = hashlib.sha256()
    for word in vocab:
        b = word.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------------- writing
class LMCorpusWriter(AtomicH5Writer):
    """Writes one corpus file atomically; a split's tokens may be appended in pieces.

    Usage::

        with LMCorpusWriter(path) as w:
            w.append_tokens("train", ids_part1); w.append_tokens("train", ids_part2)
            w.finish(vocab, counts, unk_id=..., eos_id=..., min_count=..., source=...)

    Nothing appears at `path` until `finish` returns; leaving the `with` block by an exception
    (or without `finish`) removes the temporary file.
    """

    def __init__(self, path):
        super().__init__(path)
        self.lengths: Dict[str, int] = {}
        self.ranges: Dict[str, tuple] = {}   # split -> (min id, max id) appended

    def create_split(self, split: str):
        """Create `/{split}/tokens`, empty (appending creates it too)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
        if split not in self.lengths:
            self.file.create_dataset(
                f"{split}/tokens", shape=(0,), maxshape=(None,), dtype=np.int32,
                chunks=(TOKEN_CHUNK,), compression="gzip", compression_opts=4, shuffle=True)
            self.lengths[split] = 0

    def append_tokens(self, split: str, ids) -> None:
        """Append int ids (a 1-D array) to the end of `/{split}/tokens`."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"split {split!r}: expected a 1-D integer array, got "
                             f"{ids.dtype} of shape {ids.shape}")
        self.create_split(split)
        if ids.size == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
            raise ValueError(f"split {split!r}: ids {lo}..{hi} do not fit int32")
        ds = self.file[f"{split}/tokens"]
        n = self.lengths[split]
        ds.resize((n + ids.size,))
        ds[n:] = ids.astype(np.int32, copy=False)
        self.lengths[split] = n + ids.size
        old_lo, old_hi = self.ranges.get(split, (lo, hi))
        self.ranges[split] = (min(lo, old_lo), max(hi, old_hi))

    def finish(self, vocab: Sequence[str], counts, unk_id: int, eos_id: int,
               min_count: int = 1, source: str = "", **extra_attrs) -> str:
        """Write the vocabulary and attributes, check the token ranges, and move into place."""
        vocab = [str(w) for w in vocab]
        counts = np.asarray(counts)
        size = len(vocab)
        if size == 0:
            raise DataError(f"{self.path}: empty vocabulary")
        if len(set(vocab)) != size:
            raise DataError(f"{self.path}: vocabulary words are not unique")
        if counts.shape != (size,) or (size and not np.issubdtype(counts.dtype, np.integer)):
            raise DataError(f"{self.path}: counts must be {size} integers (one per word), "
                            f"got {counts.dtype} of shape {counts.shape}")
        for name, value in (("unk_id", unk_id), ("eos_id", eos_id)):
            if not 0 <= int(value) < size:
                raise DataError(f"{self.path}: {name}={value} outside [0, {size})")
        for split, (lo, hi) in self.ranges.items():
            if lo < 0 or hi >= size:   # find and name the first bad position
                _check_ids(self.file[f"{split}/tokens"], size, self.path, split)
        f = self.file
        f.create_dataset("vocab", data=np.array(vocab, dtype=object), dtype=_STR)
        f.create_dataset("counts", data=counts.astype(np.int64), chunks=True,
                         compression="gzip", compression_opts=4)
        f.attrs.update(extra_attrs)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["vocab_size"] = np.int64(size)
        f.attrs["unk_id"] = np.int64(unk_id)
        f.attrs["eos_id"] = np.int64(eos_id)
        f.attrs["min_count"] = np.int64(min_count)
        f.attrs["source"] = str(source)
        f.attrs["vocab_sha256"] = vocab_hash(vocab)
        return self.commit()


def write_lm_corpus(path, vocab: Sequence[str], counts, splits: Mapping[str, np.ndarray],
                    attrs: Optional[Mapping] = None) -> str:
    """Write a corpus file atomically; returns `path`.

    `vocab` is the frequency-sorted word list, `counts` the training count of each id, `splits`
    maps split names (train/valid/test) to 1-D int token streams, `attrs` holds `unk_id` and
    `eos_id` (required), `min_count`, `source` and any extra root attributes.
    """
    attrs = dict(attrs or {})
    missing = [k for k in ("unk_id", "eos_id") if k not in attrs]
    if missing:
        raise DataError(f"{os.fspath(path)}: attrs lack {missing} (expected unk_id and eos_id)")
    for derived in ("format", "format_version", "vocab_sha256"):
        attrs.pop(derived, None)
    declared = attrs.pop("vocab_size", None)
    if declared is not None and int(declared) != len(vocab):
        raise DataError(f"{os.fspath(path)}: attrs vocab_size={declared} but the vocabulary "
                        f"has {len(vocab)} words")
    with LMCorpusWriter(path) as w:
        for split, ids in splits.items():
            w.append_tokens(split, ids)
        return w.finish(vocab, counts, **attrs)


# --------------------------------------------------------------------------------- reading
def _check_ids(ds, size: int, path: str, split: str, chunk: Optional[int] = None) -> None:
    """Every id of the dataset `ds` in [0, size), read `chunk` (default CHECK_CHUNK) at a time."""
    chunk = chunk or CHECK_CHUNK
    n = ds.shape[0]
    for start in range(0, n, chunk):
        block = ds[start:start + chunk]
        if block.size == 0:
            continue
        if block.min() < 0 or block.max() >= size:
            bad = int(np.flatnonzero((block < 0) | (block >= size))[0])
            raise DataError(
                f"{path}: split {split!r}, /{split}/tokens position {start + bad}: token id "
                f"{int(block[bad])} outside the vocabulary range [0, {size})")


class LMCorpus:
    """An open, validated language-model corpus file (see `open_lm_corpus`).

    Attributes: `path`, `vocab` (list of str), `vocab_size`, `counts` (int64 array), `unk_id`,
    `eos_id`, `min_count`, `source`, `attrs` (all root attributes), `splits` (names present).
    Token streams stay on disk: `read_tokens(split, start, stop)` reads a slice.
    """

    def __init__(self, path, file: h5py.File, vocab: List[str], counts: np.ndarray, attrs: dict):
        self.path = os.fspath(path)
        self.file = file
        self.vocab = vocab
        self.counts = counts
        self.attrs = attrs
        self.vocab_size = len(vocab)
        self.unk_id = int(attrs["unk_id"])
        self.eos_id = int(attrs["eos_id"])
        self.min_count = int(attrs.get("min_count", 1))
        self.source = str(attrs.get("source", ""))
        self.splits = tuple(s for s in SPLITS if s in file and "tokens" in file[s])
        self._lengths = {s: int(file[f"{s}/tokens"].shape[0]) for s in self.splits}
        self._hash = None
        self._index = None

    def __repr__(self):
        lengths = ", ".join(f"{s}={n:,}" for s, n in self._lengths.items())
        return f"LMCorpus({self.path!r}, vocab_size={self.vocab_size:,}, {lengths})"

    @property
    def index(self) -> Dict[str, int]:
        """word -> id."""
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.vocab)}
        return self._index

    def _need(self, split: str) -> None:
        if split not in self._lengths:
            raise DataError(f"{self.path}: no split {split!r} (expected /{split}/tokens; "
                            f"the file has {list(self.splits) or 'no splits'})")

    def split_length(self, split: str) -> int:
        """Number of tokens (eos included) in `split`."""
        self._need(split)
        return self._lengths[split]

    def require_split(self, split: str, purpose: str = "training") -> int:
        """The length of `split`, or DataError when it is missing or empty."""
        n = self.split_length(split)
        if n == 0:
            raise DataError(f"{self.path}: split {split!r} is empty (/{split}/tokens has no "
                            f"tokens): expected at least one token for {purpose}")
        return n

    def read_tokens(self, split: str, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """tokens[start:stop] of `split` as int32 (only that slice is read from disk)."""
        self._need(split)
        n = self._lengths[split]
        stop = n if stop is None else min(stop, n)
        start = max(0, min(start, stop))
        try:
            return np.asarray(self.file[f"{split}/tokens"][start:stop], dtype=np.int32)
        except (OSError, RuntimeError) as e:
            raise DataError(f"{self.path}: cannot read /{split}/tokens[{start}:{stop}] "
                            f"(corrupt or truncated file?): {e}") from e

    def tokens(self, split: str) -> np.ndarray:
        """The whole token stream of `split` (mind the memory for a big split)."""
        return self.read_tokens(split)

    def vocab_hash(self) -> str:
        """sha256 hex of the vocabulary (see `vocab_hash`)."""
        if self._hash is None:
            self._hash = vocab_hash(self.vocab)
        return self._hash

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_lm_corpus(path, check_tokens: bool = True) -> LMCorpus:
    """Open and validate a corpus file; DataError (naming file and field) on any problem.

    With `check_tokens` (the default) every split is scanned, in chunks of `CHECK_CHUNK` ids,
    for ids outside [0, vocab_size).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file (expected an {FORMAT} HDF5 file; "
                        f"make one with `engine prepare`)")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected an {FORMAT} HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}; "
                        f"expected a file written by `engine prepare` (a language-model corpus, or a "
                        f"classification file from `engine prepare mnist|xmc`)") from e
    try:
        corpus = _validate(path, f, check_tokens)
    except DataError:
        f.close()
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        f.close()
        raise DataError(f"{path}: unreadable {FORMAT} file (truncated or corrupt?): "
                        f"{type(e).__name__}: {e}") from e
    except BaseException:
        f.close()
        raise
    return corpus


def describe_file(path, f: h5py.File):
    """The DatasetInfo of an open corpus file (the registry's describe): structure validated,
    token ids not scanned (the loaders scan them)."""
    from .info import LM_CORPUS, DatasetInfo, scalar_attrs
    path = os.path.abspath(os.fspath(path))
    try:
        corpus = _validate(path, f, check_tokens=False)
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: unreadable {FORMAT} file (truncated or corrupt?): "
                        f"{type(e).__name__}: {e}") from e
    attrs = scalar_attrs(corpus.attrs)
    splits = {s: corpus.split_length(s) for s in corpus.splits}
    return DatasetInfo(
        path=path, format=FORMAT, kind=LM_CORPUS, splits=splits, num_train=splits.get("train"),
        vocab_size=corpus.vocab_size, vocab=tuple(corpus.vocab), vocab_hash=corpus.vocab_hash(),
        word_counts=corpus.counts, unk_id=corpus.unk_id, eos_id=corpus.eos_id,
        min_count=corpus.min_count, tokenizer=str(attrs.get("tokenizer", "whitespace")),
        lowercase=bool(attrs.get("lowercase", 0)), attrs=attrs)


def _attr_int(path, attrs, name) -> int:
    if name not in attrs:
        raise DataError(f"{path}: root attribute {name!r} missing (expected an integer)")
    value = attrs[name]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise DataError(f"{path}: root attribute {name!r} = {value!r}: expected an integer")
    return int(value)


def _validate(path: str, f: h5py.File, check_tokens: bool) -> LMCorpus:
    attrs = dict(f.attrs)
    fmt = attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT:
        raise DataError(f"{path}: root attribute 'format' is {fmt!r}, expected {FORMAT!r} "
                        f"(is this a language-model corpus written by `engine prepare`?)")
    version = _attr_int(path, attrs, "format_version")
    if version != FORMAT_VERSION:
        newer = " (written by a newer version of the engine?)" if version > FORMAT_VERSION else ""
        raise DataError(f"{path}: format_version {version}, expected {FORMAT_VERSION}{newer}")
    for name in ("vocab", "counts"):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise DataError(f"{path}: dataset /{name} missing")
    vds, cds = f["vocab"], f["counts"]
    if vds.ndim != 1 or h5py.check_string_dtype(vds.dtype) is None:
        raise DataError(f"{path}: /vocab must be a 1-D dataset of strings, got {vds.dtype} "
                        f"of shape {vds.shape}")
    vocab = [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in vds[()]]
    size = len(vocab)
    if size == 0:
        raise DataError(f"{path}: /vocab is empty")
    declared = _attr_int(path, attrs, "vocab_size")
    if declared != size:
        raise DataError(f"{path}: root attribute vocab_size={declared} but /vocab has {size} words")
    if len(set(vocab)) != size:
        raise DataError(f"{path}: /vocab words are not unique")
    if cds.shape != (size,) or not np.issubdtype(cds.dtype, np.integer):
        raise DataError(f"{path}: /counts must be {size} integers (one per /vocab word), got "
                        f"{cds.dtype} of shape {cds.shape}")
    counts = np.asarray(cds[()], dtype=np.int64)
    if size and counts.min() < 0:
        raise DataError(f"{path}: /counts[{int(np.argmin(counts))}] is negative")
    rising = np.flatnonzero(np.diff(counts) > 0)
    if rising.size:
        i = int(rising[0]) + 1
        raise DataError(f"{path}: /counts not frequency-sorted: id {i} ({vocab[i]!r}) has count "
                        f"{counts[i]} > id {i - 1}'s {counts[i - 1]} (expected non-increasing)")
    for name in ("unk_id", "eos_id"):
        value = _attr_int(path, attrs, name)
        if not 0 <= value < size:
            raise DataError(f"{path}: root attribute {name}={value} outside [0, {size})")
    stored = attrs.get("vocab_sha256")
    if stored is not None and str(stored) != vocab_hash(vocab):
        raise DataError(f"{path}: /vocab does not match its stored vocab_sha256 (corrupt file?)")
    for split in SPLITS:
        if split not in f:
            continue
        if not isinstance(f[split], h5py.Group) or "tokens" not in f[split]:
            raise DataError(f"{path}: /{split} has no 'tokens' dataset")
        ds = f[f"{split}/tokens"]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or \
                not np.issubdtype(ds.dtype, np.integer):
            raise DataError(f"{path}: /{split}/tokens must be a 1-D integer dataset, got "
                            f"{getattr(ds, 'dtype', type(ds).__name__)} of shape "
                            f"{getattr(ds, 'shape', '?')}")
        if check_tokens:
            _check_ids(ds, size, path, split)
    return LMCorpus(path, f, vocab, counts, attrs)
