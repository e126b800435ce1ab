"""Auto cutoffs: the dynamic program equals brute force, the measured cost model is sane and
cached, and the choice follows the cost model (no tail when tails cannot pay off)."""
import json
import os

import numpy
import pytest

from engine.backend import Backend
from engine.outputs import AdaptiveSoftmaxOutput
from engine.outputs import adaptive_cutoffs as ac


class AffineModel:
    """The paper's g: flat below k0 then affine in (rows x outputs), per-block overhead c."""

    def __init__(self, d=64, c=1e-5, lam=1e-9, k0=50, div=4.0):
        self.d, self.c, self.lam, self.k0, self.div = d, c, lam, k0, div

    def _g(self, m, n, k):
        m, k = numpy.asarray(m, float), numpy.asarray(k, float)
        work = numpy.maximum(m * k, self.k0) * (n + 8)      # + 8: the softmax's elementwise work
        return numpy.where(m > 0, self.c * numpy.minimum(m, 1) + self.lam * work, 0.0)

    def head(self, k):
        return self._g(256, self.d, k)

    def tail(self, i, m, k):
        return self._g(m, self.d / self.div ** (i + 1), k)

    def proj(self, i, m):
        return self._g(m, self.d, self.d / self.div ** (i + 1))


def zipf(D, s=1.0):
    p = 1.0 / numpy.arange(1, D + 1) ** s
    return p / p.sum()


@pytest.mark.parametrize("min_head", [1, 200])
@pytest.mark.parametrize("J", [1, 2, 3])
def test_dp_equals_brute_force(J, min_head):
    probs = zipf(3000)
    model = AffineModel()
    cands = ac.candidate_positions(3000, n=18)
    c_dp, cut_dp = ac.dp_cutoffs(probs, model, 256, J, cands, min_head)
    c_bf, cut_bf = ac.brute_force_cutoffs(probs, model, 256, J, cands, min_head)
    assert cut_dp[0] >= min_head
    assert abs(c_dp - c_bf) <= 1e-12 * c_bf
    assert cut_dp == cut_bf
    assert abs(ac.expected_cost(cut_dp, probs, model, 256) - c_dp) <= 1e-12 * c_dp


def test_choice_follows_the_cost_model():
    probs_counts = (zipf(20000) * 1e7).round()
    cheap_tails = ac.choose_cutoffs(probs_counts, 64, model=AffineModel(c=1e-6), max_clusters=3,
                                    verbose=False)
    assert 1 <= len(cheap_tails["cutoffs"]) <= 3
    assert cheap_tails["predicted_ms"] < 0.5 * cheap_tails["full_ms"]
    # a huge fixed cost per block: no tail pays for itself -> the exact softmax (J = 0)
    costly = ac.choose_cutoffs(probs_counts, 64, model=AffineModel(c=10.0), max_clusters=3,
                               verbose=False)
    assert costly["cutoffs"] == [] and costly["predicted_ms"] == costly["full_ms"]


def test_bad_counts_raise():
    with pytest.raises(ValueError, match="frequency-sorted"):
        ac.choose_cutoffs(numpy.arange(10.0), 8, model=AffineModel(), verbose=False)
    with pytest.raises(ValueError, match="counts"):
        ac.choose_cutoffs(numpy.array([1.0, numpy.nan]), 8, model=AffineModel(), verbose=False)


def test_measured_cost_model_is_cached_and_monotone(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(ac, "_MEMORY_CACHE", {})
    be = Backend()
    table = ac.measure_cost_model(be, "float32", batch=64, d=32, max_clusters=2, vocab=2000)
    files = os.listdir(tmp_path / "adaptive_cost")
    assert len(files) == 1 and json.loads((tmp_path / "adaptive_cost" / files[0]).read_text())["key"] == table["key"]
    monkeypatch.setattr(ac, "_MEMORY_CACHE", {})
    monkeypatch.setattr(ac, "_softmax_block_time", lambda *a: pytest.fail("re-measured"))
    again = ac.measure_cost_model(be, "float32", batch=64, d=32, max_clusters=2, vocab=2000)
    assert again["head"] == table["head"]
    model = ac.CostModel(table)
    assert model.head(20000) > model.head(1024)                    # extrapolated beyond the grid
    assert model.tail(0, 64, 1024) >= model.tail(0, 0.5, 1024) > 0  # fewer rows, less time
    assert model.proj(1, 0.0) == 0


def test_layer_auto_cutoffs_from_counts_and_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path))
    counts = (zipf(3000) * 1e6).round()
    out = AdaptiveSoftmaxOutput(32, 3000, cutoffs="auto", counts=counts, auto_batch=64)
    out.bind(Backend(), numpy.random.default_rng(0), "float32")
    assert isinstance(out.cutoffs, list) and out.config()["cutoffs"] == out.cutoffs
    assert "counts" not in out.config()
    assert "auto cutoffs" in capsys.readouterr().out
    assert out.auto_report["predicted_ms"] <= out.auto_report["full_ms"]


def test_coverage_head_and_floor():
    counts = numpy.array([50, 20, 10, 10, 5, 5], dtype=float)      # shares .5 .7 .8 .9 .95 1
    assert ac.coverage_head(counts, 0.0) == 1
    assert ac.coverage_head(counts, 0.5) == 1
    assert ac.coverage_head(counts, 0.8) == 3
    assert ac.coverage_head(counts, 1.0) == 6


def test_choose_cutoffs_respects_head_coverage():
    D = 5000
    counts = 1e6 / numpy.arange(1, D + 1)
    model = AffineModel()
    free = ac.choose_cutoffs(counts, 64, model=model, batch=256, verbose=False)
    floor = ac.coverage_head(counts, 0.8)
    kept = ac.choose_cutoffs(counts, 64, model=model, batch=256, head_coverage=0.8, verbose=False)
    assert kept["min_head"] == floor
    assert (kept["cutoffs"][0] if kept["cutoffs"] else D) >= floor
    assert kept["predicted_ms"] >= free["predicted_ms"] - 1e-12   # a constraint never helps speed


def test_cost_model_interpolation_is_exact_on_power_laws():
    # the cost model interpolates log-log between grid points, so a table sampled from a power
    # law gives the power law back in between; beyond the grids it is linear (k above, m above),
    # flat below the k grid and proportional below the first m
    from engine.outputs.adaptive_cutoffs import CostModel
    ks, ms = numpy.array([8.0, 64, 512, 4096]), numpy.array([1.0, 16, 256])
    head = lambda k: 1e-6 * k ** 0.8
    tail = lambda m, k: 2e-7 * m ** 0.6 * k ** 0.9
    proj = lambda m: 3e-7 * m ** 0.7
    cm = CostModel({"k_grid": ks.tolist(), "m_grid": ms.tolist(), "head": head(ks).tolist(),
                    "tails": [[tail(m, ks).tolist() for m in ms]], "proj": [proj(ms).tolist()]})
    k, m = numpy.array([20.0, 100, 3000]), numpy.array([3.0, 50, 200])
    numpy.testing.assert_allclose(cm.head(k), head(k), rtol=1e-12)
    numpy.testing.assert_allclose(cm.proj(0, m), proj(m), rtol=1e-12)
    numpy.testing.assert_allclose(cm.tail(0, m, k), tail(m, k), rtol=1e-12)
    numpy.testing.assert_allclose(cm.head([8192.0, 4.0]), [head(4096.0) * 2, head(8.0)], rtol=1e-12)
    numpy.testing.assert_allclose(cm.proj(0, [512.0, 0.5]), [proj(256.0) * 2, proj(1.0) * 0.5],
                                  rtol=1e-12)


def test_measured_search_beyond_four_clusters(tmp_path, monkeypatch):
    # the measured table must hold a tail for every cluster the search may use (here 5 > the
    # default 4)
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(ac, "_MEMORY_CACHE", {})
    counts = (zipf(3000) * 1e6).round()
    report = ac.choose_cutoffs(counts, 32, backend=Backend(), batch=64, max_clusters=5,
                               n_candidates=24, verbose=False)
    assert [J for J, _, _ in report["per_J"]] == list(range(6))
    assert len(report["cutoffs"]) <= 5
