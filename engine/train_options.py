"""The training options, declared once (engine/options.py): those of `Engine(...)`, those of
`Engine.train(...)`, and the few `engine train` has of its own (the data, the model and
optimizer kinds, the final test evaluation, the JSON line).

`resumable`: may change when `engine train --resume` continues a run (the number of epochs,
the batch size at an epoch boundary, checkpoints, device, progress display ...); the seed and
dtype may not. tests/test_options.py checks ENGINE_OPTIONS against Engine.__init__ and
TRAIN_OPTIONS against Engine.train.
"""
from __future__ import annotations

from .options import Option, at_least, parse_int, parse_str

#: Engine(model, optimizer, device, seed, dtype)
ENGINE_OPTIONS = (
    Option("device", parse_str, "auto", "where to train: auto (the GPU when CuPy sees one), cpu "
           "or gpu", choices=("auto", "cpu", "gpu"), resumable=True),
    Option("dtype", parse_str, "float32", "parameter and activation precision",
           choices=("float32", "float64")),
    Option("seed", parse_int, 0, "seed of the initial weights, the shuffling and dropout",
           check=at_least(0)),
)
ENGINE_NOT_OPTIONS = {"model": "built from the data and the model options",
                      "optimizer": "built from --optimizer and its options",
                      "verbose": "the Python API's switch for printing",
                      "comm": "from --distributed and the launcher (mpiexec -n N)"}

#: Engine.train(data, epochs, batch_size, ...)
TRAIN_OPTIONS = (
    Option("epochs", parse_int, 1, "train until this many epochs are complete (a resumed run "
           "counts those done)", check=at_least(1), resumable=True, cli_default=2),
    Option("batch_size", parse_int, None, "examples per step (a resumed run keeps the "
           "checkpoint's unless given; it may change only at an epoch boundary)",
           check=at_least(1), resumable=True, cli_default=256),
    Option("max_steps_per_epoch", parse_int, None, "cut every epoch to this many steps (quick "
           "runs)", check=at_least(1), resumable=True),
    Option("checkpoint_every", parse_int, None, "also checkpoint every N steps (always at the "
           "end of an epoch)", check=at_least(1), resumable=True),
    Option("sync_every", parse_int, None, "check the loss (a host synchronisation) every N steps "
           "(default: every step on the CPU, 20 on the GPU)", check=at_least(1), resumable=True),
    Option("eval_batch_size", parse_int, None, "batch size of the validation passes (default: "
           "--batch-size)", check=at_least(1), resumable=True),
    Option("progress", default=True, switch=True, help="a progress bar per epoch",
           resumable=True),
    Option("run_dir", parse_str, None, "run folder (default runs/<timestamp>; a resumed run: "
           "the checkpoint's folder)", resumable=True, metavar="DIR"),
)
TRAIN_NOT_OPTIONS = {"train": "--data (its train split)",
                     "valid": "--data's valid split, when it has one",
                     "max_steps": "the Python API's stop after N steps in total",
                     "run_config": "the command line's own entries for config.toml"}

#: `engine train`'s own options
RUN_OPTIONS = (
    Option("data", parse_str, None, "the dataset (engine prepare ...): a language-model corpus or "
           "a classification file (default: the shipped State of the Union corpus)",
           resumable=True, metavar="FILE"),
    Option("model", parse_str, None, "the model: mlp-lm (a corpus as --data) or mlp-classifier "
           "(a classification file); default: the one the data takes",
           choices=("mlp-lm", "mlp-classifier")),
    Option("optimizer", parse_str, "adam", "the optimizer (its options: the optimizer group)",
           choices=("adam", "sgd")),
    Option("resume", parse_str, None, "continue from this checkpoint (model and optimizer from "
           "it; only resumable options may change)", metavar="CHECKPOINT"),
    Option("test", default=True, switch=True, help="evaluate the test split at the end",
           resumable=True),
    Option("json", default=False, switch=True, help="end with one JSON line of the final "
           "metrics", resumable=True),
    Option("distributed", parse_str, "auto", "how the ranks of `mpiexec -n N engine train` "
           "work together: auto (MPI when launched with several ranks, NCCL between GPUs; one "
           "process otherwise), single (ignore the launcher), mpi, nccl (one GPU per rank)",
           choices=("auto", "single", "mpi", "nccl"), resumable=True),
)
#: given only on the command line, never in a config file
COMMAND_LINE_ONLY = (
    Option("config", parse_str, None, "a TOML file of options (keys: the flags without their "
           "dashes); flags given here override it; runs/<run>/config.toml repeats a run",
           metavar="FILE"),
)

__all__ = ["ENGINE_OPTIONS", "TRAIN_OPTIONS", "RUN_OPTIONS", "COMMAND_LINE_ONLY",
           "ENGINE_NOT_OPTIONS", "TRAIN_NOT_OPTIONS"]
