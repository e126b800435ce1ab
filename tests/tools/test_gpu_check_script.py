"""tools/gpu_check.sh on a machine without a GPU: exit status 0 in under a minute, every GPU
stage reported as skipped with the reason, the log and summary.json under $OUT, and bad usage
refused with exit status 2.

The GPU is hidden from CUDA (CUDA_VISIBLE_DEVICES="") so that the script takes its CPU-only
path on any machine; its GPU path is what it runs on a lent GPU (README, "First GPU run").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gpu_check.sh"
GPU_STAGES = ("install", "kernels", "tests", "offsets", "syncs", "bench")


def run(tmp_path, *args, **env):
    full = {k: v for k, v in os.environ.items() if k != "OUT"}
    full.update(CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable, **env)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    return proc, time.monotonic() - t0


def test_cpu_only_run_skips_every_gpu_stage(tmp_path):
    out = tmp_path / "out"
    proc, seconds = run(tmp_path, OUT=str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seconds < 60, seconds
    log = (out / "gpu_check.log").read_text()
    assert log == proc.stdout                                     # everything printed is logged
    for stage in GPU_STAGES:
        assert f"=== SKIPPED {stage}: no GPU (" in log, stage
    assert "every GPU stage was skipped: no GPU (" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gpu"].startswith("none: ")
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {"environment": "ok", "detect": "ok",
                      **{stage: "skipped" for stage in GPU_STAGES}}
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "summary.json"]


@pytest.mark.parametrize("args,env,message", [((), {}, "set OUT"),
                                              (("--fast",), {"OUT": "x"}, "usage")])
def test_bad_usage_exits_2(tmp_path, args, env, message):
    proc, _ = run(tmp_path, *args, **env)
    assert proc.returncode == 2 and message in proc.stderr
