"""Every CUDA source in rawkernels/ compiles, with no GPU needed.

How: each `.cu` file ends with explicit instantiations of its kernels for float and double,
guarded by `#ifdef RAWKERNELS_INSTANTIATE`. With nvcc (found on PATH, under $CUDA_HOME or
$CUDA_PATH, or in /usr/local/cuda/bin) the test runs

    nvcc --ptx -arch=sm_80 -std=c++14 -I rawkernels -DRAWKERNELS_INSTANTIATE <file>.cu

Without nvcc it falls back to NVRTC through CuPy's thin NVRTC binding (what the runtime loader
uses; NVRTC needs no device), compiling with the loader's own options and the name expressions
`name<float>`/`name<double>` instead of the macro. Either way, every kernel that
`engine.backend.kernels.KERNELS` lists for the file must appear as a PTX entry for float and for
double (Itanium mangling `_Z<len><name>IfE...` / `...IdE...`). When neither compiler exists the
test fails (it never skips): CI must install the CUDA toolkit or CuPy.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.backend import kernels

SOURCE_DIR = kernels.source_dir()
CU_FILES = sorted(p.name for p in SOURCE_DIR.glob("*.cu"))
ARCH = "80"

INSTALL_HINT = (
    "no CUDA compiler found to check rawkernels/*.cu: install the CUDA toolkit so that `nvcc` "
    "is on PATH (or set CUDA_HOME to its root; e.g. `apt-get install cuda-nvcc-12-x` from "
    "NVIDIA's repository), or install CuPy with NVRTC (`pip install cupy-cuda12x`, or "
    "`pip install -e .[gpu]`)"
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
    """CuPy's NVRTC binding module, or None."""
    for modname in ("cupy_backends.cuda.libs.nvrtc", "cupy.cuda.nvrtc"):
        try:
            module = __import__(modname, fromlist=["compileProgram"])
            module.getVersion()
            return module
        except Exception:
            continue
    return None


def compile_nvcc(nvcc: str, cu_file: str, out_dir: Path) -> str:
    ptx_path = out_dir / (cu_file + ".ptx")
    cmd = [nvcc, "--ptx", f"-arch=sm_{ARCH}", "-std=c++14", "-I", str(SOURCE_DIR),
           "-DRAWKERNELS_INSTANTIATE", str(SOURCE_DIR / cu_file), "-o", str(ptx_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"nvcc failed on rawkernels/{cu_file}:\n{' '.join(cmd)}\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    return ptx_path.read_text()


def compile_nvrtc(nvrtc, cu_file: str) -> str:
    exprs = [kernels.name_expression(name, dt) for name in kernels.KERNELS.get(cu_file, ())
             for dt in ("float32", "float64")]
    options = tuple(kernels.compile_options()) + (f"-arch=compute_{ARCH}",)
    prog = nvrtc.createProgram(kernels.module_code(cu_file), cu_file, (), ())
    try:
        for expr in exprs:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, options)
        except Exception as exc:
            pytest.fail(f"NVRTC failed on rawkernels/{cu_file} with {options}: {exc}\n"
                        f"{nvrtc.getProgramLog(prog)}", pytrace=False)
        ptx = nvrtc.getPTX(prog)
        lowered = [nvrtc.getLoweredName(prog, expr) for expr in exprs]
    finally:
        nvrtc.destroyProgram(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    return ptx + "\n" + "\n".join(f"// lowered .entry {name}" for name in lowered)


@pytest.fixture(scope="module")
def compiler():
    nvcc = find_nvcc()
    if nvcc:
        return "nvcc", nvcc
    nvrtc = find_nvrtc()
    if nvrtc is not None:
        return "nvrtc", nvrtc
    pytest.fail(INSTALL_HINT, pytrace=False)


def test_there_are_kernel_sources():
    assert CU_FILES, f"no .cu files in {SOURCE_DIR}"
    assert (SOURCE_DIR / "common.cuh").is_file()
    assert set(kernels.KERNELS) <= set(CU_FILES), "KERNELS names a file that does not exist"


@pytest.mark.parametrize("cu_file", CU_FILES)
def test_cu_file_compiles_for_float_and_double(cu_file, compiler, tmp_path):
    kind, tool = compiler
    if kind == "nvcc":
        ptx = compile_nvcc(tool, cu_file, tmp_path)
    else:
        ptx = compile_nvrtc(tool, cu_file)
    entries = re.findall(r"\.entry\s+([A-Za-z0-9_]+)", ptx)
    assert entries, f"{kind}: no kernel entries in the PTX of rawkernels/{cu_file}"
    for name in kernels.KERNELS.get(cu_file, ()):
        for code, ctype in (("f", "float"), ("d", "double")):
            mangled = f"_Z{len(name)}{name}I{code}E"
            assert any(e.startswith(mangled) for e in entries), (
                f"{kind}: kernel {name}<{ctype}> missing from rawkernels/{cu_file}; "
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
