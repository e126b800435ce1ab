"""An independent check of meProp's MNIST accuracy: the same MLP and per-example (or unified)
top-k back-propagation written with PyTorch autograd, sharing no code with the engine.

784-500-500-10 ReLU, Adam lr 1e-3, cross-entropy, top-k applied to the output gradient of both
hidden linear layers (bias gradient full), as in the paper and its released code. The engine's
`tools/repro_meprop.py` and this script should agree on whether a setting trains; they do not
share random streams, so accuracies agree in level, not digit for digit.

    python tools/meprop_torch_reference.py --data mnist.h5 --k 20 --batch-size 100 --epochs 2
    python tools/meprop_torch_reference.py --data mnist.h5 --k 0        # plain back-propagation
"""
from __future__ import annotations

import argparse
import json
import sys

import _path  # noqa: F401  (this checkout's engine first on sys.path)


def build(torch, k, mode):
    class TopKLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            ctx.save_for_backward(x, w)
            return x @ w.t() + b

        @staticmethod
        def backward(ctx, g):                      # g: (B, O) gradient of the layer's output
            x, w = ctx.saved_tensors
            gb = g.sum(0)                          # the bias keeps the full gradient
            if 0 < k < g.shape[1]:
                if mode == "unified":
                    idx = g.abs().sum(0).topk(k).indices
                    mask = torch.zeros_like(g)
                    mask[:, idx] = 1.0
                else:
                    idx = g.abs().topk(k, dim=1).indices
                    mask = torch.zeros_like(g).scatter_(1, idx, 1.0)
                g = g * mask
            return g @ w, g.t() @ x, gb

    class Layer(torch.nn.Module):
        def __init__(self, i, o, sparse):
            super().__init__()
            self.lin, self.sparse = torch.nn.Linear(i, o), sparse

        def forward(self, x):
            if self.sparse:
                return TopKLinear.apply(x, self.lin.weight, self.lin.bias)
            return self.lin(x)

    return torch.nn.Sequential(Layer(784, 500, True), torch.nn.ReLU(), Layer(500, 500, True),
                               torch.nn.ReLU(), Layer(500, 10, False))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="MNIST HDF5 from `engine prepare mnist`")
    p.add_argument("--k", type=int, default=20, help="0: plain back-propagation")
    p.add_argument("--mode", choices=("per-example", "unified"), default="per-example")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        raise SystemExit("meprop_torch_reference: PyTorch is not installed") from None
    from engine.data.classification import open_classification
    torch.manual_seed(args.seed)
    with open_classification(args.data) as data:
        xtr, ytr = (torch.from_numpy(a) for a in data.read("train"))
        xte, yte = (torch.from_numpy(a) for a in data.read("test"))
    net = build(torch, args.k, args.mode)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rows = []
    for epoch in range(args.epochs):
        perm = torch.randperm(xtr.shape[0])
        steps = range(0, xtr.shape[0], args.batch_size)
        if args.max_steps_per_epoch:
            steps = list(steps)[:args.max_steps_per_epoch]
        for i in steps:
            j = perm[i:i + args.batch_size]
            loss = torch.nn.functional.cross_entropy(net(xtr[j]), ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float((net(xte).argmax(1) == yte).float().mean())
        rows.append({"k": args.k, "mode": args.mode, "batch": args.batch_size,
                     "epoch": epoch + 1, "test_accuracy": acc})
        print(f"[torch-meprop] k={args.k} {args.mode} batch {args.batch_size} epoch {epoch + 1}: "
              f"test accuracy {acc:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
