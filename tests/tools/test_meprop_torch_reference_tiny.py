"""tools/meprop_torch_reference.py runs end to end on a tiny MNIST-shaped file (needs PyTorch).

PyTorch's float32 CPU kernels differ between builds, so no golden numbers: the rows and their
fields only."""
import numpy
import pytest

from engine.data.classification import write_classification
from toolrun import load_tool, run_tool


@pytest.mark.parametrize("mode", ["per-example", "unified"])
def test_tiny_run(tmp_path, capsys, mode):
    pytest.importorskip("torch", reason="PyTorch not installed: the reference needs it")
    rng = numpy.random.default_rng(0)
    splits = {s: (rng.random((n, 784)).astype(numpy.float32), rng.integers(0, 10, n))
              for s, n in (("train", 60), ("test", 20))}
    path = tmp_path / "tiny.h5"
    write_classification(path, splits, 10)
    rows, printed = run_tool(load_tool("meprop_torch_reference"), [
        "--data", str(path), "--k", "5", "--mode", mode, "--batch-size", "20", "--epochs", "2"],
        tmp_path, capsys)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["k"] == 5 and r["mode"] == mode and r["batch"] == 20 for r in rows)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert printed.count("[torch-meprop]") == 2
