#!/usr/bin/env bash
# `pip install .` with no extra, in a fresh virtual environment, then one short run of each model
# kind through that environment's `engine` command, on tiny data made here:
#   language model   a small English text -> engine prepare text -> train, evaluate, predict
#   classifier       MNIST-format IDX files -> engine prepare mnist -> train (meProp), evaluate
#   XMC with FFI     Extreme Classification Repository text files -> engine prepare xmc ->
#                    train --weights ffi, evaluate
# A module the engine imports at run time but setup.cfg does not install fails here, before
# the test suite (which installs the [test] extra) could hide it.
# Usage: bash .ci/smoke_no_extras.sh   (from anywhere; KEEP=1 keeps the work folder)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; else echo "[smoke] work folder $WORK"; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
export ENGINE_CACHE="$WORK/cache"
SECONDS=0

python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
ENGINE="$WORK/venv/bin/engine"
"$PY" -m pip install -q "$REPO"
echo "[smoke] pip install . in a fresh venv: ${SECONDS} s"
SECONDS=0

cd "$WORK"                  # not the checkout: only the installed package can be imported
# The tiny inputs, written with the standard library only (the engine's own writers are not used).
"$PY" - <<'EOF'
import gzip, random, struct

rng = random.Random(0)
words = ("the president said that the nation and the people of the united states will work "
         "for peace and for the economy of the world in the new year").split()
with open("book.txt", "w") as f:
    for _ in range(400):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + "\n")

def idx(path, dims, data, code):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims))
        f.write(bytes(data))

import os
os.makedirs("idx", exist_ok=True)
for split, n in (("train", 120), ("t10k", 40)):
    labels = [rng.randrange(10) for _ in range(n)]
    pixels = [255 if 2 * c <= row < 2 * c + 3 else rng.randrange(60)
              for c in labels for row in range(28) for _ in range(28)]
    idx(f"idx/{split}-images-idx3-ubyte.gz", (n, 28, 28), pixels, 0x08)
    idx(f"idx/{split}-labels-idx1-ubyte.gz", (n,), labels, 0x08)

def xc(path, n, features=50, labels=20):
    with open(path, "w") as f:
        f.write(f"{n} {features} {labels}\n")
        for _ in range(n):
            ys = sorted(rng.sample(range(labels), 2))
            xs = sorted(rng.sample(range(features), 6))
            f.write(",".join(map(str, ys)) + " "
                    + " ".join(f"{j}:{rng.random():.4f}" for j in xs) + "\n")

xc("xmc_train.txt", 200)
xc("xmc_test.txt", 50)
EOF

run() { echo "[smoke] engine $*"; "$ENGINE" "$@"; }
SHORT=(--epochs 1 --max-steps-per-epoch 3 --batch-size 16 --device cpu --no-progress --json)

run prepare text book.txt --output lm.h5
run train --data lm.h5 --run-dir run-lm "${SHORT[@]}"
run evaluate run-lm/checkpoint.h5 --data lm.h5 --split test --device cpu --json
run predict run-lm/checkpoint.h5 --data lm.h5 the president --top 3 --device cpu

run prepare mnist idx --valid-size 20 --output mnist.h5
run train --data mnist.h5 --run-dir run-mnist --hidden 32 --meprop-k 8 "${SHORT[@]}"
run evaluate run-mnist/checkpoint.h5 --data mnist.h5 --device cpu --json

run prepare xmc xmc_train.txt xmc_test.txt --output xmc.h5
run train --data xmc.h5 --run-dir run-xmc --hidden --intermediate 16 --weights ffi --fan-in 8 \
    "${SHORT[@]}"
run evaluate run-xmc/checkpoint.h5 --data xmc.h5 --device cpu --json

echo "[smoke] every model kind ran from the plain install in ${SECONDS} s"
