"""Every CUDA source in rawkernels/ compiles, with no GPU needed, through the loader's own path.

NVRTC (preferred; needs CuPy and NVIDIA's NVRTC library, not a device): for every (file, dtype)
the test takes `kernels.module_spec(file, dtype)` -- the exact code, options and name expressions
`kernels.get_module` hands to `cupy.RawModule` -- adds what CuPy's RawModule adds before NVRTC
(`cupy._core.core.assemble_cupy_compiler_options`, then `-ftz=true` from its compile cache), and
compiles with `cupy.cuda.compiler.compile_using_nvrtc` (which adds the architecture and
`--device-as-default-execution-space`), for compute_XX PTX. CuPy picks the architecture from
the current device; here, with none, it is pinned to `ARCH`. Every name expression must lower
to a mangled name that is an entry of the PTX.

nvcc (fallback, only when NVRTC cannot be used here): each `.cu` file ends with explicit
instantiations for float and double guarded by `#ifdef RAWKERNELS_INSTANTIATE`, compiled with
`nvcc --ptx -arch=sm_ARCH -std=c++14 -I rawkernels -DRAWKERNELS_INSTANTIATE`.

The test says which compiler it used (a line on stdout, the JUnit property "compiler", and a
warning when it fell back to nvcc). When neither exists it fails (it never skips): CI installs
CuPy and NVRTC (.ci/run).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from engine.backend import kernels

SOURCE_DIR = kernels.source_dir()
CU_FILES = sorted(p.name for p in SOURCE_DIR.glob("*.cu"))
DTYPES = ("float32", "float64")
#: the H200 / H100 architecture (NVRTC 12.0-12.7 compiles up to 90)
ARCH = "90"

INSTALL_HINT = (
    "no CUDA compiler found to check rawkernels/*.cu: install CuPy with NVRTC "
    "(`pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12`, or cupy-cuda13x with "
    "nvidia-cuda-nvrtc), or the CUDA toolkit so that `nvcc` is on PATH (or CUDA_HOME)"
)


def find_nvcc() -> str | None:
    exe = shutil.which("nvcc")
    if exe:
        return exe
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and os.access(Path(root) / "bin" / "nvcc", os.X_OK):
            return str(Path(root) / "bin" / "nvcc")
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if os.access(default, os.X_OK) else None


def find_nvrtc():
    """(CuPy's compiler module, NVRTC version) when CuPy and an NVRTC library load, else
    (None, the reason)."""
    try:
        from cupy.cuda import compiler
        from cupy_backends.cuda.libs import nvrtc
        version = nvrtc.getVersion()
    except Exception as exc:                       # no CuPy, or no NVRTC library
        return None, f"{type(exc).__name__}: {exc}"
    return compiler, version


def loader_options(options):
    """What cupy.RawModule adds to the loader's options before NVRTC sees them."""
    try:
        from cupy._core import core
        options = tuple(core.assemble_cupy_compiler_options(tuple(options)))
    except Exception:           # (headers of CUDA not found: ours need none)
        options = tuple(options)
    return options + ("-ftz=true",)


def compile_nvrtc(compiler, cu_file, dtype, monkeypatch):
    code, options, exprs = kernels.module_spec(cu_file, dtype)
    # CuPy chooses -arch from the current device (memoized per device); pin it to PTX for ARCH
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc",
                        lambda arch=None: (f"-arch=compute_{arch}", "ptx"))
    try:
        ptx, mapping = compiler.compile_using_nvrtc(
            code, loader_options(options), arch=ARCH, filename=cu_file, name_expressions=exprs)
    except Exception as exc:
        pytest.fail(f"NVRTC failed on rawkernels/{cu_file} ({dtype}) with the loader's options "
                    f"{options}: {exc}", pytrace=False)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    return ptx, exprs, mapping


def compile_nvcc(nvcc: str, cu_file: str, out_dir: Path) -> str:
    ptx_path = out_dir / (cu_file + ".ptx")
    cmd = [nvcc, "--ptx", f"-arch=sm_{ARCH}", "-std=c++14", "-I", str(SOURCE_DIR),
           "-DRAWKERNELS_INSTANTIATE", str(SOURCE_DIR / cu_file), "-o", str(ptx_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"nvcc failed on rawkernels/{cu_file}:\n{' '.join(cmd)}\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    return ptx_path.read_text()


@pytest.fixture(scope="module")
def compiler():
    module, info = find_nvrtc()
    if module is not None:
        print(f"\n[rawkernels] compiling with NVRTC {info[0]}.{info[1]} (the loader's path)")
        return "nvrtc", module
    nvcc = find_nvcc()
    if nvcc:
        print(f"\n[rawkernels] NVRTC unavailable ({info}); compiling with {nvcc}")
        return "nvcc", nvcc
    pytest.fail(f"{INSTALL_HINT} (NVRTC: {info})", pytrace=False)


def test_there_are_kernel_sources():
    assert CU_FILES, f"no .cu files in {SOURCE_DIR}"
    assert (SOURCE_DIR / "common.cuh").is_file()
    assert set(kernels.KERNELS) == set(CU_FILES), "KERNELS and rawkernels/*.cu disagree"


def test_compiler_in_use_is_reported(compiler, record_property):
    kind, _ = compiler
    record_property("compiler", kind)
    if kind == "nvcc":
        warnings.warn("rawkernels compiled with the nvcc fallback: NVRTC (the loader's "
                      "compiler) is not installed here")
    assert kind in ("nvrtc", "nvcc")


@pytest.mark.parametrize("cu_file", CU_FILES)
def test_cu_file_compiles_for_float_and_double(cu_file, compiler, tmp_path, monkeypatch,
                                               record_property):
    kind, tool = compiler
    record_property("compiler", kind)
    if kind == "nvrtc":
        for dtype in DTYPES:
            ptx, exprs, mapping = compile_nvrtc(tool, cu_file, dtype, monkeypatch)
            entries = set(re.findall(r"\.entry\s+([A-Za-z0-9_]+)", ptx))
            for expr in exprs:
                lowered = mapping.get(expr)
                assert lowered, f"NVRTC: no lowered name for {expr} in rawkernels/{cu_file}"
                assert lowered in entries, (
                    f"NVRTC: {expr} -> {lowered} is not an entry of the PTX of "
                    f"rawkernels/{cu_file}; entries: {sorted(entries)}")
        return
    ptx = compile_nvcc(tool, cu_file, tmp_path)
    entries = re.findall(r"\.entry\s+([A-Za-z0-9_]+)", ptx)
    assert entries, f"nvcc: no kernel entries in the PTX of rawkernels/{cu_file}"
    for name in kernels.KERNELS.get(cu_file, ()):
        for code, ctype in (("f", "float"), ("d", "double")):
            mangled = f"_Z{len(name)}{name}I{code}E"
            assert any(e.startswith(mangled) for e in entries), (
                f"nvcc: kernel {name}<{ctype}> missing from rawkernels/{cu_file}; "
                f"entries: {entries}")


@pytest.mark.parametrize("cu_file", CU_FILES)
def test_sources_are_nvrtc_compatible(cu_file):
    """No system/host headers (NVRTC has none): only quoted includes of rawkernels files."""
    for path in [SOURCE_DIR / cu_file] + sorted(SOURCE_DIR.glob("*.cuh")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("#include"):
                match = re.match(r'#include\s+"([^"]+)"', stripped)
                assert match, f"{path.name}:{lineno}: only quoted includes allowed: {line!r}"
                assert (SOURCE_DIR / match.group(1)).is_file(), \
                    f"{path.name}:{lineno}: includes a file not in rawkernels/: {line!r}"
        assert "RAWKERNELS_INSTANTIATE" in path.read_text() or path.suffix == ".cuh", \
            f"{path.name}: lacks the #ifdef RAWKERNELS_INSTANTIATE instantiations"


def test_one_module_per_file_and_dtype_holds_every_kernel():
    """The loader's module of (file, dtype) names every kernel of the file: one NVRTC compile
    per (file, dtype), not per kernel."""
    for cu_file, names in kernels.KERNELS.items():
        for dtype in DTYPES:
            code, options, exprs = kernels.module_spec(cu_file, dtype)
            assert exprs == [kernels.name_expression(n, dtype) for n in names]
            assert options == kernels.compile_options()
            assert code.startswith(kernels.read_source(cu_file))
    with pytest.raises(KeyError, match="not listed"):
        kernels.get_kernel("ffi.cu", "no_such_kernel", "float32")
