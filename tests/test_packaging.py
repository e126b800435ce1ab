"""What `pip install .` installs is what the installed package imports: every third-party
module imported anywhere in the shipped packages (engine, rawkernels, engine_data) is in
setup.cfg's install_requires, or, when it is optional (imported only where the feature is
used, with a clear error or a fallback without it), in one of its extras. The CI step
.ci/smoke_no_extras.sh checks the same at run time in a fresh virtual environment."""
import ast
import configparser
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"engine": "engine", "rawkernels": "rawkernels", "engine_data": "data"}

#: import name -> distribution name, where they differ
DISTRIBUTION = {"cupy": "cupy-cuda12x", "cupyx": "cupy-cuda12x"}

#: optional imports -> the extra that installs them
OPTIONAL = {"cupy": "gpu", "cupyx": "gpu", "mpi4py": "distributed"}


def _requirement_names(lines):
    names = set()
    for line in lines:
        line = line.split(";")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[ ]", line, 1)[0].lower().replace("_", "-"))
    return names


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    required = _requirement_names(cfg["options"]["install_requires"].splitlines())
    extras = {name: _requirement_names(value.splitlines())
              for name, value in cfg["options.extras_require"].items()}
    return required, extras


def _third_party_imports():
    """{top-level module: [file, ...]} of the absolute imports in the shipped packages."""
    stdlib = set(getattr(sys, "stdlib_module_names", ())) or pytest.skip("Python < 3.10")
    found = {}
    for folder in PACKAGES.values():
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(base, name)
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        modules = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        modules = [node.module]
                    else:
                        continue
                    for module in modules:
                        top = module.split(".")[0]
                        if top not in stdlib and top not in PACKAGES and top != "__future__":
                            found.setdefault(top, []).append(os.path.relpath(path, ROOT))
    return found


def test_every_runtime_import_is_installed_by_pip_install_dot():
    required, extras = _setup_cfg()
    imports = _third_party_imports()
    assert {"numpy", "h5py", "numba", "scipy"} <= set(imports)     # the scan sees them
    missing = {}
    for module, files in imports.items():
        dist = DISTRIBUTION.get(module, module).lower()
        if module in OPTIONAL:
            assert dist in extras[OPTIONAL[module]], (module, OPTIONAL[module])
        elif dist not in required:
            missing[module] = sorted(set(files))[:3]
    assert not missing, f"imported but not in install_requires: {missing}"


def test_the_test_extra_does_not_hide_a_runtime_dependency():
    required, extras = _setup_cfg()
    imports = set(_third_party_imports())
    hidden = sorted((extras.get("test", set()) & imports) - required)
    assert not hidden, f"runtime imports installed only by the [test] extra: {hidden}"
