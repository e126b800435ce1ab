"""engine/optim/base.py: the options every optimizer declares refuse what the constructor
refuses (the command line's checks), the constructor's own refusals, and repr rebuilding the
optimizer."""
import pytest

from engine.optim import SGD, Adam
from engine.options import OptionError

OPTIMIZERS = [SGD, Adam]


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("name, bad, good", [("lr", "-0.1", "1e-6"), ("lr", "0", "0.5"),
                                             ("weight_decay", "-1e-3", "0"),
                                             ("clip_norm", "0", "0.5"),
                                             ("clip_norm", "-2", "1e-6")])
def test_common_options_check_their_values(cls, name, bad, good):
    option = {o.name: o for o in cls.OPTIONS}[name]
    with pytest.raises(OptionError, match=option.flag):
        option.value(bad)
    assert option.value(good) == float(good)


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("kwargs", [{"lr": -0.1}, {"lr": 0.1, "clip_norm": 0},
                                    {"lr": 0.1, "clip_norm": -0.5},
                                    {"lr": 0.1, "sparse_mode": "eager"}])
def test_constructor_refuses_bad_values(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_repr_rebuilds_the_optimizer(cls):
    opt = cls(lr=0.05, weight_decay=1e-4, clip_norm=2.0, schedule="warmup:3+cosine:total_steps=10",
              sparse_mode="dense")
    again = eval(repr(opt), {cls.__name__: cls})
    assert type(again) is cls and again.config() == opt.config()
