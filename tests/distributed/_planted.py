"""`engine train` with a failure planted on one rank: `mpiexec -n N python _planted.py HOW RANK
STEP -- ARGS...` runs `engine ARGS...` (engine.cli.main) on every rank, and on rank RANK, when
it is about to take step STEP + 1, either raises RuntimeError (HOW = raise) or kills its own
process with SIGKILL (HOW = kill). The other ranks are then waiting in a collective: the job
must still end within seconds, with the failing rank's error on stderr. HOW = full-disk: on
rank RANK the first checkpoint saved after step STEP fails midway through the rank's shard
with OSError(ENOSPC), as a full disk would.

The repository root goes first on sys.path, so the ranks import this checkout's `engine`.
"""
from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from engine import cli  # noqa: E402
from engine.engine import Engine  # noqa: E402


def plant(how, rank, step):
    if how == "full-disk":
        return plant_full_disk(rank, step)
    original = Engine.train_step

    def train_step(self, x, y, check_finite=True):
        if self.comm.rank == rank and self.step == step:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"planted failure on rank {rank} at step {step + 1}")
        return original(self, x, y, check_finite)

    Engine.train_step = train_step


def plant_full_disk(rank, step):
    import errno

    import h5py
    saving, original_save, original_create = [False], Engine.save_checkpoint, h5py.Group.create_dataset

    def save_checkpoint(self, path):
        saving[0] = self.comm.rank == rank and self.step > step
        return original_save(self, path)

    def create_dataset(self, name, *args, **kwargs):
        if saving[0] and self.name == "/model":          # midway: the state is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original_create(self, name, *args, **kwargs)

    Engine.save_checkpoint, h5py.Group.create_dataset = save_checkpoint, create_dataset


if __name__ == "__main__":
    how, rank, step, sep, *args = sys.argv[1:]
    assert sep == "--" and how in ("raise", "kill", "full-disk"), sys.argv
    plant(how, int(rank), int(step))
    sys.exit(cli.main(args))
