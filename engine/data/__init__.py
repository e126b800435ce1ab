"""Data: HDF5 corpora, converters and streaming loaders.

    from engine.data import prepare_ptb, prepare_text, prepare_sotu, open_lm_corpus, NGramLoader
"""
from .arrays import ArrayLoader
from .errors import DataError
from .hdf5_schema import LMCorpus, open_lm_corpus, write_lm_corpus
from .loader import NGramLoader
from .prepare import (default_corpus_path, ensure_default_corpus, prepare_ptb, prepare_sotu,
                      prepare_text)

__all__ = ["ArrayLoader", "DataError", "LMCorpus", "open_lm_corpus", "write_lm_corpus",
           "NGramLoader", "default_corpus_path", "ensure_default_corpus", "prepare_ptb",
           "prepare_sotu", "prepare_text"]
