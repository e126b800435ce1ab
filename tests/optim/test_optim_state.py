"""state_dict / load_state_dict / config: a resumed run is bit-identical to an uninterrupted one."""
import json

import numpy
import pytest

from engine.backend import Backend
from engine.row_sparse import RowSparseGrad
from engine.optim import SGD, Adam, make_optimizer, optimizer_from_config


def _grads(step, dtype):
    """Deterministic grads of step `step`: a dense W, a bias, a row-sparse embedding, and a
    param that only gets gradients from step 7 on (its state is created after the resume)."""
    rng = numpy.random.default_rng(100 + step)
    rows = rng.integers(0, 30, size=6)
    return [("W", rng.standard_normal((8, 5)).astype(dtype)),
            ("b", rng.standard_normal(5).astype(dtype)),
            ("E", RowSparseGrad(rows, rng.standard_normal((6, 5)).astype(dtype), (30, 5))),
            ("late", rng.standard_normal(3).astype(dtype) if step >= 7 else None)]


def _params(dtype):
    rng = numpy.random.default_rng(7)
    return {"W": rng.standard_normal((8, 5)).astype(dtype),
            "b": rng.standard_normal(5).astype(dtype),
            "E": rng.standard_normal((30, 5)).astype(dtype),
            "late": rng.standard_normal(3).astype(dtype)}


def _run(opt, params, steps, dtype):
    lrs = []
    for step in steps:
        items = [(key, params[key], grad) for key, grad in _grads(step, dtype)]
        lrs.append(opt.step(items, epoch=step // 3))
        if step % 3 == 2:
            opt.observe([5.0, 4.0, 4.5, 4.6][step // 3])
    return lrs


CASES = [
    lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_norm=2.0,
                schedule="plateau:0.5"),
    lambda: SGD(lr=0.1, schedule="step:2:0.5"),
    lambda: Adam(lr=1e-2, weight_decay=0.01, clip_norm=1.0, schedule="warmup:3+plateau:0.5"),
    lambda: Adam(lr=1e-2, sparse_mode="dense", schedule="cosine:10:0.001:2"),
]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_resume_is_bit_identical(case, dtype):
    backend = Backend()
    straight = CASES[case]().bind(backend)
    p_straight = _params(dtype)
    lrs_straight = _run(straight, p_straight, range(10), dtype)

    first = CASES[case]().bind(backend)
    p_resumed = _params(dtype)
    lrs = _run(first, p_resumed, range(5), dtype)
    state = first.state_dict()
    cfg = json.loads(json.dumps(first.config()))  # the config must be JSON-able
    for value in state.values():
        assert isinstance(value, (numpy.ndarray, int, float, str))
    _run(first, _params(dtype), range(5, 7), dtype)  # keep using the old one: state must not alias

    resumed = optimizer_from_config(cfg).bind(backend)
    resumed.load_state_dict(state)
    assert resumed.step_count == 5
    lrs += _run(resumed, p_resumed, range(5, 10), dtype)

    assert lrs == lrs_straight
    assert resumed.step_count == straight.step_count == 10
    for key in p_straight:
        numpy.testing.assert_array_equal(p_resumed[key], p_straight[key])
    s1, s2 = resumed.state_dict(), straight.state_dict()
    assert s1.keys() == s2.keys()
    for key in s1:
        numpy.testing.assert_array_equal(s1[key], s2[key])


def test_load_before_bind_and_dtype_kept():
    backend = Backend()
    opt = Adam(lr=0.1).bind(backend)
    p = numpy.ones((3, 2), numpy.float32)
    opt.step([("w", p, numpy.ones((3, 2), numpy.float32))])
    state = opt.state_dict()
    fresh = Adam(lr=0.1)
    fresh.load_state_dict(state)
    fresh.bind(backend)
    assert fresh.state["m"]["w"].dtype == numpy.float32
    assert fresh.state["m"]["w"] is not state["m/w"]
    numpy.testing.assert_array_equal(fresh.state["v"]["w"], state["v/w"])


def test_state_errors():
    sgd_state = SGD(lr=0.1, momentum=0.5).bind(Backend()).state_dict()
    with pytest.raises(ValueError, match="sgd"):
        Adam().bind(Backend()).load_state_dict(sgd_state)
    bad = dict(Adam().bind(Backend()).state_dict(), **{"bogus/x": numpy.zeros(1)})
    with pytest.raises(KeyError, match="bogus"):
        Adam().bind(Backend()).load_state_dict(bad)
    opt = Adam().bind(Backend())
    opt.load_state_dict({"type": "adam", "step_count": 1, "m/w": numpy.zeros(2),
                         "v/w": numpy.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step([("w", numpy.zeros(3), numpy.zeros(3))])


def test_make_optimizer_and_config():
    opt = make_optimizer("SGD", lr=0.5, momentum=0.9, schedule="step:2:0.5")
    assert isinstance(opt, SGD) and opt.momentum == 0.9
    cfg = opt.config()
    assert cfg["name"] == "sgd" and cfg["schedule"] == {"name": "step", "every_epochs": 2,
                                                         "factor": 0.5}
    assert optimizer_from_config(cfg).config() == cfg
    adam = make_optimizer("adam", beta2=0.98)
    assert optimizer_from_config(adam.config()).config() == adam.config()
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs")
