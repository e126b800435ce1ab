"""tools/meprop_torch_reference.py runs end to end on a tiny MNIST-shaped file (needs PyTorch)."""
import json
import os
import sys

import numpy
import pytest

from engine.data.classification import write_classification

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))


@pytest.mark.parametrize("mode", ["per-example", "unified"])
def test_tiny_run(tmp_path, mode):
    pytest.importorskip("torch", reason="PyTorch not installed: the reference needs it")
    import meprop_torch_reference as ref
    rng = numpy.random.default_rng(0)
    splits = {s: (rng.random((n, 784)).astype(numpy.float32), rng.integers(0, 10, n))
              for s, n in (("train", 60), ("test", 20))}
    path = tmp_path / "tiny.h5"
    write_classification(path, splits, 10)
    out = tmp_path / "rows.json"
    assert ref.main(["--data", str(path), "--k", "5", "--mode", mode, "--batch-size", "20",
                     "--epochs", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
