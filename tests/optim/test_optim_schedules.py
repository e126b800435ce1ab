"""Learning-rate schedules: values, specs, configs, state, and Plateau's behaviour."""
import math

import numpy
import pytest

from engine.backend import Backend
from engine.optim import (SGD, Constant, Cosine, LinearWarmup, Plateau, Schedule, StepDecay,
                          make_schedule)


def test_constant():
    assert [Constant()(0.3, s, e) for s, e in [(0, 0), (100, 7)]] == [0.3, 0.3]


def test_step_decay():
    sched = StepDecay(every_epochs=2, factor=0.5)
    assert [sched(1.0, 0, e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_cosine_values():
    sched = Cosine(total_steps=10, min_lr=0.1)
    assert sched(1.0, 0, 0) == pytest.approx(1.0)
    assert sched(1.0, 5, 0) == pytest.approx(0.1 + 0.9 * 0.5)
    assert sched(1.0, 10, 0) == pytest.approx(0.1)
    assert sched(1.0, 50, 0) == pytest.approx(0.1)
    for s in range(11):
        expect = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 10))
        assert sched(1.0, s, 0) == pytest.approx(expect, rel=1e-15)


def test_cosine_warmup():
    sched = Cosine(total_steps=14, warmup_steps=4)
    assert [sched(2.0, s, 0) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]
    assert sched(2.0, 4, 0) == pytest.approx(2.0)
    assert sched(2.0, 9, 0) == pytest.approx(1.0)
    assert sched(2.0, 14, 0) == pytest.approx(0.0)


def test_cosine_total_steps_set_at_run_time():
    sched = make_schedule("cosine")
    with pytest.raises(ValueError, match="total_steps"):
        sched(1.0, 0, 0)
    sched.set_total_steps(4)
    assert sched(1.0, 2, 0) == pytest.approx(0.5)
    fresh = make_schedule(sched.config())
    fresh.load_state_dict(sched.state_dict())
    assert fresh(1.0, 2, 0) == sched(1.0, 2, 0)
    fixed = Cosine(total_steps=8)
    fixed.set_total_steps(100)  # an explicit horizon wins
    assert fixed.total_steps == 8



def test_warmup_passes_the_run_length_to_its_inner_schedule():
    sched = make_schedule("warmup:2+cosine")
    sched.set_total_steps(10)
    for s in range(12):
        expect = 0.5 * (1 + math.cos(math.pi * min(1.0, s / 10))) * min(1.0, (s + 1) / 2)
        assert sched(1.0, s, 0) == pytest.approx(expect, rel=1e-15, abs=1e-15)


@pytest.mark.parametrize("sched", [
    Constant(), StepDecay(3, 0.25), Cosine(total_steps=10, min_lr=0.01, warmup_steps=2),
    Plateau(factor=0.3, patience=2, threshold=1e-3, mode="max", min_lr=1e-5),
    LinearWarmup(3, inner=Plateau(0.5, mode="max"))], ids=lambda s: s.name)
def test_spec_builds_the_same_schedule(sched):
    # spec() is what a run's config.toml records: make_schedule must read it back exactly
    again = make_schedule(sched.spec())
    assert type(again) is type(sched) and again.config() == sched.config()
    assert again.spec() == sched.spec()

def test_linear_warmup_wraps():
    sched = LinearWarmup(4, inner=StepDecay(1, 0.1))
    assert [sched(1.0, s, 0) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    assert sched(1.0, 10, 2) == pytest.approx(0.01)
    assert LinearWarmup(0)(0.5, 0, 0) == 0.5


def test_plateau_behaviour():
    sched = Plateau(factor=0.5, patience=1, threshold=0.01)
    lrs = []
    for metric in [10.0, 9.0, 8.95, 8.94, 8.0, 8.5, 8.5, 8.5, 8.5]:
        sched.observe(metric)
        lrs.append(sched(1.0, 0, 0))
    # 8.95 and 8.94 are within 1% of 9.0: the second non-improvement (patience 1) halves
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert sched.best == 8.0


def test_plateau_patience_zero_and_max_mode_and_nan():
    sched = Plateau(factor=0.25)
    assert sched.observe(5.0) is False
    assert sched.observe(5.0) is True  # equal is not an improvement
    assert sched(1.0, 0, 0) == 0.25
    assert sched.observe(float("nan")) is True
    up = Plateau(factor=0.5, mode="max", min_lr=0.3)
    up.observe(0.5), up.observe(0.6)
    assert up(1.0, 0, 0) == 1.0
    up.observe(0.55), up.observe(0.4)
    assert up(1.0, 0, 0) == 0.3  # clamped at min_lr


def test_plateau_through_optimizer():
    opt = SGD(lr=1.0, schedule="plateau:0.5").bind(Backend())
    p = numpy.zeros(2)
    opt.observe(3.0)
    assert opt.step([("w", p, numpy.ones(2))]) == 1.0
    assert opt.observe(3.5) is True
    assert opt.current_lr() == 0.5
    assert opt.step([("w", p, numpy.ones(2))]) == 0.5
    numpy.testing.assert_array_equal(p, [-1.5, -1.5])


def test_optimizer_applies_schedule_per_step_and_epoch():
    opt = SGD(lr=1.0, schedule="step:1:0.5").bind(Backend())
    p = numpy.zeros(1)
    assert opt.step([("w", p, numpy.ones(1))], epoch=0) == 1.0
    assert opt.current_lr(epoch=2) == 0.25
    assert opt.step([("w", p, numpy.ones(1))], epoch=2) == 0.25
    numpy.testing.assert_array_equal(p, [-1.25])
    warm = SGD(lr=1.0, schedule="warmup:2").bind(Backend())
    assert [warm.step([("w", p, None)]) for _ in range(3)] == [0.5, 1.0, 1.0]


@pytest.mark.parametrize("spec,expect", [
    ("constant", Constant()),
    ("step:2:0.5", StepDecay(2, 0.5)),
    ("step:every_epochs=3:factor=0.1", StepDecay(3, 0.1)),
    ("cosine:1000", Cosine(1000)),
    ("cosine:1000:0.001:100", Cosine(1000, 0.001, 100)),
    ("plateau:0.5", Plateau(0.5)),
    ("plateau:0.5:2:0.01", Plateau(0.5, 2, 0.01)),
    ("warmup:100", LinearWarmup(100)),
    ("warmup:10+cosine:200", LinearWarmup(10, Cosine(200))),
    ({"name": "step", "every_epochs": 4, "factor": 0.3}, StepDecay(4, 0.3)),
    (None, Constant()),
])
def test_make_schedule_specs(spec, expect):
    sched = make_schedule(spec)
    assert type(sched) is type(expect)
    assert sched.config() == expect.config()
    again = Schedule.from_config(sched.config())
    assert again.config() == sched.config()


@pytest.mark.parametrize("spec", ["nope", "step:0", "plateau:2.0", "cosine:1:2:3:4",
                                  "plateau:0.5+cosine"])
def test_make_schedule_errors(spec):
    with pytest.raises(ValueError):
        make_schedule(spec)


def test_schedule_state_round_trip():
    sched = LinearWarmup(3, Plateau(0.5, patience=1))
    for metric in [4.0, 5.0, 6.0, 3.0, 3.5]:
        sched.observe(metric)
    state = sched.state_dict()
    assert set(state) == {"inner/best", "inner/num_bad", "inner/multiplier"}
    fresh = make_schedule(sched.config())
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    for metric in [3.6, 2.0, 2.5]:
        assert fresh.observe(metric) == sched.observe(metric)
        assert fresh(1.0, 5, 0) == sched(1.0, 5, 0)
