"""CUDA sources of the engine's kernels (*.cu, *.cuh), installed as package data.

One file per topic; the conventions are in the header comment of `common.cuh` and of each
`.cu` file. `engine/backend/kernels.py` compiles them lazily with NVRTC (through CuPy), one
module per (file, dtype), and caches them; `tests/backend/test_kernels_compile.py` compiles
every file through the same NVRTC call without a GPU. This package holds no Python logic beyond
locating the sources (`engine.backend.kernels.read_source` reads them).
"""
from __future__ import annotations

from pathlib import Path

_DIR = Path(__file__).resolve().parent


def source_dir() -> Path:
    """The folder holding the kernel sources (what NVRTC needs as `-I` for quoted includes)."""
    return _DIR


__all__ = ["source_dir"]
