"""NumPy vs CuPy on whole training steps: same seed, same batches -> the same model after N steps.

Parameters are drawn on the host and dropout masks are counter-based, so the two backends start
identical and draw identical masks; only the order of floating-point sums differs. Skipped with
the reason when there is no GPU.
"""
import numpy
import pytest

from devices import make_backend, to_host
from engine import Adam, Engine, MLPLanguageModel, SGD

CASES = [
    ("softmax", {}, "adam"),
    ("softmax", {"chunk_size": 37}, "sgd"),
    ("softmax", {"chunk_size": 64, "update": "fused-sgd"}, "sgd"),
    ("squared", {}, "adam"),
]
TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=2e-3, atol=2e-5)}


def run(device, output, kw, opt, dtype, steps=6):
    rng = numpy.random.default_rng(0)
    x = rng.integers(0, 150, (steps * 32, 3)).astype(numpy.int32)
    x[:32, 0] = 7                                        # a row id repeated many times in a batch
    y = ((x[:, 0] * 7 + x[:, 2]) % 150).astype(numpy.int32)
    model = MLPLanguageModel(150, context=3, embed_dim=12, hidden=(40, 24), dropout=0.2,
                             output=output, output_kwargs=kw)
    optimizer = Adam(lr=1e-2, clip_norm=1.0) if opt == "adam" else SGD(lr=0.1, momentum=0.9)
    if kw.get("update") == "fused-sgd":
        optimizer = SGD(lr=0.1)
    engine = Engine(model, optimizer, device=device, seed=3, dtype=dtype, verbose=False)
    losses = []
    for i in range(steps):
        xb = engine.backend.asarray(x[i * 32:(i + 1) * 32])
        yb = engine.backend.asarray(y[i * 32:(i + 1) * 32])
        losses.append(float(engine.train_step(xb, yb)))
    return losses, {k: to_host(v) for k, v in model.state_dict().items()}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("output,kw,opt", CASES)
def test_training_steps_match_between_numpy_and_cupy(output, kw, opt, dtype):
    make_backend("cupy")                                 # skips with the reason when no GPU
    cpu_losses, cpu_state = run("cpu", output, kw, opt, dtype)
    gpu_losses, gpu_state = run("gpu", output, kw, opt, dtype)
    numpy.testing.assert_allclose(gpu_losses, cpu_losses, **TOL[dtype])
    for key in cpu_state:
        numpy.testing.assert_allclose(gpu_state[key], cpu_state[key], err_msg=key, **TOL[dtype])


@pytest.mark.gpu
def test_gpu_engine_train_and_evaluate_match_cpu(tmp_path):
    make_backend("cupy")
    rng = numpy.random.default_rng(1)
    x = rng.integers(0, 60, (400, 2)).astype(numpy.int32)
    y = ((x[:, 0] + x[:, 1]) % 60).astype(numpy.int32)
    results = []
    for device in ("cpu", "gpu"):
        engine = Engine(MLPLanguageModel(60, context=2, embed_dim=8, hidden=(32,), output="softmax",
                                         output_kwargs={"chunk_size": 16}),
                        Adam(lr=1e-2), device=device, seed=0, dtype="float64", verbose=False)
        hist = engine.train((x, y), epochs=2, batch_size=50, valid=(x, y), progress=False,
                            run_dir=str(tmp_path / device))
        results.append((hist[-1]["train_loss"], hist[-1]["valid_perplexity"]))
    numpy.testing.assert_allclose(results[1], results[0], rtol=1e-9)
