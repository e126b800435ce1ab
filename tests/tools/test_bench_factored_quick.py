"""tools/bench_factored.py on its hidden --tiny grid (B=8, d=16, D=2000 and 4000), CPU, both
losses.

Not a performance test. Checks the fields and the theory column (D / 4d), that both layers'
first step passed the check against the float64 dense reference, and their losses against the
loss computed here. The golden float64 first-step losses are pinned, and a planted bug in the
factored update fails the check.
"""
import math

import numpy
import pytest

from toolrun import assert_checked, assert_golden, load_tool, run_tool

REQUIRED = ("D", "d", "B", "device", "naive_ms", "factored_ms", "speedup", "theory", "check",
            "check_error", "naive_loss", "factored_loss", "reference_loss", "naive_peak_bytes",
            "factored_resident_bytes")
# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
# float64 first-step losses, seed 0
GOLDEN = {"squared D=2000": 39.16011323940242, "squared D=4000": 77.69867869465624,
          "spherical D=2000": 7.6674268992669745, "spherical D=4000": 9.375660902268812}


def dense_loss(loss, W, h, t, eps=1e-3):
    """The naive layer's mean loss, float64, written out here."""
    O = numpy.asarray(h, numpy.float64) @ numpy.asarray(W, numpy.float64).T
    oc = O[numpy.arange(len(t)), t]
    q = (O * O).sum(axis=1)
    if loss == "squared":
        Y = numpy.zeros_like(O)
        Y[numpy.arange(len(t)), t] = 1.0
        return float(((O - Y) ** 2).sum(axis=1).mean())
    return float(numpy.mean(-numpy.log(oc * oc + eps) + numpy.log(q + O.shape[1] * eps)))


def _losses(bench, loss):
    out = {}
    for B, D, d in [(8, 2000, 16), (8, 4000, 16)]:
        h, t = bench.make_data(B, D, d, 0)
        out[f"{loss} D={D}"] = dense_loss(loss, bench.initial_W(D, d, 0), h, t)
    return out


@pytest.mark.parametrize("loss", ["squared", "spherical"])
def test_bench_factored_tiny(tmp_path, capsys, loss):
    bench = load_tool("bench_factored")
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--loss", loss, "--memory",
                                     "inproc"], tmp_path, capsys)
    assert [(r["D"], r["d"], r["B"]) for r in rows] == [(2000, 16, 8), (4000, 16, 8)]
    reference = _losses(bench, loss)
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert r["device"] == "cpu" and r["loss"] == loss and r["check"] == "ok"
        assert_checked(r, "naive_")
        assert_checked(r, "factored_")
        assert r["check_error"] == max(r["naive_check_error"], r["factored_check_error"])
        ref = reference[f"{loss} D={r['D']}"]
        assert math.isclose(r["reference_loss"], ref, rel_tol=1e-12)
        for side in ("naive", "factored"):
            assert math.isclose(r[f"{side}_loss"], ref, rel_tol=1e-5), (side, r[f"{side}_loss"], ref)
        assert r["naive_ms"] > 0 and r["factored_ms"] > 0
        assert math.isclose(r["speedup"], r["naive_ms"] / r["factored_ms"], rel_tol=1e-9)
        assert math.isclose(r["theory"], r["D"] / (4 * r["d"]))
        assert r["naive_resident_bytes"] >= r["D"] * r["d"] * 4             # W
        assert r["monitor_ms"] > 0 and r["check_every"] >= 1
    assert "theory D/4d" in printed and printed.strip().splitlines()[-1].split()[0] == "4000"


def test_bench_factored_golden():
    bench = load_tool("bench_factored")
    assert_golden("GOLDEN", {**_losses(bench, "squared"), **_losses(bench, "spherical")}, GOLDEN)


def test_bench_factored_refuses_to_time_a_wrong_update(tmp_path, capsys, monkeypatch):
    """The factored layer's exact update with a planted bug (its learning rate 2% off) fails
    the W_update check; it is not timed, and the exit status is 1."""
    bench = load_tool("bench_factored")
    from engine.outputs.factored import FactoredOutput
    apply_update = FactoredOutput.apply_update
    monkeypatch.setattr(FactoredOutput, "apply_update", lambda self, lr: apply_update(self, lr * 1.02))
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--memory", "inproc"], tmp_path,
                             capsys, status=1)
    for r in rows:
        assert r["factored_check"] == "failed" and r["check"] == "failed"
        assert r["factored_check_errors"]["W_update"] > 1e-3 and r["factored_check_errors"]["loss"] < 1e-6
        assert r["factored_ms"] is None and r["speedup"] is None
        assert_checked(r, "naive_")
    assert "CORRECTNESS FAILURE" in printed
