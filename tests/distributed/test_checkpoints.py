"""Sharded checkpoints in one process: the layout of N ranks, split then merge gives back the
arrays, a manifest loads in one process (merged) and as any rank of N (its rows), and the
errors a bad set of files gives (a shard instead of its manifest, a missing shard, a shard of
another save, fewer labels than ranks). The collective save is tested under mpiexec
(test_cli_ranks.py)."""
from __future__ import annotations

import os

import numpy
import pytest

from engine import Adam, Engine, MLPClassifier
from engine.checkpoint import CheckpointError, load_checkpoint
from engine.distributed.checkpoints import (checkpoint_for_rank, layout_for_config,
                                            merge_checkpoint, write_merged, write_split)
from engine.distributed.step import shard_output
from engine.distributed.checkpoints import _Place

LABELS = 11


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A single-process checkpoint of a BCE classifier with FFI weights after 3 Adam steps."""
    rng = numpy.random.default_rng(0)
    model = MLPClassifier(6, LABELS, hidden=[5], output="bce",
                          output_kwargs={"weights": "ffi", "fan_in": 3,
                                         "label_counts": numpy.arange(1, LABELS + 1),
                                         "num_train": 40})
    engine = Engine(model, Adam(lr=0.01), device="cpu", dtype="float64", verbose=False)
    x = rng.standard_normal((12, 6))
    y = numpy.where(rng.random((12, 2)) < 0.7, rng.integers(0, LABELS, (12, 2)), -1)
    engine.train((x, y), epochs=1, batch_size=4, progress=False)
    path = str(tmp_path_factory.mktemp("ck") / "single.h5")
    engine.save_checkpoint(path)
    return path, engine


def _arrays(ck):
    out = {"m/" + k: numpy.asarray(v) for k, v in ck["model_state"].items()}
    out.update({"o/" + k: v for k, v in ck["optimizer_state"].items()
                if isinstance(v, numpy.ndarray)})
    return out


def test_layout_of_three_ranks():
    layout = layout_for_config("mlp-classifier", {"num_features": 6, "num_classes": LABELS,
                                                  "hidden": [5], "output": "bce",
                                                  "output_kwargs": {"weights": "ffi",
                                                                    "fan_in": 3}}, 3)
    assert layout["num_labels"] == LABELS
    assert layout["label_ranges"] == [[0, 3], [3, 7], [7, 11]]
    assert layout["sharded_state"] == ["2.BCEOutput.weights", "2.BCEOutput.bias",
                                       "2.BCEOutput.indices"]
    assert layout["sharded_params"] == ["2.BCEOutput.weights", "2.BCEOutput.bias"]


@pytest.mark.parametrize("size", [1, 2, 3, 11])
def test_split_then_merge_gives_the_arrays_back(saved, tmp_path, size):
    path, _ = saved
    manifest = write_split(path, size, str(tmp_path / "split"))
    meta = load_checkpoint(manifest)["shard"]
    assert meta["role"] == "manifest" and meta["size"] == size and len(meta["files"]) == size
    assert sorted(os.listdir(tmp_path / "split")) == sorted(meta["files"] + ["checkpoint.h5"])
    merged = write_merged(str(tmp_path / "split"), str(tmp_path / "merged.h5"))
    want, got = _arrays(load_checkpoint(path)), _arrays(load_checkpoint(merged))
    assert set(got) == set(want)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes() and got[key].dtype == want[key].dtype
    rows = [checkpoint_for_rank(manifest, load_checkpoint(manifest), r, size)
            for r in range(size)]
    weights = numpy.concatenate([ck["model_state"]["2.BCEOutput.weights"] for ck in rows])
    numpy.testing.assert_array_equal(weights, load_checkpoint(path)["model_state"][
        "2.BCEOutput.weights"])
    assert all(ck["model_state"]["0.Linear.W"].shape == (5, 6) for ck in rows)


def test_a_manifest_loads_in_one_process_and_on_other_ranks(saved, tmp_path):
    path, engine = saved
    manifest = write_split(path, 3, str(tmp_path / "three"))
    again = Engine.from_checkpoint(manifest, device="cpu", verbose=False)
    for key, value in engine.model.state_dict().items():
        numpy.testing.assert_array_equal(again.model.state_dict()[key], value)
    assert again.step == engine.step and again.epoch == engine.epoch
    two = checkpoint_for_rank(manifest, load_checkpoint(manifest), 1, 2)     # 3 ranks -> 2
    assert two["model_state"]["2.BCEOutput.weights"].shape[0] == LABELS - LABELS // 2
    assert two["optimizer_state"]["m/2.BCEOutput.weights"].shape[0] == LABELS - LABELS // 2


def test_bad_sets_of_files_are_one_line_each(saved, tmp_path):
    path, _ = saved
    manifest = write_split(path, 2, str(tmp_path / "two"))
    meta = load_checkpoint(manifest)["shard"]
    shard = os.path.join(tmp_path / "two", meta["files"][1])
    with pytest.raises(CheckpointError, match="give the manifest instead"):
        Engine.from_checkpoint(shard, device="cpu", verbose=False)
    with pytest.raises(CheckpointError, match="a single-process checkpoint, not a sharded"):
        merge_checkpoint(path)
    other = write_split(path, 2, str(tmp_path / "other"))
    os.replace(os.path.join(tmp_path / "other", load_checkpoint(other)["shard"]["files"][1]),
               shard)
    with pytest.raises(CheckpointError, match="not rank 1's shard .* \\(another save"):
        merge_checkpoint(manifest)
    os.remove(shard)
    with pytest.raises(CheckpointError, match="the shard of rank 1 .* is missing"):
        merge_checkpoint(manifest)
    with pytest.raises(CheckpointError, match="cannot split over 12 ranks: bce: 11 labels"):
        write_split(path, 12, str(tmp_path / "twelve"))


def test_fewer_labels_than_ranks_is_refused():
    output = MLPClassifier(4, 2, hidden=[3]).output
    with pytest.raises(ValueError, match="2 labels cannot be sharded over 3 ranks"):
        shard_output(output, _Place(0, 3))
