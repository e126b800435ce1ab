"""Synthetic extreme multi-label data in the Extreme Classification Repository text format.

For measuring speed and memory at the shapes of the large benchmarks that cannot be downloaded
here (Amazon-670K: 490,449 train / 153,025 test points, 135,909 features, 670,091 labels, about
5.45 labels and 75 non-zero features per point) and for learning tests that need known structure.

Model (all draws from numpy.random.default_rng(seed); dimension letters N points, F features,
L labels, P prototype features per label):
- label frequencies follow a power law: label of popularity rank r is drawn with probability
  proportional to (r + 1)^-label_exponent (the ranks are a random permutation of the label ids,
  so frequent labels are not the small ids);
- every label l has P prototype features proto[l], drawn uniformly over the F features;
- a point draws 1 + Poisson(labels_per_point - 1) labels (without repeats), then for each of its
  labels keeps each prototype feature with probability `signal`, and adds noise features from the
  feature power law until it has about `features_per_point` features;
- values are positive (uniform 0.5-1.5), each point's vector scaled to unit L2 norm (tf-idf-like).
So the labels are learnable from the features (a label's prototype features predict it), and the
label-frequency tail is long, as in real XMC data.

`write_synthetic_xmc(train_path, test_path, ...)` writes the two text files (gzip when a path ends
in .gz), streaming: points are generated and written in blocks, nothing of size N x F or N x L.
"""
from __future__ import annotations

import gzip
import os
from typing import Dict

import numpy as np

#: Amazon-670K's published shape (the Extreme Classification Repository's statistics table),
#: with a label exponent for which a simulated draw of the training labels gives the head label
#: about 1,400 points, a median of 3 points per label and 8% of the labels no training point
#: (exponent 0.9 would leave 36% of the labels without one).
AMAZON_670K = dict(num_train=490_449, num_test=153_025, num_features=135_909,
                   num_labels=670_091, labels_per_point=5.45, features_per_point=75.7,
                   label_exponent=0.5)


def _power_law(rng, n, exponent):
    """Probabilities over n ids, power-law in a random rank order."""
    p = (np.arange(n, dtype=np.float64) + 1.0) ** -float(exponent)
    p /= p.sum()
    return p[rng.permutation(n)]


def _open_out(path):
    path = os.fspath(path)
    if path.endswith(".gz"):
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=3)
    return open(path, "w", encoding="utf-8")


class SyntheticXMC:
    """The generative model above; `points(rng, n)` yields (labels, feature ids, values) rows."""

    def __init__(self, num_features, num_labels, labels_per_point=5.0, features_per_point=40.0,
                 prototype_size=8, signal=0.6, label_exponent=0.9, feature_exponent=0.8, seed=0):
        if num_features < 1 or num_labels < 1:
            raise ValueError(f"need num_features >= 1 and num_labels >= 1, got {num_features}, "
                             f"{num_labels}")
        if labels_per_point < 1 or features_per_point < 1:
            raise ValueError("labels_per_point and features_per_point must be >= 1")
        self.F, self.L = int(num_features), int(num_labels)
        self.labels_per_point = float(labels_per_point)
        self.features_per_point = float(features_per_point)
        self.signal = float(signal)
        rng = np.random.default_rng([seed, 0])
        self.label_p = _power_law(rng, self.L, label_exponent)
        self.feature_p = _power_law(rng, self.F, feature_exponent)
        self.feature_cdf = np.cumsum(self.feature_p)
        self.label_cdf = np.cumsum(self.label_p)
        P = int(min(prototype_size, self.F))
        self.proto = np.empty((self.L, P), dtype=np.int64)
        for start in range(0, self.L, 1 << 16):         # in blocks: bounded temporaries
            stop = min(start + (1 << 16), self.L)
            draws = rng.integers(0, self.F, size=(stop - start, P))
            self.proto[start:stop] = draws
        self.seed = seed

    @staticmethod
    def _draw(rng, cdf, size):
        return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"),
                          cdf.shape[0] - 1)

    def points(self, rng, n, block=4096):
        """Yield n points as (labels (sorted), feature ids (sorted), values) host arrays."""
        for start in range(0, n, block):
            m = min(block, n - start)
            nlab = 1 + rng.poisson(self.labels_per_point - 1.0, size=m)
            nlab = np.minimum(nlab, self.L)
            labs = self._draw(rng, self.label_cdf, int(nlab.sum()))
            nnoise = np.maximum(0, np.round(self.features_per_point - self.signal * nlab
                                            * self.proto.shape[1]).astype(np.int64))
            noise = self._draw(rng, self.feature_cdf, int(nnoise.sum()))
            keep = rng.random((labs.shape[0], self.proto.shape[1])) < self.signal
            lo = nlo = 0
            for i in range(m):
                hi = lo + int(nlab[i])
                row_labels = np.unique(labs[lo:hi])
                protos = self.proto[labs[lo:hi]][keep[lo:hi]]
                feats = np.unique(np.concatenate([protos, noise[nlo:nlo + nnoise[i]]]))
                nlo += int(nnoise[i])
                lo = hi
                vals = rng.uniform(0.5, 1.5, size=feats.shape[0])
                vals /= max(np.sqrt((vals * vals).sum()), 1e-12)
                yield row_labels, feats, vals


def write_points(model, rng, path, n):
    with _open_out(path) as out:
        out.write(f"{n} {model.F} {model.L}\n")
        lines = []
        for labels, feats, vals in model.points(rng, n):
            lab = ",".join(map(str, labels.tolist()))
            pairs = " ".join(f"{f}:{v:.5f}" for f, v in zip(feats.tolist(), vals.tolist()))
            lines.append(f"{lab} {pairs}\n" if lab else f" {pairs}\n")
            if len(lines) >= 4096:
                out.write("".join(lines))
                lines = []
        out.write("".join(lines))


def write_synthetic_xmc(train_path, test_path, num_train, num_test, num_features, num_labels,
                        labels_per_point=5.0, features_per_point=40.0, prototype_size=8,
                        signal=0.6, label_exponent=0.9, feature_exponent=0.8,
                        seed=0) -> Dict[str, object]:
    """Write train and test XMC text files from one SyntheticXMC model; returns a summary."""
    if num_train < 1 or num_test < 1:
        raise ValueError(f"need at least one train and one test point, got {num_train}, {num_test}")
    model = SyntheticXMC(num_features, num_labels, labels_per_point, features_per_point,
                         prototype_size, signal, label_exponent, feature_exponent, seed)
    write_points(model, np.random.default_rng([seed, 1]), train_path, int(num_train))
    write_points(model, np.random.default_rng([seed, 2]), test_path, int(num_test))
    return {"train": os.fspath(train_path), "test": os.fspath(test_path),
            "num_train": int(num_train), "num_test": int(num_test),
            "num_features": int(num_features), "num_labels": int(num_labels)}
