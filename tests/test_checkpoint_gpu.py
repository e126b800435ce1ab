"""A checkpoint written by a CPU engine, loaded onto a GPU engine (Engine.from_checkpoint with
the backend under test): the model and optimizer state arrive bit for bit, the training position
too, and training resumes as it does on the CPU; the GPU engine's own checkpoint loads back on
the CPU to the same state.

Models: a language model with the softmax output and Adam, one with the adaptive softmax and SGD
with momentum, one with the factored output (its own exact update), and a classifier with a
fixed fan-in multi-label output that rewires (its index buffer is state). One body per backend
(`backend` fixture: NumPy always, CuPy marked gpu and skipped without one).
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_array_equal

from backend_compare import REFERENCE, assert_close, host, model_state
from engine import SGD, Adam, Engine, MLPClassifier, MLPLanguageModel

V = 60


def lm_data(rng, n):
    x = rng.integers(0, V, (n, 3)).astype(numpy.int32)
    return x, ((x[:, 0] * 7 + x[:, 2]) % V).astype(numpy.int32)


def xmc_data(rng, n):
    y = numpy.stack([rng.choice(V, 3, replace=False) for _ in range(n)]).astype(numpy.int32)
    y[::5, 2] = -1
    return rng.standard_normal((n, 10)), y


CASES = {
    "softmax-adam": (lambda: MLPLanguageModel(V, context=3, embed_dim=8, hidden=(16,),
                                              dropout=0.2),
                     lambda: Adam(1e-2, clip_norm=1.0), lm_data),
    "adaptive-sgd": (lambda: MLPLanguageModel(V, context=3, embed_dim=8, hidden=(16,),
                                              output="adaptive",
                                              output_kwargs={"cutoffs": [10, 30]}),
                     lambda: SGD(0.1, momentum=0.9, weight_decay=1e-3), lm_data),
    "factored": (lambda: MLPLanguageModel(V, context=3, embed_dim=8, hidden=(16,),
                                          output="factored-spherical",
                                          output_kwargs={"lr": 0.02}),
                 lambda: Adam(1e-2), lm_data),
    "ffi-rewire": (lambda: MLPClassifier(10, V, hidden=(16,), output="squared-hinge",
                                         output_kwargs={"weights": "ffi", "fan_in": 4,
                                                        "rewire_every": 2}),
                   lambda: Adam(1e-2), xmc_data),
}


def steps(eng, batches):
    be = eng.backend
    return numpy.array([host(eng.train_step(be.asarray(x), be.asarray(y))) for x, y in batches])


def optimizer_state(eng):
    return {k: (host(v) if hasattr(v, "shape") else v)
            for k, v in eng.optimizer.state_dict().items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_checkpoint_resumes_on_the_backend(backend, tmp_path, case):
    make_model, make_opt, make_data = CASES[case]
    rng = numpy.random.default_rng(0)
    batches = [make_data(rng, 20) for _ in range(7)]
    cpu = Engine(make_model(), make_opt(), device=REFERENCE, seed=1, dtype="float64", verbose=False)
    steps(cpu, batches[:3])
    path = tmp_path / "ck.h5"
    cpu.save_checkpoint(path)

    dev = Engine.from_checkpoint(path, device=backend, verbose=False)
    assert dev.backend is backend and dev.step == cpu.step == 3
    assert dev.dtype == numpy.float64
    want, got = model_state(cpu.model), model_state(dev.model)
    assert set(got) == set(want)
    for key in want:
        assert_array_equal(got[key], want[key], err_msg=key)          # bit for bit
    opt_w, opt_g = optimizer_state(cpu), optimizer_state(dev)
    assert set(opt_g) == set(opt_w)
    for key in opt_w:
        assert_array_equal(numpy.asarray(opt_g[key]), numpy.asarray(opt_w[key]), err_msg=key)
    assert all(backend.is_array(p) for layer in dev.model.layers for p in layer.params.values())

    lw, lg = steps(cpu, batches[3:]), steps(dev, batches[3:])
    assert_close(lg, lw, numpy.float64, err_msg="losses after the resume")
    for key, value in model_state(cpu.model).items():
        assert_close(model_state(dev.model)[key], value, numpy.float64, err_msg=key)

    back_path = tmp_path / "dev.h5"                   # and the way back
    dev.save_checkpoint(back_path)
    back = Engine.from_checkpoint(back_path, device=REFERENCE, verbose=False)
    assert back.step == 7
    for key, value in model_state(dev.model).items():
        assert_array_equal(model_state(back.model)[key], value, err_msg=key)
