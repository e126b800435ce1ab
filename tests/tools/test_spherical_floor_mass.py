"""tools/spherical_floor_mass.py on a tiny trained model: its perplexity (computed densely from the
exported W and bias) equals the engine's exact evaluation, the floor share follows D eps / (q + D eps),
and a model with another output is refused."""
from __future__ import annotations

import json

import pytest

from engine import Engine
from engine.cli import main as engine_main
from toolrun import load_tool
from toy_lm import LM, prepare_toy_corpus


@pytest.mark.parametrize("output", ["factored-spherical", "spherical-dense"])
def test_floor_mass_matches_the_engine(tmp_path, output):
    data = prepare_toy_corpus(tmp_path)
    run = tmp_path / "run"
    kw = ["--output-lr", "0.05", "--guard-action", "shrink"] if output.startswith("factored") else []
    assert engine_main(["train", "--data", data, *LM, "--output", output, "--bias", "--epochs", "2",
                        "--lr", "0.01", "--run-dir", str(run), *kw]) == 0
    tool = load_tool("spherical_floor_mass")
    out = tmp_path / "f.json"
    assert tool.main([str(run / "best.h5"), "--data", data, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    eng = Engine.from_checkpoint(str(run / "best.h5"), device="cpu", verbose=False)
    assert res["perplexity"] == pytest.approx(eng.evaluate(data, split="valid")["perplexity"],
                                              rel=1e-4)   # float32 model, float64 here
    D, eps = res["D"], res["eps"]
    low_q, _, high_q = res["q_quantiles"]
    high_share, _, low_share = res["floor_share_quantiles"][::-1]
    assert low_share == pytest.approx(D * eps / (high_q + D * eps), rel=1e-9)
    assert high_share == pytest.approx(D * eps / (low_q + D * eps), rel=1e-9)


def test_other_outputs_are_refused(tmp_path):
    data = prepare_toy_corpus(tmp_path)
    run = tmp_path / "run"
    assert engine_main(["train", "--data", data, *LM, "--epochs", "1", "--run-dir", str(run)]) == 0
    with pytest.raises(SystemExit, match="not a spherical softmax"):
        load_tool("spherical_floor_mass").main([str(run / "best.h5"), "--data", data])
