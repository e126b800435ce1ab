"""tools/bench_adaptive.py on its tiny shape (D=500, d=32, B=64, CPU), and tools/repro_adaptive.py
on a tiny corpus.

Not performance tests. The bench: each method's first-step loss must equal the adaptive (or
exact) softmax loss computed here from the same initial weights and data (float64, to float32
accuracy), the harness's check must have passed, and the hand-cutoff loss is golden. The repro
runs in float64, and its test perplexities after 3 steps are golden. The auto-cutoff run must
equal a hand run with the cutoffs it chose.
"""
import math
import sys

import numpy
import pytest

from toolrun import (adaptive_xent, assert_checked, assert_golden, load_tool, run_tool,
                     softmax_xent, torch_importable)

REQUIRED = ("shape", "vocab", "d", "rows", "device", "method", "ms", "cutoffs", "loss", "check",
            "check_error", "peak_bytes", "resident_bytes")
# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
GOLDEN_BENCH = {"ours-adaptive": 5.518261543854442, "ours-full": 6.455687913410668}
GOLDEN_REPRO = {
    "softmax": 6.801518521654229,
    "adaptive": 6.885854357206175,
}


def _reference_losses(bench, cutoffs_of):
    """{method: float64 first-step loss} computed here for the tiny shape and each method's
    cutoffs, from the engine's initial weights (seed 0)."""
    from engine.outputs import AdaptiveSoftmaxOutput, SoftmaxOutput
    shape = bench.SHAPES["tiny"]
    h, t = bench.make_data(shape, 0)
    out = {}
    for method, cutoffs in cutoffs_of.items():
        if method == "ours-full":
            P = SoftmaxOutput(32, 500).init_params(numpy.random.default_rng(0))
            out[method] = softmax_xent(P["W"].astype(numpy.float32), None, h, t)
            continue
        layer = AdaptiveSoftmaxOutput(32, 500, cutoffs=cutoffs, head_bias=True)
        P = {k: v.astype(numpy.float32) for k, v in layer.init_params(numpy.random.default_rng(0)).items()}
        out[method] = adaptive_xent(P, cutoffs, 500, h, t)
    return out


@pytest.mark.parametrize("use_torch", [True, False], ids=["with-torch-if-importable", "torch-missing"])
def test_bench_adaptive_tiny(tmp_path, capsys, monkeypatch, use_torch):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    bench = load_tool("bench_adaptive")
    if not use_torch:
        monkeypatch.setitem(sys.modules, "torch", None)
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--memory", "inproc"], tmp_path,
                             capsys)
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == list(bench.METHODS)
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert (r["shape"], r["vocab"], r["d"], r["rows"], r["device"]) == ("tiny", 500, 32, 64, "cpu")
    with_torch = use_torch and torch_importable()
    ran = [m for m in bench.METHODS if m != "torch-adaptive" or with_torch]
    if not with_torch:
        t = by["torch-adaptive"]
        assert t["ms"] is None and t["skipped"] and t["check"] == "skipped"
        assert "NOTE: no PyTorch rows" in printed
    assert by["ours-adaptive"]["cutoffs"] == [50, 200]
    auto = by["ours-adaptive-auto"]
    assert auto["predicted_ms"] > 0 and all(0 < c < 500 for c in auto["cutoffs"])
    cutoffs = {m: by[m]["cutoffs"] for m in ran}
    reference = _reference_losses(bench, cutoffs)
    for m in ran:
        r = by[m]
        assert_checked(r)
        assert r["ms"] > 0 and r["timed_with"] == ran
        assert math.isclose(r["loss"], reference[m], rel_tol=1e-5), (m, r["loss"], reference[m])
    expected_keys = {"loss", "dh", "head_W_update", "head_b_update", "proj0_W_update",
                     "out0_W_update", "proj1_W_update", "out1_W_update"}
    assert set(by["ours-adaptive"]["check_errors"]) == expected_keys
    if with_torch:
        assert set(by["torch-adaptive"]["check_errors"]) == expected_keys
        assert by["torch-adaptive"]["cutoffs"] == [50, 200]
    assert set(by["ours-full"]["check_errors"]) == {"loss", "dh", "W_update", "b_update"}
    last = printed.strip().splitlines()[-1]
    assert "ours-full" in last and last.split()[-1] == "ok"       # the table is printed last


def test_bench_adaptive_golden():
    """Float64 first-step losses of the tiny shape (hand cutoffs, and the exact softmax)."""
    bench = load_tool("bench_adaptive")
    ref = _reference_losses(bench, {"ours-adaptive": [50, 200], "ours-full": None})
    assert_golden("GOLDEN_BENCH", ref, GOLDEN_BENCH)


def test_bench_adaptive_refuses_to_time_a_wrong_method(tmp_path, capsys, monkeypatch):
    """The engine's adaptive layer with a planted bug (the tail gradients scaled by 1.05) fails
    the check against the float64 reference: not timed, exit status 1."""
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    bench = load_tool("bench_adaptive")
    step = bench.OursRunner.step

    def wrong_step(self):
        if self.method == "ours-adaptive":
            backward = self.out.backward

            def scaled():
                dh = backward()
                for name, g in self.out.grads.items():
                    if name.startswith("out") and g is not None:
                        g *= 1.05
                return dh
            self.out.backward = scaled
        step(self)

    monkeypatch.setattr(bench.OursRunner, "step", wrong_step)
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--memory", "inproc",
                                     "--methods", "ours-adaptive", "ours-full"], tmp_path, capsys,
                             status=1)
    by = {r["method"]: r for r in rows}
    bad = by["ours-adaptive"]
    assert bad["check"] == "failed" and bad["ms"] is None
    assert max(bad["check_errors"][k] for k in ("out0_W_update", "out1_W_update")) > 1e-3
    assert bad["check_errors"]["loss"] < 1e-6                  # the forward was right
    assert_checked(by["ours-full"])
    assert "CORRECTNESS FAILURE" in printed


def _tiny_corpus(tmp_path):
    from engine.cli import main as cli_main
    text = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 30
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text(text)
    corpus = tmp_path / "c.h5"
    assert cli_main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                     "--test", str(tmp_path / "test.txt"), "--output", str(corpus)]) == 0
    return corpus


def test_repro_adaptive_tiny_corpus_golden(tmp_path, capsys, monkeypatch):
    """tools/repro_adaptive.py on a tiny corpus, 3 float64 steps per method: rows, the printed
    table, golden test perplexities, and auto cutoffs = a hand run with the same cutoffs."""
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    corpus = _tiny_corpus(tmp_path)
    repro = load_tool("repro_adaptive")
    argv = ["--data", str(corpus), "--device", "cpu", "--epochs", "1", "--max-steps-per-epoch", "3",
            "--batch-size", "64", "--dtype", "float64"]
    rows, printed = run_tool(repro, argv + ["--cutoffs", "4"], tmp_path, capsys)
    assert [r["method"] for r in rows] == ["softmax", "adaptive", "adaptive-auto"]
    assert rows[0]["cutoffs"] is None and rows[1]["cutoffs"] == [4]
    for r in rows:
        assert r["steps_per_epoch"] == 3 and r["epochs"] == 1 and r["seconds_per_epoch"] > 0
        assert 1.0 < r["test_perplexity"] < r["vocab"]
    assert "Paper (Grave et al. 2017" in printed and printed.strip().splitlines()[-1].startswith("c.h5")
    assert_golden("GOLDEN_REPRO", {r["method"]: r["test_perplexity"] for r in rows[:2]}, GOLDEN_REPRO)
    auto = rows[2]
    again, _ = run_tool(repro, argv + ["--methods", "adaptive", "--cutoffs",
                                       ",".join(map(str, auto["cutoffs"]))], tmp_path, capsys)
    assert again[0]["cutoffs"] == auto["cutoffs"]
    assert math.isclose(again[0]["test_perplexity"], auto["test_perplexity"], rel_tol=1e-12)


def test_reference_adaptive_step_matches_row_formula():
    """tools/_references.adaptive_sgd_step's loss equals the row-by-row formula here, and its
    updates are the finite-difference gradient of that formula (a few entries)."""
    refs = load_tool("_references")
    rng = numpy.random.default_rng(5)
    D, d, cut, B, lr = 30, 6, [5, 12], 9, 0.1
    P = {"head_W": rng.standard_normal((7, d)), "head_b": rng.standard_normal(7),
         "proj0_W": rng.standard_normal((3, d)), "out0_W": rng.standard_normal((7, 3)),
         "proj1_W": rng.standard_normal((2, d)), "out1_W": rng.standard_normal((18, 2))}
    h, t = rng.standard_normal((B, d)), numpy.array([0, 4, 5, 11, 12, 29, 3, 20, 7])
    out = refs.adaptive_sgd_step(numpy, P, cut, D, h, t, lr)
    assert math.isclose(out["loss"], adaptive_xent(P, cut, D, h, t), rel_tol=1e-13)
    for name, idx in (("head_W", (6, 2)), ("head_b", (5,)), ("proj0_W", (1, 4)),
                      ("out0_W", (2, 1)), ("proj1_W", (0, 0)), ("out1_W", (8, 1))):
        e = 1e-6
        Pp = {k: v.copy() for k, v in P.items()}
        Pm = {k: v.copy() for k, v in P.items()}
        Pp[name][idx] += e
        Pm[name][idx] -= e
        grad = (adaptive_xent(Pp, cut, D, h, t) - adaptive_xent(Pm, cut, D, h, t)) / (2 * e)
        assert math.isclose(out[f"{name}_update"][idx], -lr * grad, rel_tol=1e-6, abs_tol=1e-10), name
