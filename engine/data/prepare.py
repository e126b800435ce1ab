"""Converters from text corpora to the language-model HDF5 schema (`hdf5_schema.py`).

- `prepare_text`: plain-text files (one sentence/paragraph per line), optional valid/test files or
  fractions of the training lines held out at the end.
- `prepare_ptb`: the Penn Treebank in Mikolov's preprocessing (`ptb.{train,valid,test}.txt`):
  whitespace tokens, case kept, `<unk>` already in the text.
- `prepare_sotu`: the US State of the Union addresses tar.gz (`YEAR_president_x.txt` members),
  split by year, lowercased, word-tokenised.
- `default_corpus_path` / `ensure_default_corpus`: the SOTU archive shipped in the repository
  (`data/addresses.tar.gz`, installed as the package `engine_data`) and its prepared HDF5 cache.

Every converter streams: the input is read line by line twice (count the training words, then
encode every split into int32 pieces appended to the HDF5 file), so memory holds the word counts
and one piece of ids, never the corpus as Python lists. Input is read as bytes and decoded line by
line, so a file that is not UTF-8 is reported with its line number. The output is written
atomically: a failed conversion leaves no file and does not touch an existing one.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import os
import re
import sys
import tarfile
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError
from .hdf5_schema import LMCorpusWriter, open_lm_corpus
from .text import count_tokens, get_tokenizer, iter_encoded_chunks, vocab_from_counts

PathLike = Union[str, os.PathLike]
Paths = Union[PathLike, Sequence[PathLike]]

SOTU_MIN_COUNT = 4      # ~12.4k words on the 1790-2000 training addresses (see data/README.md)
# `prepare_text` (and `engine prepare text`) defaults, chosen for raw English text: split words
# from punctuation, fold case, and fold words seen fewer than 3 times into <unk>. The last one
# matters most: with every training word kept, the training split holds no <unk> while held-out
# text does (words never seen in training), so the model never learns to predict <unk> and
# held-out perplexity is worse than counting words. Pre-tokenised corpora (PTB, WikiText) want
# tokenizer "whitespace" and case kept.
TEXT_TOKENIZER = "words"
TEXT_LOWERCASE = True
TEXT_MIN_COUNT = 3
DEFAULT_CORPUS_NAME = "sotu-v1.h5"
_SOTU_MEMBER = re.compile(r"(?:^|/)(\d{4})_[^/]*\.txt$")


# ------------------------------------------------------------------------ line sources
def _decode(raw: bytes, where: Callable[[], str], lineno: int) -> str:
    if b"\x00" in raw:
        raise DataError(f"{where()}, line {lineno}: NUL byte: expected UTF-8 plain text, "
                        f"this looks like a binary file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where()}, line {lineno}: not UTF-8 text ({e.reason} at byte "
                        f"{e.start} of the line): expected UTF-8 encoded plain text") from None


def _open_binary(path: str):
    try:
        if path.endswith(".gz"):
            f = gzip.open(path, "rb")
        else:
            f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (expected a UTF-8 plain-text file)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a UTF-8 plain-text file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied (expected a readable text file)") from None
    return f


def _iter_file_lines(path: str) -> Iterator[str]:
    """The lines of one file, decoded and checked (BOM dropped)."""
    with _open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield _decode(raw, lambda: path, lineno)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: read error (corrupt gzip file?): {e}") from e


def _count_lines(path: str) -> int:
    with _open_binary(path) as f:
        try:
            return sum(1 for _ in f)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: read error (corrupt gzip file?): {e}") from e


class TextLines:
    """A re-iterable source of lines: the files `paths` concatenated, lines [start, stop)."""

    def __init__(self, paths: Sequence[str], start: int = 0, stop: Optional[int] = None):
        self.paths = list(paths)
        self.start, self.stop = start, stop

    @property
    def name(self) -> str:
        names = ", ".join(self.paths[:3]) + (", ..." if len(self.paths) > 3 else "")
        if self.start or self.stop is not None:
            names += f" (lines {self.start + 1}..{'end' if self.stop is None else self.stop})"
        return names

    def __iter__(self) -> Iterator[str]:
        i = 0
        for path in self.paths:
            for line in _iter_file_lines(path):
                if self.stop is not None and i >= self.stop:
                    return
                if i >= self.start:
                    yield line
                i += 1


class TarLines:
    """A re-iterable source of lines: members `names` of a tar archive, in that order."""

    def __init__(self, archive: str, names: Sequence[str], label: str = ""):
        self.archive = archive
        self.names = list(names)
        self.label = label

    @property
    def name(self) -> str:
        return f"{self.archive} ({self.label or f'{len(self.names)} members'})"

    def __iter__(self) -> Iterator[str]:
        with _open_tar(self.archive) as tf:
            for member_name in self.names:
                where = f"{self.archive}: {member_name}"
                try:
                    f = tf.extractfile(tf.getmember(member_name))
                    if f is None:
                        raise DataError(f"{where}: not a regular file")
                    for lineno, raw in enumerate(f, 1):
                        yield _decode(raw, lambda: where, lineno)
                except (tarfile.TarError, OSError, EOFError, zlib.error, KeyError) as e:
                    raise DataError(f"{where}: cannot read member (corrupt archive?): {e}") from e


def _open_tar(archive: str) -> tarfile.TarFile:
    if not os.path.exists(archive):
        raise DataError(f"{archive}: no such file (expected a tar.gz of "
                        f"YEAR_president_x.txt files)")
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e}); expected a tar.gz of "
                        f"YEAR_president_x.txt files") from e


def _as_paths(paths: Optional[Paths], what: str) -> List[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = [os.fspath(p) for p in paths]
    if not out:
        raise DataError(f"{what}: empty list of files (expected at least one text file)")
    for p in out:
        if not os.path.exists(p):
            raise DataError(f"{p}: no such file (expected a UTF-8 plain-text {what} file)")
        if os.path.isdir(p):
            raise DataError(f"{p}: is a folder, expected a UTF-8 plain-text {what} file")
    return out


# ------------------------------------------------------------------------------ the core
@dataclasses.dataclass
class PrepareSummary:
    """What a conversion did: output path, tokens per split, vocabulary, OOV rate, time."""

    output: str
    vocab_size: int
    min_count: int
    split_tokens: Dict[str, int]
    unk_rate: Dict[str, float]      # fraction of a split's tokens that are the unk id
    seconds: float
    source: str
    warnings: List[str] = dataclasses.field(default_factory=list)   # one line each

    def as_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        splits = ", ".join(f"{s} {n:,} tokens ({100 * self.unk_rate[s]:.2f}% <unk>)"
                           for s, n in self.split_tokens.items())
        return (f"{self.output}: vocabulary {self.vocab_size:,} words (min_count "
                f"{self.min_count}); {splits}; {self.seconds:.1f} s; source: {self.source}"
                + "".join(f"; warning: {w}" for w in self.warnings))


def unk_warning(unk_rate: Dict[str, float], min_count: int) -> Optional[str]:
    """The warning (one line) for a training split without `<unk>` beside held-out splits with
    some, or None. Such a model is never trained to predict `<unk>`, yet held-out text scores
    it at every unseen word."""
    held = {s: r for s, r in unk_rate.items() if s != "train" and r > 0}
    if unk_rate.get("train", 0) > 0 or not held:
        return None
    rates = " and ".join(f"{100 * r:.2f}% of the {s}" for s, r in held.items())
    return (f"the training split has no <unk> (no training word is seen fewer than min_count="
            f"{min_count} times) but {rates} tokens are <unk>: the model never learns to "
            f"predict <unk>, which hurts held-out perplexity; raise --min-count or set "
            f"--max-vocab")


def _prepare(output: PathLike, sources: Dict[str, object], *, min_count: int,
             max_vocab: Optional[int], lowercase: bool, tokenizer: str, source: str,
             extra_attrs: Optional[dict] = None,
             log: Optional[Callable[[str], None]] = None) -> PrepareSummary:
    """Count the training words, build the vocabulary, encode every split, write atomically.

    `sources` maps split names to re-iterable line sources (with a `.name` for messages);
    "train" is required.
    """
    if output is None:
        raise TypeError("prepare: the output path is required")
    get_tokenizer(tokenizer)            # fail on a bad name before reading anything
    t0 = time.perf_counter()
    output = os.fspath(output)
    train = sources["train"]
    counts = count_tokens(train, lowercase=lowercase, tokenizer=tokenizer)
    if not counts:
        raise DataError(f"{train.name}: empty corpus: no tokens in the training text "
                        f"(expected at least one word)")
    vocab = vocab_from_counts(counts, min_count=min_count, max_size=max_vocab)
    del counts
    if log:
        log(f"vocabulary: {len(vocab):,} words from {train.name}")
    split_tokens: Dict[str, int] = {}
    unk_rate: Dict[str, float] = {}
    with LMCorpusWriter(output) as writer:
        for split, lines in sources.items():
            writer.create_split(split)
            n = unk = 0
            for ids in iter_encoded_chunks(lines, vocab, lowercase=lowercase,
                                           tokenizer=tokenizer):
                writer.append_tokens(split, ids)
                n += ids.size
                unk += int(np.count_nonzero(ids == vocab.unk_id))
            if n == 0:
                raise DataError(f"{lines.name}: empty corpus: no tokens for the {split} split "
                                f"(expected at least one word)")
            split_tokens[split] = n
            unk_rate[split] = unk / n
            if log:
                log(f"{split}: {n:,} tokens")
        warning = unk_warning(unk_rate, min_count)
        if warning and log:
            log(f"warning: {warning}")
        attrs = dict(extra_attrs or {})
        attrs.update(tokenizer=tokenizer, lowercase=int(bool(lowercase)))
        if max_vocab is not None:
            attrs["max_vocab"] = int(max_vocab)
        writer.finish(vocab.words, vocab.counts, unk_id=vocab.unk_id, eos_id=vocab.eos_id,
                      min_count=min_count, source=source, **attrs)
    return PrepareSummary(output, len(vocab), min_count, split_tokens, unk_rate,
                          time.perf_counter() - t0, source, [warning] if warning else [])


# ---------------------------------------------------------------------------- converters
def prepare_text(train: Paths, valid: Optional[Paths] = None, test: Optional[Paths] = None,
                 output: Optional[PathLike] = None, *, min_count: int = TEXT_MIN_COUNT,
                 max_vocab: Optional[int] = None, lowercase: bool = TEXT_LOWERCASE,
                 tokenizer: str = TEXT_TOKENIZER, valid_fraction: float = 0.05,
                 test_fraction: float = 0.05, source: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> PrepareSummary:
    """Convert plain-text files (one sentence/paragraph per line) into an HDF5 corpus at `output`.

    `train`, `valid`, `test`: a path or a list of paths (concatenated in order). When `valid`
    (`test`) is not given, the last `valid_fraction` (`test_fraction`) of the training lines are
    held out for it, test last (a fraction of 0 leaves that split out). The vocabulary comes
    from the training lines only (`min_count`, at most `max_vocab` words); `tokenizer` is
    "whitespace" (pre-tokenised text) or "words" (raw text). The defaults (words, lowercased,
    min_count 3) suit raw text; see TEXT_MIN_COUNT. Returns a `PrepareSummary`, whose `warnings`
    says when the training split has no `<unk>` but a held-out split has some.
    """
    train_paths = _as_paths(train, "training")
    valid_paths = _as_paths(valid, "validation")
    test_paths = _as_paths(test, "test")
    for name, frac in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    held = [(s, f) for s, f, given in (("valid", valid_fraction, valid_paths),
                                       ("test", test_fraction, test_paths)) if not given and f > 0]
    sources: Dict[str, object] = {}
    if held:
        total = sum(_count_lines(p) for p in train_paths)
        sizes = [max(1, int(round(total * f))) for _, f in held]
        n_train = total - sum(sizes)
        if n_train < 1:
            raise DataError(f"{', '.join(train_paths)}: {total} lines: too few to hold out "
                            f"{' and '.join(s for s, _ in held)} lines and keep training lines "
                            f"(expected more lines, or pass valid/test files)")
        sources["train"] = TextLines(train_paths, 0, n_train)
        start = n_train
        for (split, _), size in zip(held, sizes):
            sources[split] = TextLines(train_paths, start, start + size)
            start += size
    else:
        sources["train"] = TextLines(train_paths)
    if valid_paths:
        sources["valid"] = TextLines(valid_paths)
    if test_paths:
        sources["test"] = TextLines(test_paths)
    sources = {s: sources[s] for s in ("train", "valid", "test") if s in sources}
    if source is None:
        source = "plain text: " + "; ".join(f"{s}: {src.name}" for s, src in sources.items())
    return _prepare(output, sources, min_count=min_count, max_vocab=max_vocab,
                    lowercase=lowercase, tokenizer=tokenizer, source=source, log=log)


def prepare_ptb(ptb_dir: PathLike, output: PathLike,
                log: Optional[Callable[[str], None]] = None) -> PrepareSummary:
    """Convert the Penn Treebank (Mikolov's `ptb.{train,valid,test}.txt` in `ptb_dir`).

    Whitespace tokens, case kept, every training word kept (the files already map rare words to
    `<unk>`): 929,589 / 73,760 / 82,430 tokens and 10,000 words.
    """
    ptb_dir = os.fspath(ptb_dir)
    paths = {s: os.path.join(ptb_dir, f"ptb.{s}.txt") for s in ("train", "valid", "test")}
    for p in paths.values():
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such file (expected Mikolov's ptb.train.txt, "
                            f"ptb.valid.txt and ptb.test.txt in {ptb_dir})")
    return prepare_text(paths["train"], paths["valid"], paths["test"], output, min_count=1,
                        lowercase=False, tokenizer="whitespace",
                        source=f"Penn Treebank (Mikolov's preprocessing) from {ptb_dir}", log=log)


def _sotu_members(archive: str) -> List[Tuple[int, str]]:
    with _open_tar(archive) as tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{archive}: cannot list the archive (corrupt?): {e}") from e
    found = []
    for m in members:
        match = _SOTU_MEMBER.search(m.name)
        if match and m.isfile():
            found.append((int(match.group(1)), m.name))
    if not found:
        raise DataError(f"{archive}: no member named YEAR_president_x.txt (expected the State "
                        f"of the Union addresses archive, e.g. 1790_george_washington_n.txt)")
    return sorted(found, key=lambda yn: (yn[0], os.path.basename(yn[1])))


def prepare_sotu(archive: Optional[PathLike] = None, output: Optional[PathLike] = None, *,
                 train_until: int = 2000, valid_until: int = 2010,
                 min_count: int = SOTU_MIN_COUNT, max_vocab: Optional[int] = None,
                 log: Optional[Callable[[str], None]] = None) -> PrepareSummary:
    """Convert the State of the Union addresses tar.gz (default: the shipped archive).

    Addresses of years <= `train_until` are training text, <= `valid_until` validation, later
    ones test (a split with no address is left out; training must have one). Text is lowercased
    and word-tokenised; each line (a paragraph) ends with `<eos>`.
    """
    archive = os.fspath(archive) if archive is not None else str(default_corpus_path())
    if valid_until < train_until:
        raise ValueError(f"valid_until ({valid_until}) < train_until ({train_until})")
    members = _sotu_members(archive)
    groups: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    for year, name in members:
        split = "train" if year <= train_until else "valid" if year <= valid_until else "test"
        groups[split].append(name)
    if not groups["train"]:
        raise DataError(f"{archive}: no address dated up to {train_until} (years "
                        f"{members[0][0]}..{members[-1][0]}): the training split would be empty")
    labels = {"train": f"years ..{train_until}", "valid": f"years {train_until + 1}..{valid_until}",
              "test": f"years {valid_until + 1}.."}
    sources = {s: TarLines(archive, names, labels[s]) for s, names in groups.items() if names}
    source = (f"US State of the Union addresses {members[0][0]}-{members[-1][0]} "
              f"({os.path.basename(archive)}), split by year: train <= {train_until}, "
              f"valid <= {valid_until}, test later; lowercased, word-tokenised")
    return _prepare(output, sources, min_count=min_count, max_vocab=max_vocab, lowercase=True,
                    tokenizer="words", source=source,
                    extra_attrs={"train_until": train_until, "valid_until": valid_until},
                    log=log)


# ------------------------------------------------------------------- the embedded default
def default_corpus_path() -> Path:
    """Path of the shipped State of the Union archive (`addresses.tar.gz` in `engine_data`)."""
    candidates = []
    try:
        candidates.append(importlib.resources.files("engine_data") / "addresses.tar.gz")
    except Exception:   # namespace package quirks (editable installs, Python < 3.10)
        pass
    try:
        import engine_data
        candidates += [Path(p) / "addresses.tar.gz" for p in getattr(engine_data, "__path__", [])]
    except ImportError:
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "data" / "addresses.tar.gz")
    for c in candidates:
        try:
            if c.is_file():
                return Path(os.fspath(c))
        except (OSError, TypeError):
            continue
    raise DataError("addresses.tar.gz: the shipped default corpus was not found (expected it in "
                    "the package engine_data, i.e. the repository's data/ folder; reinstall "
                    "the engine)")


def default_cache_dir() -> Path:
    """$ENGINE_CACHE, else ~/.cache/engine."""
    env = os.environ.get("ENGINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "engine"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_default_corpus(cache_dir: Optional[PathLike] = None,
                          log: Optional[Callable[[str], None]] = _stderr) -> Path:
    """The prepared default corpus (SOTU), converting it into the cache on first use.

    The file is `<cache_dir>/sotu-v1.h5` (`cache_dir` defaults to $ENGINE_CACHE, else
    ~/.cache/engine). A cached file that fails validation is prepared again. `log` receives a
    line saying what was done (None: silent).
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / DEFAULT_CORPUS_NAME
    say = log or (lambda message: None)
    if path.exists():
        try:
            with open_lm_corpus(path) as corpus:
                description = repr(corpus)
            say(f"default corpus: using the cached {description}")
            return path
        except DataError as e:
            say(f"default corpus: the cached file is unusable ({e}); preparing it again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the cache folder ({e}); set ENGINE_CACHE "
                        f"to a writable folder") from e
    say(f"default corpus: preparing {default_corpus_path()} into {path} (once)")
    summary = prepare_sotu(default_corpus_path(), path)
    say(f"default corpus: {summary}")
    return path
