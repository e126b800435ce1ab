"""`import engine` and get_backend("auto"/"cpu") work on a machine without CuPy or CUDA.

Run in a fresh interpreter where importing CuPy is made to fail, so the check holds even on a
GPU machine (and cannot be fooled by a CuPy already imported by another test).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_engine_and_auto_backend_without_cupy():
    code = textwrap.dedent("""
        import sys
        class _NoCupy:
            def find_spec(self, name, path=None, target=None):
                if name == "cupy" or name.startswith(("cupy.", "cupy_backends")):
                    raise ImportError("cupy blocked for this test")
                return None
        sys.meta_path.insert(0, _NoCupy())
        import engine, engine.backend
        from engine.backend import kernels, get_backend, gpu_available
        import engine.backend.cupy_backend  # importing the module must not import cupy
        ok, reason = gpu_available()
        assert not ok and "CuPy" in reason, reason
        b = get_backend("auto")
        assert b.name == "numpy" and b.device == "cpu", b
        assert get_backend("cpu").name == "numpy"
        try:
            get_backend("gpu")
        except RuntimeError as exc:
            assert "no GPU" in str(exc)
        else:
            raise AssertionError("get_backend('gpu') should fail without CuPy")
        assert "cupy" not in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
