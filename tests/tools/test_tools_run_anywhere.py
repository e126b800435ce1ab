"""Every script of tools/ runs as `python tools/X.py` from any folder, without PYTHONPATH, and
imports the engine of its own checkout (not another copy installed in the environment).

One fresh interpreter, started in an empty folder with PYTHONPATH removed, loads each script as
`python tools/X.py` would: tools/ first on sys.path, no engine module loaded yet. It records
which engine the script's imports put first and what `main(["--help"])` exits with. A real
`python tools/bench_softmax.py --tiny` run from another folder then shows the whole path works.
"""
import json
import os
import subprocess
import sys

from toolrun import ROOT, TOOLS

PROBE = r'''
import contextlib, io, json, os, runpy, sys
root, tools = sys.argv[1], sys.argv[2]
base = [p for p in sys.path if os.path.abspath(p or ".") not in (root, tools)]
ours = ("engine", "_path", "_references")
out = {}
for name in sorted(os.listdir(tools)):
    if not name.endswith(".py") or name.startswith("_"):
        continue
    for mod in [m for m in sys.modules if m.split(".")[0] in ours or m.startswith("_bench")]:
        del sys.modules[mod]
    sys.path[:] = [tools] + base                 # what `python tools/X.py` starts with
    ns = runpy.run_path(os.path.join(tools, name), run_name="tools_probe")
    import engine
    help_text = io.StringIO()
    try:
        with contextlib.redirect_stdout(help_text):
            ns["main"](["--help"])
        code = "returned"
    except SystemExit as exc:
        code = exc.code
    out[name] = {"engine": os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__))),
                 "help_exit": code, "usage": help_text.getvalue().startswith("usage:")}
print(json.dumps(out))
'''


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_every_tool_imports_its_own_checkout(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, ROOT, TOOLS], cwd=tmp_path, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    scripts = sorted(n for n in os.listdir(TOOLS) if n.endswith(".py") and not n.startswith("_"))
    assert sorted(found) == scripts and len(scripts) >= 11
    for name, got in found.items():
        assert got == {"engine": ROOT, "help_exit": 0, "usage": True}, (name, got)


def test_bench_runs_from_another_folder(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "bench_softmax.py"), "--device", "cpu",
                           "--tiny", "--no-torch", "--memory", "inproc", "--json", str(out)],
                          cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [r["check"] for r in json.loads(out.read_text())] == ["ok"] * 3
