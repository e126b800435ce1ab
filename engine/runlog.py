"""The run folder: a log file, the metrics JSON and the loss/perplexity plot of one training run.

runs/<name>/
  config.toml      every option of the run with its value (engine/config.py): `engine train
                   --config runs/<name>/config.toml` repeats the run
  log.txt          one line per epoch (also printed)
  metrics.json     {"config": ..., "history": [per-epoch dicts], "steps": [[step, loss], ...],
                   "test": the test split's metrics (engine train, after training)}
  checkpoint.h5    the last good checkpoint (written by the engine, atomically)
  best.h5          the checkpoint of the epoch with the lowest validation loss (with `valid`)
  plot.png         training loss per logged step and per epoch, validation perplexity per epoch
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from .filemode import follow_umask
from .reporting import json_safe


def default_run_dir(root="runs"):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(root, stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(root, f"{stamp}-{n}")
    return path


def write_json_atomic(path, obj):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    follow_umask(fd)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(json_safe(obj), fh, indent=1, default=float)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class RunFolderError(OSError):
    """The run folder cannot be created or written: one line naming the folder at fault."""


def make_run_folder(run_dir):
    """Create `run_dir` (and its missing parents) and check that a file can be created in it.
    Returns the folders created, innermost first (empty when `run_dir` existed).
    RunFolderError naming the folder that is not writable; nothing is left behind."""
    missing, folder = [], os.path.abspath(run_dir)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise RunFolderError(f"cannot create the run folder {run_dir}: {folder} is a file")
    created = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:      # made meanwhile (another rank, another run)
                continue
            except OSError as exc:
                raise RunFolderError(f"cannot create the run folder {run_dir}: "
                                     f"{os.path.dirname(path)} is not writable "
                                     f"({exc.strerror or exc}); choose one with --run-dir") from None
            created.insert(0, path)
        if not os.path.isdir(run_dir):
            raise RunFolderError(f"the run folder {run_dir} is not a folder")
        try:                             # an unnamed file where the platform has them
            with tempfile.TemporaryFile(dir=run_dir):
                pass
        except OSError as exc:
            raise RunFolderError(f"the run folder {run_dir} is not writable "
                                 f"({exc.strerror or exc}); choose another with --run-dir") from None
    except BaseException:
        _remove_empty(created)
        raise
    return created


def _remove_empty(folders):
    """Remove the folders (innermost first) while they are empty; never a folder with content."""
    for path in folders:
        try:
            os.rmdir(path)
        except OSError:
            return


class RunLog:
    def __init__(self, run_dir, config=None, quiet=False):
        self.run_dir = run_dir
        self.quiet = quiet
        self.config = config or {}
        self.created = make_run_folder(run_dir)     # folders this run made (for discard)
        self.log_path = os.path.join(run_dir, "log.txt")
        self.metrics_path = os.path.join(run_dir, "metrics.json")
        self.plot_path = os.path.join(run_dir, "plot.png")
        self.checkpoint_path = os.path.join(run_dir, "checkpoint.h5")
        self.best_path = os.path.join(run_dir, "best.h5")
        self.config_path = os.path.join(run_dir, "config.toml")

    def discard(self):
        """Undo a run that failed before its first step: when this run created the folder,
        remove the files it wrote there (config.toml, log.txt) and then the folder if it is
        empty. A folder that existed before, or holds anything else, is left as it is."""
        if not self.created:
            return
        for path in (self.config_path, self.log_path, self.metrics_path, self.plot_path):
            try:
                os.remove(path)
            except OSError:
                pass
        _remove_empty(self.created)

    def write_config(self):
        """config.toml: the run's resolved options (a dict of tables, see engine/config.py)."""
        from .config import CONFIG_HEADER, write_config
        write_config(self.config_path, self.config,
                     header=CONFIG_HEADER.format(path=self.config_path))
        return self.config_path

    def line(self, text):
        if not self.quiet:
            print(text, flush=True)
        with open(self.log_path, "a") as fh:
            fh.write(text + "\n")

    def write_metrics(self, history, steps):
        write_json_atomic(self.metrics_path, {"config": self.config, "history": history, "steps": steps})

    def add_metrics(self, key, value):
        """Add one entry to metrics.json (the test split's results, after training)."""
        try:
            with open(self.metrics_path) as fh:
                metrics = json.load(fh)
        except FileNotFoundError:
            metrics = {"config": self.config}
        metrics[key] = value
        write_json_atomic(self.metrics_path, metrics)

    def plot(self, history, steps):
        """Loss per logged step and per epoch, and validation perplexity; skipped without matplotlib."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception:
            return None
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        ax = axes[0]
        if steps:
            ax.plot([s for s, _ in steps], [v for _, v in steps], lw=0.8, alpha=0.6, label="train (logged steps)")
        ends = [h["step"] for h in history]
        ax.plot(ends, [h["train_loss"] for h in history], "o-", label="train (epoch mean)")
        if history and "valid_loss" in history[0]:
            ax.plot(ends, [h["valid_loss"] for h in history], "s-", label="valid")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax = axes[1]
        epochs = [h["epoch"] for h in history]
        if history and "train_perplexity" in history[0]:
            ax.plot(epochs, [h["train_perplexity"] for h in history], "o-", label="train")
        if history and "valid_perplexity" in history[0]:
            ax.plot(epochs, [h["valid_perplexity"] for h in history], "s-", label="valid")
        ax.set_xlabel("epoch")
        ax.set_ylabel("perplexity")
        if ax.lines:
            ax.set_yscale("log")
            ax.legend()
        else:
            ax.set_title("no perplexity: the output defines no likelihood")
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)
        return self.plot_path
