"""CUDA sources of the engine's kernels (*.cu, *.cuh), installed as package data.

One file per topic; the conventions are in the header comment of `common.cuh` and of each
`.cu` file. `engine/backend/kernels.py` compiles them lazily with NVRTC (through CuPy) and
caches the functions; `tests/backend/test_kernels_compile.py` checks that every file compiles
without a GPU. This package holds no Python logic beyond locating the sources.
"""
from __future__ import annotations

from pathlib import Path

_DIR = Path(__file__).resolve().parent


def source_dir() -> Path:
    """The folder holding the kernel sources (what NVRTC needs as `-I` for quoted includes)."""
    return _DIR


__all__ = ["source_dir"]
