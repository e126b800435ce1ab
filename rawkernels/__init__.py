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


def source_names(suffix: str = ".cu") -> list[str]:
    """Names of the kernel sources with `suffix` (".cu" or ".cuh"), sorted."""
    return sorted(p.name for p in _DIR.iterdir() if p.is_file() and p.name.endswith(suffix))


def source_path(name: str) -> Path:
    """Path of `rawkernels/<name>`; FileNotFoundError naming the files there when missing."""
    if not name or Path(name).name != name:
        raise ValueError(f"rawkernels: expected a bare file name, got {name!r}")
    path = _DIR / name
    if not path.is_file():
        known = ", ".join(source_names(".cu") + source_names(".cuh"))
        raise FileNotFoundError(f"rawkernels: no file {name!r} in {_DIR} (have: {known})")
    return path


def read_source(name: str) -> str:
    """Text of `rawkernels/<name>`."""
    return source_path(name).read_text(encoding="utf-8")


__all__ = ["read_source", "source_dir", "source_names", "source_path"]
