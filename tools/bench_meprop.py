"""Benchmark: meProp's backward and training step against the dense ones (Sun et al. 2017,
Table 7 shape; docs/meprop.md#reported-figures).

One linear layer y = x W^T + b, W (h, h), batch B = 1024, float32, a random output gradient dy:
  dense backward   dW = dy^T x, db = sum dy, dx = dy W          (BLAS / cuBLAS)
  meProp backward  top-k of dy (per-example or unified), the products over the k selected
                   rows of W (engine/layers/meprop.py), db from the full dy
  step             forward + backward + SGD update (dense update for the dense step, the lazy
                   row-sparse update of the selected rows for meProp)
for k in 8, 16, 32, 64, 128, 256, 512. Every function is timed interleaved round-robin (dense
backward, meProp backward, select, dense step, meProp step, forward, then again), medians
reported. `amdahl` = dense step / forward: the best a step can gain when only the backward and
the update shrink (the forward is unchanged). `select ms` is the top-k selection alone (part of
the meProp backward). Before timing, each layer's first step is checked against the float64
reference (tools/_references.py): y, dx for 8 batch rows, dW for some rows (with those the
reference selects in these batch rows), db, and the sketches y s, r^T dx, dW v (random +-1
vectors: every entry counts); meProp's against the masked dense products dy~ = dy * mask,
the mask being the true top-k of |dy| (unified: the layer's own columns, after checking that
they are a top-k of sum_b |dy| to within float32 summation; random: the layer's pattern for
the step's key). A layer that disagrees is not timed and the script exits with status 1.
Memory (resident and peak bytes of one step) per layer: tools/_bench_harness.py.

Paper figures (GTX 1080, unified, h = 8192, B = 1024, their own CUDA baseline): backward
308.00 ms dense; 8.37 / 9.16 / 11.20 / 14.38 / 21.28 / 38.57 / 69.95 ms for k = 8 ... 512.

CPU default: h = 2048 (h = 8192 costs seconds per dense backward on one core; pass
`--h 8192 --k 8 512` for the paper's shape). GPU default: h = 8192.
JSON rows: h, batch, k, mode, device, dense_backward_ms, meprop_backward_ms, dense_step_ms,
meprop_step_ms, plus forward_ms, select_ms, backward_speedup, step_speedup, amdahl, paper_*,
check, check_ok, check_error, dense_* / meprop_* (each layer's check and memory fields).
"""
from __future__ import annotations

import os
import sys

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)
import _bench_common as bc
import _bench_harness as harness
import _references as refs
from engine.layers import Linear
from engine.layers import meprop as mp
from engine.optim import SGD

DTYPE = numpy.float32
KS = [8, 16, 32, 64, 128, 256, 512]
PAPER_DENSE_MS = 308.00
PAPER_MS = {8: 8.37, 16: 9.16, 32: 11.20, 64: 14.38, 128: 21.28, 256: 38.57, 512: 69.95}
MODES = ["unified", "per-example"]
METHODS = ("dense", "meprop")
#: float32 first step vs the float64 reference, relative to each quantity's largest entry;
#: "selection": how far unified meProp's columns are from a top-k of sum_b |dy| (float32 sums)
CHECK_TOLERANCES = {"y": 1e-4, "dx": 1e-4, "dW": 1e-4, "db": 1e-4, "y_sketch": 1e-4,
                    "dx_sketch": 1e-4, "dW_sketch": 1e-4, "selection": 1e-5}
RANDOM_KEY = (0, 0, 0, 0, 1)


def build_parser():
    p = bc.make_parser(__doc__.split("\n")[0], default_repeats_cpu=3, default_repeats_gpu=20)
    p.add_argument("--h", type=int, default=None, help="layer width (default 2048 CPU, 8192 GPU)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--k", type=int, nargs="+", default=None, help="k values (default 8..512)")
    p.add_argument("--modes", nargs="+", choices=MODES + ["random"], default=MODES)
    return p


def make_data(h, B, seed):
    """x (B, h) standard normal, dy (B, h) standard normal / B (the loss gradient stand-in)."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((B, h)).astype(DTYPE)
    dy = (rng.standard_normal((B, h)) / B).astype(DTYPE)
    return x, dy


def check_rows(dy, k, mode):
    """(batch rows, rows of W) the check compares entry by entry: 8 batch rows from first to
    last; the first 32 rows of W and the columns the reference selects in those batch rows (at
    most 64). The sketches cover the rest."""
    B, O = dy.shape
    batch = harness.spread_rows(B)
    picked = numpy.arange(0)
    if mode in ("per-example", "unified"):
        mask, _ = refs.topk_mask(dy, min(k, O), mode)
        picked = numpy.nonzero(mask[batch].any(axis=0))[0][:64]
    return batch, numpy.unique(numpy.concatenate([numpy.arange(min(O, 32)), picked]))


class LinearRunner(harness.EngineRunner):
    """One h x h Linear layer, dense or meProp, with its SGD; dy stands in for the loss gradient."""

    def __init__(self, method, backend, h, B, k, mode, seed):
        super().__init__(backend)
        self.method, self.mode = method, mode
        self.cfg = None if method == "dense" else {"k": k, "mode": mode, "seed": seed}
        self.layer = Linear(h, h, meprop=self.cfg).bind(backend, numpy.random.default_rng(seed), DTYPE)
        x, dy = make_data(h, B, seed)
        self.x, self.dy = backend.asarray(x), backend.asarray(dy)
        self.batch_rows, self.W_rows = check_rows(dy, k, mode)
        self.sketch = refs.sketch_vectors(B, h, h, seed)
        self.opt = SGD(1e-3).bind(backend)

    def _update(self):
        layer = self.layer
        self.opt.step([("W", layer.params["W"], layer.grads["W"]),
                       ("b", layer.params["b"], layer.grads["b"])])
        layer.grads = {}

    def step(self):
        self.layer.forward(self.x, train=True)
        self.layer.backward(self.dy)
        self._update()

    def backward(self):
        self.layer._x = self.x            # the forward's cache, without timing the forward
        self.layer.backward(self.dy)
        self.layer.grads = {}

    def forward(self):
        self.layer.forward(self.x, train=False)

    def select(self):
        mp.select(self.backend, self.dy, self.cfg, RANDOM_KEY)

    def timed(self):
        if self.method == "dense":
            return {"backward": self.backward, "step": self.step, "forward": self.forward}
        return {"backward": self.backward, "select": self.select, "step": self.step}

    def first_step(self):
        be, layer = self.backend, self.layer
        br, wr = be.asarray(self.batch_rows), be.asarray(self.W_rows)
        y = layer.forward(self.x, train=True)
        values = {"y": self.to_host64(y[br])}
        if self.mode == "random" and self.cfg is not None:
            # the pattern of a random step is a function of its key: take the products for one key
            kind, pattern = mp.select(be, self.dy, self.cfg, RANDOM_KEY)
            g, dx = mp.meprop_backward(be, self.dy, self.x, layer.params["W"], self.cfg, RANDOM_KEY)
            self.pattern = numpy.asarray(be.to_host(pattern))
            layer.backward(self.dy)
        else:
            dx = layer.backward(self.dy)
            g = layer.grads["W"]
        dW = g.to_dense(be) if hasattr(g, "to_dense") else g
        r, s, v = self.sketch
        values.update(dx=self.to_host64(dx[br]), dW=self.to_host64(dW[wr]),
                      db=self.to_host64(layer.grads["b"]), y_sketch=self.host_matvec(y, s),
                      dx_sketch=self.host_vecmat(r, dx), dW_sketch=self.host_matvec(dW, v))
        if self.mode == "unified" and self.cfg is not None:
            self.selected = numpy.asarray(be.to_host(g.rows))
        self.initial_W = None
        self._update()
        self.sync()
        return values

    def held_arrays(self):
        return list(self.layer.params.values()) + [self.x, self.dy] + [
            s for slot in self.opt.state.values() for s in slot.values()]

    def close(self):
        self.layer = self.x = self.dy = self.opt = None


def build_runner(p, backend):
    return LinearRunner(p["method"], backend, p["h"], p["B"], p["k"], p["mode"], p["seed"])


def reference(runner, p):
    """The float64 reference of a runner's first step (W0 rebuilt from the seed)."""
    x, dy = make_data(p["h"], p["B"], p["seed"])
    W0 = Linear(p["h"], p["h"]).init_params(numpy.random.default_rng(p["seed"]))
    W0 = {k: v.astype(DTYPE) for k, v in W0.items()}
    errors, mask = {}, None
    if runner.method == "meprop":
        if p["mode"] == "random":
            mask = numpy.zeros(dy.shape)
            mask[numpy.arange(dy.shape[0])[:, None], runner.pattern] = 1.0
            ok = all(numpy.unique(r).size == min(p["k"], dy.shape[1]) for r in runner.pattern)
            errors["selection"] = 0.0 if ok else float("inf")
        elif p["mode"] == "unified":
            mask, score = refs.topk_mask(dy, p["k"], "unified")
            errors["selection"] = refs.unified_gap(score, runner.selected)
            mask = numpy.zeros(dy.shape)
            mask[:, runner.selected] = 1.0          # its own columns, once shown to be a top-k
        else:
            mask, _ = refs.topk_mask(dy, p["k"], "per-example")
    ref = refs.linear_step(W0["W"], W0["b"], x, dy, runner.batch_rows, runner.W_rows, mask,
                           sketch=runner.sketch)
    return harness.Reference(ref, errors=errors)


def tolerances(method, mode):
    tol = dict(CHECK_TOLERANCES)
    if method == "dense" or mode == "per-example":
        del tol["selection"]
    return tol


def run_row(backend, device, h, B, k, mode, args, env):
    payload = lambda m: dict(method=m, h=h, B=B, k=k, mode=mode, seed=args.seed)   # noqa: E731
    res = harness.run_methods(
        list(METHODS), lambda m: build_runner(payload(m), backend),
        lambda runner, values: reference(runner, payload(runner.method)),
        lambda m: tolerances(m, mode), args, env, label=f"h={h} B={B} k={k} {mode}",
        payload=payload, script=os.path.abspath(__file__))
    d, s = res["dense"], res["meprop"]
    row = dict(h=h, batch=B, k=k, mode=mode, device=device,
               dense_backward_ms=d.get("backward_ms"), meprop_backward_ms=s.get("backward_ms"),
               select_ms=s.get("select_ms"), dense_step_ms=d["ms"], meprop_step_ms=s["ms"],
               forward_ms=d.get("forward_ms"))
    row.update(harness.combined_fields(res, METHODS))
    ratio = lambda a, b: row[a] / row[b] if row[a] and row[b] else None    # noqa: E731
    row["backward_speedup"] = ratio("dense_backward_ms", "meprop_backward_ms")
    row["step_speedup"] = ratio("dense_step_ms", "meprop_step_ms")
    row["amdahl"] = ratio("dense_step_ms", "forward_ms")
    paper = PAPER_MS.get(k) if (h, B, mode) == (8192, 1024, "unified") else None
    row["paper_backward_ms"] = paper
    row["paper_dense_backward_ms"] = PAPER_DENSE_MS if paper else None
    row["paper_speedup"] = PAPER_DENSE_MS / paper if paper else None
    f = lambda key, fmt="{:.2f}": bc.fmt_num(row[key], fmt)    # noqa: E731
    print(f"[bench] h={h} B={B} k={k} {mode}: backward {f('dense_backward_ms')} -> "
          f"{f('meprop_backward_ms')} ms ({f('backward_speedup', '{:.1f}')}x), step "
          f"{f('dense_step_ms')} -> {f('meprop_step_ms')} ms ({f('step_speedup')}x, Amdahl "
          f"{f('amdahl')}x), check {row['check']}", flush=True)
    return row


def main(argv=None):
    args, env = harness.start(build_parser(), argv, build_runner)
    backend, device, device_name = env["backend"], env["device"], env["device_name"]
    if args.tiny:
        h, B, ks = 64, 32, [4, 16]
    elif args.quick:
        h, B, ks = 512, 256, [8, 64, 256]
    else:
        h, B, ks = (8192 if device == "gpu" else 2048), args.batch, KS
    h = args.h or h
    ks = [k for k in (args.k or ks) if k < h]
    if not args.tiny and not args.quick:
        B = args.batch
    print(f"[bench] device: {device_name}; float32; h={h}, batch {B}; numba threads "
          f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}", flush=True)
    rows = [run_row(backend, device, h, B, k, mode, args, env) for mode in args.modes for k in ks]
    if args.json:
        print(f"[bench] wrote {bc.write_json(args.json, rows)}", flush=True)
    columns = [("mode", lambda r: r["mode"]), ("h", lambda r: r["h"]), ("k", lambda r: r["k"]),
               ("dense bwd ms", lambda r: bc.fmt_num(r["dense_backward_ms"], "{:.2f}")),
               ("meProp bwd ms", lambda r: bc.fmt_num(r["meprop_backward_ms"], "{:.2f}")),
               ("select ms", lambda r: bc.fmt_num(r["select_ms"], "{:.2f}")),
               ("bwd speedup", lambda r: bc.fmt_num(r["backward_speedup"], "{:.1f}")),
               ("paper bwd ms", lambda r: bc.fmt_num(r["paper_backward_ms"], "{:.2f}")),
               ("paper speedup", lambda r: bc.fmt_num(r["paper_speedup"], "{:.1f}")),
               ("dense step ms", lambda r: bc.fmt_num(r["dense_step_ms"], "{:.2f}")),
               ("meProp step ms", lambda r: bc.fmt_num(r["meprop_step_ms"], "{:.2f}")),
               ("step speedup", lambda r: bc.fmt_num(r["step_speedup"], "{:.2f}")),
               ("amdahl", lambda r: bc.fmt_num(r["amdahl"], "{:.2f}")),
               ("check", harness.check_cell)]
    status = harness.report_failures(rows, lambda r: f"h={r['h']} k={r['k']} {r['mode']}")
    bc.print_table(f"meProp vs dense, one {h}x{h} linear layer, batch {B}, {device_name}", columns,
                   rows, notes=["paper: GTX 1080, unified top-k, h=8192, B=1024, dense 308.00 ms "
                                "(their baseline, not cuBLAS-verified)",
                                "amdahl = dense step / forward (only backward and update shrink)",
                                "check: first step vs the float64 reference; FAILED layers are not "
                                "timed"])
    return status


if __name__ == "__main__":
    sys.exit(main())
