"""Fixed fan-in (FFI) sparse linear layer (Schultheis & Babbar 2023; docs/fixed-fanin.md).

Every output unit l reads exactly K inputs: indices (L, K) int32 (each row K distinct positions
in [0, I)) with weights (L, K) and bias (L,), an ELLPACK layout.

    forward   y[b, l]  = sum_k weights[l, k] x[b, indices[l, k]] + bias[l]       x (B, I) -> y (B, L)
    backward  dweights[l, k] = sum_b dy[b, l] x[b, indices[l, k]]                (L, K), dense
              dbias[l] = sum_b dy[b, l]
              dx[b, i] = sum over (l, k) with indices[l, k] = i of weights[l, k] dy[b, l]

Params: "weights" (L, K) and "bias" (L,) (the optimizer updates them); `indices` is a buffer,
not a param: it is in state_dict()/load_state_dict() under "indices" and changes only through
rewiring. Initialisation (init_params, host, from the model's seeded generator, so CPU and GPU
start identical): indices first (every row K distinct uniform positions, sorted), then weights
uniform in +-sqrt(6 / (K + L K / I)) (Glorot with fan-in K and the mean fan-out L K / I),
bias 0.

Where the work runs (`method`): the layer calls `backend.ffi_forward` / `backend.ffi_backward`
with one of the backend's paths (`backend.ffi_methods`; engine/backend/numpy_ffi.py has the
reference and the shapes): on the CPU the numba loops of engine/backend/cpu_ffi.py (the input
gradient is a scatter by a fixed number of label ranges into private buffers summed in order,
deterministic by construction); on the GPU "kernel" (rawkernels/ffi.cu) or "cusparse" (a cuSPARSE
CSR view of the same storage), engine/backend/cupy_ffi.py. "auto" takes the backend's only path,
or measures each path's forward + backward once per shape (L, I, K, B rounded up to a power of
two, dtype, deterministic, device) on random data and keeps the faster (`CHOICES`); a path the
backend lacks (e.g. "kernel" on the CPU) runs the backend's first path. "reference" runs the
reference (any backend; for tests). With `deterministic=True` the GPU input gradient is summed in
a fixed order (transposed index) instead of by atomics. `skip_zero_grads`: labels whose dy column
is all zero cost no weight-gradient work (the squared hinge makes most of them zero).
The index buffer is wrapped once per version (`backend.ffi_index`), and what a backend derives
from it (CSC, cuSPARSE view) is cached with it until rewiring or loading replaces it.

Dynamic sparse training (`rewire_every` > 0; SET style as in the paper): `after_step(step,
optimizer, key_prefix)` every `rewire_every` steps prunes the globally smallest-|w| fraction
`rewire_fraction` of the weights and regrows as many in the same rows at uniform input positions
not held by the row (fixed_fanin_rewire.py), so every row keeps exactly K distinct indices.
Regrown weights start at 0 (as in SET; a zero weight still receives a gradient through its new
input) and their optimizer slots are zeroed with `optimizer.reset_slots(key_prefix + "weights",
flat, flat=True)`. The draw uses numpy.random.default_rng([seed, step]): reproducible, and the
same after a resume from a checkpoint (no generator state to save).
"""
from __future__ import annotations

import numpy

from ..backend.numpy_ffi import csc_bytes
from . import fixed_fanin_rewire as rewire_ops
from ..optim.slots import slot_count
from .base import Layer

METHODS = ("auto", "kernel", "cusparse", "reference")
#: ((backend name, device id), L, I, K, B bucket, dtype, deterministic) -> the path measured fastest
CHOICES: dict = {}


def _is_sparse_matrix(x):
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def batch_bucket(B):
    """Batch sizes share a measurement per power of two (the last, short batch of an epoch or
    of an evaluation pass does not trigger a new one)."""
    return 1 << max(0, int(B) - 1).bit_length()


class FixedFanInLinear(Layer):
    def __init__(self, in_features, out_features, fan_in, bias=True, seed=0, method="auto",
                 deterministic=False, rewire_every=0, rewire_fraction=0.1, skip_zero_grads=True):
        super().__init__()
        in_features, out_features, fan_in = int(in_features), int(out_features), int(fan_in)
        if in_features < 1 or out_features < 1 or fan_in < 1:
            raise ValueError(f"FixedFanInLinear: in_features, out_features and fan_in must be "
                             f"positive, got {in_features}, {out_features}, {fan_in}")
        if fan_in > in_features:
            raise ValueError(f"FixedFanInLinear: fan_in {fan_in} exceeds in_features "
                             f"{in_features} (a row cannot hold more distinct inputs)")
        if method not in METHODS:
            raise ValueError(f"FixedFanInLinear: method must be one of {METHODS}, got {method!r}")
        if int(rewire_every) < 0:
            raise ValueError(f"FixedFanInLinear: rewire_every must be >= 0, got {rewire_every}")
        if not 0.0 < float(rewire_fraction) <= 1.0:
            raise ValueError(f"FixedFanInLinear: rewire_fraction must be in (0, 1], "
                             f"got {rewire_fraction}")
        self.in_features, self.out_features, self.fan_in = in_features, out_features, fan_in
        self.use_bias = bool(bias)
        self.seed = int(seed)
        self.method = method
        self.deterministic = bool(deterministic)
        self.rewire_every = int(rewire_every)
        self.rewire_fraction = float(rewire_fraction)
        self.skip_zero_grads = bool(skip_zero_grads)
        self.indices = None
        self.rows_sorted = True      # every row's indices ascending (cuSPARSE wants that)
        self.index_version = 0       # bumped whenever indices change
        self._index = None           # backend.ffi_index of the current version (and its caches)
        self._xt = None
        self._batch = 0
        self._used_method = None
        self._host_indices = None

    # ------------------------------------------------------------------ set-up
    def init_params(self, rng):
        L, I, K = self.out_features, self.in_features, self.fan_in
        self._host_indices = rewire_ops.draw_distinct(rng, L, I, K)
        a = numpy.sqrt(6.0 / (K + L * K / I))
        params = {"weights": rng.uniform(-a, a, size=(L, K))}
        if self.use_bias:
            params["bias"] = numpy.zeros(L)
        return params

    def bind(self, backend, rng, dtype):
        super().bind(backend, rng, dtype)
        self.set_indices(self._host_indices, sorted_rows=True, check=False)
        self._host_indices = None
        return self

    def set_indices(self, indices, sorted_rows=None, check=True):
        """Replace the index buffer (host or device (L, K) integer array; checked for range and
        distinct rows unless check=False, which the layer's own draws use)."""
        host = numpy.asarray(self.backend.to_host(indices) if self.backend.is_array(indices)
                             else indices)
        if check:
            rewire_ops.check_indices(host, self.in_features, "FixedFanInLinear.indices")
        if host.shape != (self.out_features, self.fan_in):
            raise ValueError(f"FixedFanInLinear.indices: shape {host.shape}, expected "
                             f"{(self.out_features, self.fan_in)}")
        if sorted_rows is None:
            sorted_rows = bool((numpy.diff(host, axis=1) > 0).all())
        self.indices = self.backend.asarray(numpy.ascontiguousarray(host, dtype=numpy.int32))
        self.rows_sorted = bool(sorted_rows)
        self.index_version += 1
        self._index = self.backend.ffi_index(self.indices, self.in_features, self.rows_sorted)

    # ------------------------------------------------------------------ helpers
    def _bias(self):
        return self.params["bias"] if self.use_bias else None

    def resolve_method(self, batch):
        """The backend path used for a batch of `batch` rows: "reference", or one of
        `backend.ffi_methods` ("auto" measured once per shape when there are several)."""
        if self.method == "reference":
            return "reference"
        methods = tuple(self.backend.ffi_methods)
        if self.method in methods:
            return self.method
        if self.method != "auto" or len(methods) == 1:
            return methods[0]
        be = self.backend
        key = ((be.name, be.device_id), self.out_features, self.in_features, self.fan_in,
               batch_bucket(batch), numpy.dtype(self.dtype).name, self.deterministic)
        if key not in CHOICES:
            CHOICES[key] = self._measure(batch_bucket(batch), methods)
        return CHOICES[key]

    def _measure(self, batch, methods):
        """The path whose forward + backward is fastest on random data of this shape."""
        be = self.backend
        rng = numpy.random.default_rng(0)
        x = be.asarray(rng.standard_normal((batch, self.in_features)).astype(self.dtype))
        dy = be.asarray(rng.standard_normal((batch, self.out_features)).astype(self.dtype))

        def runner(method):
            def run():
                xt = be.xp.ascontiguousarray(x.T)
                self._forward_with(method, xt)
                self._backward_with(method, dy, xt)
            return run
        times = {m: be.time_call(runner(m)) for m in methods}
        return min(times, key=times.get)

    # ------------------------------------------------------------------ computation
    def _check_input(self, x):
        if _is_sparse_matrix(x):
            raise TypeError("FixedFanInLinear: expected a dense input (B, I); a sparse matrix "
                            "was given (put a SparseLinear or dense layer before it)")
        self.backend.check_array(x, "FixedFanInLinear input")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"FixedFanInLinear: expected input (B, {self.in_features}), "
                             f"got {tuple(x.shape)}")

    def _forward_with(self, method, xt):
        return self.backend.ffi_forward(xt, self._index, self.params["weights"], self._bias(),
                                        method)

    def _backward_with(self, method, dy, xt, need_input_grad=True):
        return self.backend.ffi_backward(dy, xt, self._index, self.params["weights"], method,
                                         self.skip_zero_grads, self.deterministic,
                                         need_input_grad)

    def forward(self, x, train=True):
        self._check_input(x)
        x = x.astype(self.dtype, copy=False)
        method = self.resolve_method(x.shape[0])
        xt = self.backend.xp.ascontiguousarray(x.T)        # (I, B): gathers read B adjacent
        y = self._forward_with(method, xt)
        self._xt = xt if train else None
        self._batch = x.shape[0]
        self._used_method = method
        return y

    def backward(self, dy, need_input_grad=True):
        if self._xt is None:
            raise RuntimeError("FixedFanInLinear.backward called without a forward(train=True)")
        self.backend.check_array(dy, "FixedFanInLinear dy")
        if tuple(dy.shape) != (self._batch, self.out_features):
            raise ValueError(f"FixedFanInLinear.backward: dy of shape {tuple(dy.shape)}, "
                             f"expected {(self._batch, self.out_features)}")
        dy = self.backend.xp.ascontiguousarray(dy, dtype=self.dtype)
        dw, dx = self._backward_with(self._used_method, dy, self._xt, need_input_grad)
        self.grads["weights"] = dw
        if self.use_bias:
            self.grads["bias"] = dy.sum(axis=0)
        self._xt = None
        return dx

    # ------------------------------------------------------------------ rewiring
    def after_step(self, step, optimizer, key_prefix=""):
        """Rewire every `rewire_every` steps (0: never). Returns the regrown flat positions
        (host int64) or None when this step does not rewire."""
        if self.rewire_every <= 0 or int(step) % self.rewire_every != 0:
            return None
        return self.rewire(step, optimizer, key_prefix)

    def rewire(self, step, optimizer=None, key_prefix=""):
        """Prune the globally smallest |weights| (fraction rewire_fraction) and regrow as many
        in the same rows; regrown weights 0, their optimizer slots reset. -> flat positions."""
        be = self.backend
        w = self.params["weights"]
        n = int(round(self.rewire_fraction * w.size))
        flat = rewire_ops.prune_smallest(be.to_host(abs(w)), n)
        if flat.size == 0:
            return flat
        rng = numpy.random.default_rng([self.seed, int(step)])
        host_idx = be.to_host(self.indices).copy()
        rewire_ops.regrow(rng, host_idx, flat, self.in_features)
        flat_dev = be.asarray(flat)
        w.reshape(-1)[flat_dev] = 0
        self.set_indices(host_idx, sorted_rows=False, check=False)
        if optimizer is not None:
            optimizer.reset_slots(key_prefix + "weights", flat_dev, flat=True)
        return flat

    # ------------------------------------------------------------------ state
    def state_dict(self):
        state = super().state_dict()
        state["indices"] = self.backend.to_host(self.indices).copy()
        return state

    def load_state_dict(self, state):
        if "indices" not in state:
            raise KeyError("FixedFanInLinear: state has no entry 'indices'")
        super().load_state_dict(state)
        self.set_indices(numpy.asarray(state["indices"]))

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "fan_in": self.fan_in, "bias": self.use_bias, "seed": self.seed,
                "method": self.method, "deterministic": self.deterministic,
                "rewire_every": self.rewire_every, "rewire_fraction": self.rewire_fraction,
                "skip_zero_grads": self.skip_zero_grads}

    # ------------------------------------------------------------------ memory
    def memory_report(self, optimizer=None, batch=None, dtype=None):
        """Bytes of the layer's storage (computable before bind):

        weights L K s, indices L K 4, bias L s, grads (L K + L) s, optimizer slots x
        (L K + L) s (optimizer: see engine.optim.slots.slot_count),
        csc (deterministic GPU mode: (I + 1) 8 + L K 4); with `batch`: activations = the
        cached transposed input B I s, the output and its gradient 2 B L s, and dx B I s.
        s = the element size of `dtype` (default: the bound dtype, else float32)."""
        s = numpy.dtype(dtype if dtype is not None else (self.dtype or numpy.float32)).itemsize
        L, K, I = self.out_features, self.fan_in, self.in_features
        nb = L if self.use_bias else 0
        slots = slot_count(optimizer)
        report = {"weights": L * K * s, "indices": L * K * 4, "bias": nb * s,
                  "grads": (L * K + nb) * s, "optimizer": slots * (L * K + nb) * s}
        if self.deterministic:      # unbound: counted as on the GPU (the CPU needs none)
            csc = (csc_bytes(L, I, K) if self.backend is None
                   else self.backend.ffi_index_bytes(L, I, K, True))
            if csc:
                report["csc"] = csc
        if batch is not None:
            report["activations"] = int(batch) * (2 * I + 2 * L) * s
        report["total"] = int(sum(report.values()))
        return {k: int(v) for k, v in report.items()}
