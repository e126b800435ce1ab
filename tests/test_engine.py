"""Engine: same seed same run, checkpoint-resume equals uninterrupted, NaN stop, bad checkpoints."""
import json

import numpy
import pytest

from engine import Adam, Engine, MLPLanguageModel, SGD, TrainingDiverged
from engine.checkpoint import CheckpointError


def data(n=300, V=40, ctx=3, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.integers(0, V, (n, ctx)).astype(numpy.int32)
    y = ((x[:, 0] + 2 * x[:, 1]) % V).astype(numpy.int32)
    return x, y


def make_engine(opt="adam", dropout=0.2, dtype="float64", seed=1, output="softmax", kw=None):
    model = MLPLanguageModel(40, context=3, embed_dim=6, hidden=(16,), dropout=dropout,
                             output=output, output_kwargs=kw or {})
    optimizer = Adam(lr=3e-3, clip_norm=5.0) if opt == "adam" else SGD(lr=0.05, momentum=0.9, schedule="step:1:0.5")
    return Engine(model, optimizer, device="cpu", seed=seed, dtype=dtype, verbose=False)


def params(engine):
    return {k: v.copy() for k, v in engine.model.state_dict().items()}


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_same_seed_same_run(opt):
    a, b = make_engine(opt), make_engine(opt)
    ha = a.train(data(), epochs=2, batch_size=32, progress=False)
    hb = b.train(data(), epochs=2, batch_size=32, progress=False)
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    pa, pb = params(a), params(b)
    assert all(numpy.array_equal(pa[k], pb[k]) for k in pa)
    c = make_engine(opt, seed=2)
    c.train(data(), epochs=2, batch_size=32, progress=False)
    assert not numpy.array_equal(params(c)["2.Linear.W"], pa["2.Linear.W"])


@pytest.mark.parametrize("opt,output,kw", [("adam", "softmax", {}), ("sgd", "softmax", {"chunk_size": 7}),
                                           ("adam", "squared", {})])
def test_resume_is_bit_identical(tmp_path, opt, output, kw):
    full = make_engine(opt, output=output, kw=kw)
    hist_full = full.train(data(), epochs=3, batch_size=32, valid=data(seed=5), progress=False)

    first = make_engine(opt, output=output, kw=kw)
    run = tmp_path / "run"
    first.train(data(), epochs=3, batch_size=32, valid=data(seed=5), progress=False,
                run_dir=str(run), max_steps=15)            # stops mid-epoch 2 (10 batches / epoch)
    assert first.step == 15 and first.epoch == 1
    resumed = Engine.from_checkpoint(str(run / "checkpoint.h5"), device="cpu", verbose=False)
    assert resumed.step == 15 and resumed.batch_in_epoch == 5
    hist_res = resumed.train(data(), epochs=3, batch_size=32, valid=data(seed=5), progress=False)
    pf, pr = params(full), params(resumed)
    for k in pf:
        assert numpy.array_equal(pf[k], pr[k]), k
    assert len(hist_res) == len(hist_full) == 3
    for a, b in zip(hist_full, hist_res):
        assert a["train_loss"] == b["train_loss"] and a["valid_loss"] == b["valid_loss"]
    assert resumed.optimizer.step_count == full.optimizer.step_count


def test_run_folder_contents(tmp_path):
    e = make_engine()
    e.train(data(), epochs=2, batch_size=64, valid=data(seed=3), progress=False, run_dir=str(tmp_path))
    for name in ("checkpoint.h5", "best.h5", "metrics.json", "plot.png", "log.txt"):
        assert (tmp_path / name).exists(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    best = Engine.from_checkpoint(str(tmp_path / "best.h5"), device="cpu", verbose=False)
    best_epoch = min(metrics["history"], key=lambda h: h["valid_loss"])["epoch"]
    assert best.epoch == best_epoch
    assert abs(best.evaluate(data(seed=3))["loss"] - metrics["history"][best_epoch - 1]["valid_loss"]) < 1e-9
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][-1]["valid_perplexity"] > 1


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    e = make_engine(dropout=0.0)
    e.train(data(), epochs=1, batch_size=32, progress=False, run_dir=str(tmp_path))
    ck = tmp_path / "checkpoint.h5"
    before = ck.read_bytes()
    e.model.body[0].params["W"][0, 0] = numpy.nan          # poison a hidden weight
    with pytest.raises(TrainingDiverged, match=r"loss became nan.*last good checkpoint kept at"):
        e.train(data(), epochs=2, batch_size=32, progress=False, run_dir=str(tmp_path))
    assert ck.read_bytes() == before
    good = Engine.from_checkpoint(str(ck), device="cpu", verbose=False)
    assert all(numpy.isfinite(v).all() for v in good.model.state_dict().values())


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Engine.from_checkpoint(str(tmp_path / "missing.h5"), device="cpu")
    e = make_engine()
    e.train(data(), epochs=1, batch_size=64, progress=False, run_dir=str(tmp_path))
    ck = tmp_path / "checkpoint.h5"
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(ck.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.h5"):
        Engine.from_checkpoint(str(truncated), device="cpu")
    notck = tmp_path / "other.h5"
    import h5py
    with h5py.File(notck, "w") as f:
        f["x"] = [1]
    with pytest.raises(CheckpointError, match="not an engine checkpoint"):
        Engine.from_checkpoint(str(notck), device="cpu")


def test_failed_checkpoint_write_leaves_old_file(tmp_path, monkeypatch):
    e = make_engine()
    path = tmp_path / "ck.h5"
    e.save_checkpoint(str(path))
    before = path.read_bytes()
    import engine.checkpoint as ckmod

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ckmod.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        e.save_checkpoint(str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.h5"]          # no temporary left behind


def test_out_of_range_ids_are_refused_before_training():
    e = make_engine()
    x, y = data()
    x[7, 1] = 40                                     # vocabulary is [0, 40)
    with pytest.raises(ValueError, match=r"train data: contexts id 40 at position \(7, 1\)"):
        e.train((x, y), epochs=1, batch_size=32, progress=False)
    x, y = data()
    y[3] = -5
    with pytest.raises(ValueError, match=r"targets id -5 at position \(3,\)"):
        e.train((x, y), epochs=1, batch_size=32, progress=False)


def test_nan_between_sync_points_is_caught_before_any_checkpoint(tmp_path):
    """With sync_every > 1 (the GPU default) a NaN loss between checks still stops training at
    the next position that could be saved, and the saved checkpoint stays the good one."""
    e = make_engine(dropout=0.0)
    e.train(data(), epochs=1, batch_size=32, progress=False, run_dir=str(tmp_path), sync_every=4)
    ck = tmp_path / "checkpoint.h5"
    before = ck.read_bytes()
    e.model.body[0].params["W"][0, 0] = numpy.nan
    with pytest.raises(TrainingDiverged, match=r"between step .* last good checkpoint kept"):
        e.train(data(), epochs=2, batch_size=32, progress=False, run_dir=str(tmp_path),
                sync_every=1000, checkpoint_every=3)
    assert ck.read_bytes() == before


def test_resume_mid_epoch_with_another_batch_size_is_refused(tmp_path):
    e = make_engine()
    e.train(data(), epochs=2, batch_size=32, progress=False, run_dir=str(tmp_path), max_steps=5)
    resumed = Engine.from_checkpoint(str(tmp_path / "checkpoint.h5"), device="cpu", verbose=False)
    with pytest.raises(ValueError, match="batch_size 64.*batch_size 32"):
        resumed.train(data(), epochs=2, batch_size=64, progress=False)
