"""Every method the CuPy backend overrides keeps the NumPy backend's signature (names, order,
kinds, defaults), in the manner of thinc's ops-consistency test: a layer written against
`Backend` then runs unchanged on `CupyBackend`, and a new backend is checked the same way.

The classes are inspected, not instantiated, so this runs without CuPy (CupyBackend imports
CuPy only in __init__)."""
from __future__ import annotations

import inspect

import pytest

from engine.backend import Backend
from engine.backend.cupy_backend import CupyBackend


def _own_classes(cls, base):
    """The classes of cls's MRO that `base` does not have: the backend and its mixins."""
    return [c for c in cls.__mro__ if c not in base.__mro__]


def _overrides(cls, base):
    """(name, defining class, function) of every method the device side defines that the base
    also has (private helpers included: an override is an override)."""
    found = {}
    for owner in reversed(_own_classes(cls, base)):       # the most derived wins
        for name, attr in vars(owner).items():
            if name.startswith("__") or not hasattr(base, name):
                continue
            func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if inspect.isfunction(func):
                found[name] = (owner, attr)
    return sorted(found.items())


OVERRIDES = _overrides(CupyBackend, Backend)


def test_the_cupy_backend_overrides_the_primitives_it_should():
    names = {name for name, _ in OVERRIDES}
    # the launchers of every kernel in kernels.KERNELS, and the cuSPARSE products
    expected = {"gather_rows", "scatter_add_rows", "softmax_xent_fused", "logsumexp_chunk_update",
                "softmax_xent_grad_chunk", "adam_step", "adam_step_rows", "_topk_ids",
                "ffi_forward", "ffi_backward", "factored_gather_rows", "factored_scatter_rows",
                "is_csr", "csr_matrix", "to_device_csr", "csr_matmul", "meprop_products"}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("name,owner_attr", OVERRIDES, ids=[n for n, _ in OVERRIDES])
def test_override_keeps_the_numpy_signature(name, owner_attr):
    owner, attr = owner_attr
    ref_attr = inspect.getattr_static(Backend, name)
    assert type(attr) is type(ref_attr), (
        f"{owner.__name__}.{name} is a {type(attr).__name__}, Backend's a {type(ref_attr).__name__}")
    func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
    ref = ref_attr.__func__ if isinstance(ref_attr, (staticmethod, classmethod)) else ref_attr
    got, want = inspect.signature(func), inspect.signature(ref)
    got_params = [(p.name, p.kind, p.default) for p in got.parameters.values()]
    want_params = [(p.name, p.kind, p.default) for p in want.parameters.values()]
    assert got_params == want_params, (
        f"{owner.__name__}.{name}{got} differs from Backend.{name}{want}")


def test_every_public_device_method_exists_on_the_numpy_backend():
    """A public method only the device backend has would be a primitive without a reference."""
    for owner in _own_classes(CupyBackend, Backend):
        for name, attr in vars(owner).items():
            if name.startswith("_") or not inspect.isfunction(attr):
                continue
            assert hasattr(Backend, name), f"{owner.__name__}.{name} has no NumPy reference"


def test_device_attributes_exist_on_both():
    for attr in ("name", "device", "device_id", "sync_every_default", "host_checks_are_free",
                 "ffi_methods", "host_reads"):
        assert hasattr(Backend, attr) and hasattr(CupyBackend, attr), attr
    assert Backend.host_checks_are_free and not CupyBackend.host_checks_are_free
    assert Backend.sync_every_default == 1 and CupyBackend.sync_every_default > 1
