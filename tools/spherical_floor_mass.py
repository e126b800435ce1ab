"""How much of a spherical softmax's probability goes to its eps floor, measured on a trained model.

The spherical softmax gives word c the probability p_c = (o_c^2 + eps) / (q + D eps), q = ||o||^2
(docs/factored.md). Every word gets at least eps / (q + D eps), so D eps / (q + D eps) of the mass
is spread evenly over the vocabulary whatever the context: if that share were large, eps would cap
the perplexity. This script reads a checkpoint whose output is `factored-spherical` or
`spherical-dense`, runs a split through it and prints the quantiles of q, of that floor share,
and the perplexity with and without the floor (o_c^2 / q, renormalised without eps).

    python tools/spherical_floor_mass.py RUN/best.h5 --data ptb.h5 [--split valid] [--json F]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def floor_mass(engine, data, split="valid", batch_size=512, max_batches=None):
    """-> dict: q and floor-share quantiles (5%, 50%, 95%), and both perplexities, over the split."""
    model, be = engine.model, engine.backend
    out = model.output
    if getattr(out, "loss_name", None) != "spherical":
        raise SystemExit(f"floor mass: the model's output is not a spherical softmax "
                         f"({type(out).__name__})")
    xp = be.xp
    if hasattr(out, "dense_weight"):             # factored: W = V U (+ 1 a^T), bias its last column
        W, bias = be.asarray(out.dense_weight()), out.dense_bias()
        bias = None if bias is None else be.asarray(bias)
    else:                                          # spherical-dense: the parameters themselves
        W, bias = out.params["W"], out.params.get("b")
    eps, D = out.loss.eps, out.num_classes
    qs, logp, logp_no_floor = [], 0.0, 0.0
    count = 0
    loader = engine.make_loader(data, split, batch_size, shuffle=False)
    try:
        for i, (x, y) in enumerate(loader.iter_from(0, 0)):
            if max_batches is not None and i >= max_batches:
                break
            o = model.hidden_forward(x, False).astype(numpy.float64) @ W.T.astype(numpy.float64)
            if bias is not None:
                o += bias
            q = (o * o).sum(axis=1)
            oc2 = o[xp.arange(o.shape[0]), y] ** 2
            logp += float(xp.log((oc2 + eps) / (q + D * eps)).sum())
            logp_no_floor += float(xp.log(xp.maximum(oc2 / q, 1e-300)).sum())
            qs.append(be.to_host(q))
            count += int(y.shape[0])
    finally:
        loader.close()
    q = numpy.concatenate(qs)
    share = D * eps / (q + D * eps)
    quant = lambda a: [float(v) for v in numpy.quantile(a, [0.05, 0.5, 0.95])]
    return {"split": split, "tokens": count, "eps": eps, "D": D, "q_quantiles": quant(q),
            "floor_share_quantiles": quant(share), "floor_share_mean": float(share.mean()),
            "perplexity": math.exp(-logp / count),
            "perplexity_without_floor": math.exp(-logp_no_floor / count)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from engine import Engine
    engine = Engine.from_checkpoint(args.checkpoint, device=args.device, verbose=False)
    res = floor_mass(engine, args.data, args.split)
    res["checkpoint"], res["command"] = args.checkpoint, "python tools/spherical_floor_mass.py " + \
        " ".join(argv if argv is not None else sys.argv[1:])
    print(f"[floor] {args.split}: {res['tokens']:,} tokens, eps {res['eps']:g}, D {res['D']:,}: "
          f"q median {res['q_quantiles'][1]:.4g} (5-95%: {res['q_quantiles'][0]:.4g}-"
          f"{res['q_quantiles'][2]:.4g}); floor share median {100 * res['floor_share_quantiles'][1]:.3g}% "
          f"(mean {100 * res['floor_share_mean']:.3g}%); perplexity {res['perplexity']:.2f}, "
          f"without the floor {res['perplexity_without_floor']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
