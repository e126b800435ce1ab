"""Optimizer.reset_slots: zeroes the state of chosen rows / elements (dynamic rewiring)."""
import numpy

from engine.backend import Backend
from engine.optim import SGD, Adam


def _stepped(opt):
    be = Backend()
    opt.bind(be)
    p = numpy.ones((4, 3))
    opt.step([("w", p, numpy.full((4, 3), 0.5))])
    return opt


def test_adam_rows_and_flat():
    opt = _stepped(Adam(lr=0.1))
    opt.reset_slots("w", numpy.array([1, 3]))
    for slot in ("m", "v"):
        buf = opt.state[slot]["w"]
        assert numpy.all(buf[[1, 3]] == 0) and numpy.all(buf[[0, 2]] != 0)
    opt.reset_slots("w", numpy.array([0, 5]), flat=True)   # (0, 0) and (1, 2)
    m = opt.state["m"]["w"]
    assert m[0, 0] == 0 and m[0, 1] != 0 and m[2, 2] != 0


def test_sgd_momentum_and_unknown_key():
    opt = _stepped(SGD(lr=0.1, momentum=0.9))
    (slot,) = opt.slots
    opt.reset_slots("w", numpy.array([2]))
    assert numpy.all(opt.state[slot]["w"][2] == 0) and numpy.all(opt.state[slot]["w"][0] != 0)
    opt.reset_slots("not-there", numpy.array([0]))          # no state yet: nothing to do
