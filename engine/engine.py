"""Engine: train / evaluate / predict a model with an optimizer on one backend, with checkpoints.

    engine = Engine(MLPLanguageModel(vocab_size, ...), Adam(lr=1e-3), device="auto", seed=0)
    history = engine.train("corpus.h5", epochs=3, batch_size=256, valid="corpus.h5")
    engine.evaluate("corpus.h5", split="test")     # {"loss", "perplexity", "examples", ...}

Data: a dataset path or its description (`engine.data.registry.describe(path)`, a DatasetInfo:
the engine never opens the file again to decide its kind; train uses the "train" split, `valid`
the "valid" split), an opened LM corpus, an `(x, y)` pair of arrays, or a loader
(`engine.data.arrays.Loader`, or any object with `iter_from(epoch, start_batch)` and `__len__`).

Run folder: log.txt, metrics.json, plot.png, checkpoint.h5, best.h5, and config.toml, every
option of the run with its value (engine/config.py): `engine train --config` repeats the run.

Determinism: parameters are drawn from `seed` on the host; epoch `e` is shuffled with
(seed, e); dropout masks are keyed by (seed, step). A checkpoint stores the model, the optimizer
and the position (epoch, batch in epoch, step, running sums), so a resumed run continues exactly
as the uninterrupted run would (bit-identical on the CPU).

Several processes or GPUs: `Engine(..., comm=...)` with a communicator or a kind ("auto"
detects `mpiexec -n N`; engine/distributed): each rank reads its share of every global
minibatch, the output layer's labels are split over the ranks, rank 0 alone prints and writes
the run folder's files, every rank writes its checkpoint shard (engine/distributed/run.py,
checkpoints.py). The result equals the single-process run's up to rounding (float64: 1e-10).

Divergence: at every sync point (the run's first step, then every step on the CPU, every
`sync_every` steps on the GPU) the loss is checked before the update; a NaN or inf, or a loss far
above the run's first one (engine/divergence.py), stops training with `TrainingDiverged`, and
the last checkpoint written (before the bad step) is kept.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy

from .backend import get_backend
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data.arrays import ArrayLoader, Loader, epoch_batches
from .data.hdf5_schema import LMCorpus
from .data.info import CLASSIFICATION, LM_CORPUS, DatasetInfo
from .data.registry import as_info
from .data.registry import make_loader as make_dataset_loader
from .distributed.comm import SingleProcess
from .divergence import DEFAULT_FACTOR, loss_problem
from .models import build_model
from .reporting import perplexity, show_perplexity
from .runlog import RunLog, default_run_dir
from .stale_files import remove_stale_temps


def metric_keys(record, prefix):
    """Names of the extra metrics (accuracy, p@1, ...) under `prefix` in a history record."""
    return [k[len(prefix):] for k in record
            if k.startswith(prefix) and k[len(prefix):] not in ("loss", "perplexity")]


#: Engine.train's batch size when neither the call nor a checkpoint gives one
DEFAULT_BATCH_SIZE = 128


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or rose far above the run's first loss."""


def _close_owned(loader, source):
    """Close a loader the engine made itself (it holds the corpus file open); leave the caller's."""
    if loader is not None and loader is not source:
        loader.close()


def _data_path(data):
    """The file behind a data source, for the run's config.toml (None for arrays, loaders)."""
    if isinstance(data, DatasetInfo):
        return data.path
    if isinstance(data, (str, os.PathLike)):
        return os.path.abspath(os.fspath(data))
    if isinstance(data, LMCorpus):
        return os.path.abspath(data.path)
    return None


class Engine:
    def __init__(self, model, optimizer, device="auto", seed=0, dtype="float32", verbose=True,
                 comm=None):
        from .options import check_arguments
        from .train_options import ENGINE_OPTIONS
        check_arguments([o for o in ENGINE_OPTIONS if o.name == "seed"], {"seed": seed}, "Engine")
        if comm is None:
            self.backend = get_backend(device, verbose=verbose)
            self.comm, self._part, self._distributed = SingleProcess(), None, None
        else:                       # engine/distributed: the communicator and this rank's device
            from .distributed.run import attach
            self.backend, self.comm = attach(comm, device, verbose)
            self._part, self._distributed = None, None
        self.device = self.backend.device
        self.device_asked = device
        self.seed, self.dtype, self.verbose = int(seed), numpy.dtype(dtype), verbose
        if self.dtype not in (numpy.float32, numpy.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        if self.comm.size > 1:      # the same model on every rank; its output's labels split
            from .distributed.run import prepare_model
            model = prepare_model(self.comm, model, optimizer, self.seed, self.dtype)
            self._part = (self.comm.rank, self.comm.size)
        self.model = model.bind(self.backend, self.seed, self.dtype)
        self.optimizer = optimizer
        optimizer.bind(self.backend)
        if self.comm.size > 1:
            from .distributed.step import DistributedStep
            self._distributed = DistributedStep(self.model, optimizer, self.comm, self.seed)
        # training position: everything a resumed run needs to continue exactly
        self.step = 0            # optimizer steps taken
        self.epoch = 0           # epochs completed
        self.batch_in_epoch = 0  # batches of the current epoch already trained
        self.epoch_loss_sum = 0.0
        self.epoch_examples = 0
        self.epoch_seconds = 0.0
        self.history = []
        self.step_log = []       # [step, mean loss since the previous point], for the plot
        self._curve_sum, self._curve_n = 0.0, 0
        self._last_checked_step = 0
        #: the explosion rule's factor (engine/divergence.py); None checks finiteness only
        self.divergence_factor = DEFAULT_FACTOR
        self.data_vocab_hash = None
        self.batch_size = None
        self.run_dir = None

    # ------------------------------------------------------------------ data
    def make_loader(self, data, split, batch_size, shuffle):
        """Any supported data source -> a Loader (engine/data/arrays.py)."""
        if isinstance(data, Loader):
            if self._part is not None:        # global minibatches -> this rank's rows
                from .distributed.run import rank_share
                return rank_share(data, self.comm)
            return data
        if isinstance(data, tuple) and len(data) == 2:
            self.model.validate_data(data[0], data[1], name=f"{split} data")
            return ArrayLoader(data[0], data[1], batch_size, shuffle=shuffle, seed=self.seed,
                               backend=self.backend, part=self._part)
        if isinstance(data, LMCorpus):                 # an opened corpus: the caller's file
            self._check_kind(LM_CORPUS, data.path, "engine-lm-corpus")
            self.model.check_dataset(data, data.path)            # its vocab_size
            self._check_vocabulary(data.path, data.vocab_hash())
            from .data.loader import NGramLoader
            return NGramLoader(data, split, context=self.model.context, batch_size=batch_size,
                               shuffle=shuffle, seed=self.seed, backend=self.backend,
                               part=self._part)
        if isinstance(data, (str, os.PathLike, DatasetInfo)):
            info = as_info(data)
            self.check_data(info)
            return make_dataset_loader(info, split, batch_size, shuffle=shuffle, seed=self.seed,
                                       backend=self.backend,
                                       context=(self.model.context if info.kind == LM_CORPUS
                                                else None), part=self._part)
        raise TypeError(f"cannot make a loader from {type(data).__name__}: give a dataset path, its "
                        f"DatasetInfo, an (x, y) pair or an engine.data.arrays.Loader")

    def check_data(self, info: DatasetInfo):
        """The dataset (its description) must be of the model's kind and fit its sizes, and a
        corpus must have the vocabulary the model was trained with; ValueError naming the file."""
        self._check_kind(info.kind, info.path, info.format)
        self.model.check_dataset(info, info.path)
        if info.kind == LM_CORPUS:
            self._check_vocabulary(info.path, info.vocab_hash)

    def _check_kind(self, kind, path, fmt):
        if self.model.data_kind == kind:
            return
        if kind == CLASSIFICATION:
            raise ValueError(f"{path}: a {fmt} classification file, but the model is a "
                             f"{self.model.kind} (it needs a language-model corpus)")
        raise ValueError(f"{path}: a language-model corpus, but the model is a {self.model.kind} "
                         f"(give it its classification file)")

    def _check_vocabulary(self, name, vocab_hash):
        """The corpus's vocabulary (its hash) must be the one the model was trained with."""
        if self.data_vocab_hash is not None and vocab_hash != self.data_vocab_hash:
            raise ValueError(f"{name}: its vocabulary differs from the one this model was "
                             f"trained with (vocabulary hash {vocab_hash} vs {self.data_vocab_hash})")
        self.data_vocab_hash = vocab_hash

    # -------------------------------------------------------------- training
    def train_step(self, x, y, check_finite=True):
        """One forward, backward and update. Returns the loss (0-d device array)."""
        if self._distributed is not None:
            return self._distributed_step(x, y, check_finite)
        self.model.set_random_key(self.seed, self.step)
        loss = self.model.forward(x, y, train=True)
        if check_finite:
            self.check_loss(float(loss), f"epoch {self.epoch + 1}, batch "
                                         f"{self.batch_in_epoch + 1} (step {self.step + 1})")
        for layer in self.model.self_updating_layers():   # they may update inside backward
            layer.prepare_update(self.optimizer.current_lr(self.epoch))
        self.model.backward()
        items = [(key, layer.params[name], layer.grads.get(name))
                 for key, layer, name in self.model.param_items()]
        lr = self.optimizer.step(items, epoch=self.epoch)
        for layer in self.model.self_updating_layers():
            layer.apply_update(lr)
        for layer in self.model.layers:
            layer.zero_grads()
        self.step += 1
        self.model.after_step(self.step, self.optimizer)   # e.g. dynamic rewiring every N steps
        return loss

    def check_loss(self, value, where, note="the update was not applied"):
        """TrainingDiverged unless `value`, the loss at `where`, is finite and not far above the
        run's first loss (the first point of the loss curve)."""
        reference = self.step_log[0][1] if self.step_log else None
        problem = loss_problem(value, reference, self.divergence_factor)
        if problem:
            raise TrainingDiverged(f"{problem} at {where}; {note}")

    def _distributed_step(self, x, y, check_finite):
        """train_step over the ranks (engine/distributed/step.py): x, y are this rank's rows;
        the loss returned is the global minibatch's, the same on every rank."""
        loss = self._distributed.step(
            x, y, epoch=self.epoch, check_finite=check_finite, step=self.step, check=self.check_loss,
            where=f"epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1} (step {self.step + 1})")
        self.step += 1
        return loss

    def train(self, train, epochs=1, batch_size=None, valid=None, run_dir=None,
              checkpoint_every=None, max_steps_per_epoch=None, max_steps=None, sync_every=None,
              progress=True, eval_batch_size=None, run_config=None):
        """Train until `epochs` epochs are complete (counting any already done before a resume).

        Returns the history: one dict per epoch (train loss/perplexity, valid loss/perplexity,
        seconds, examples per second, learning rate). With `run_dir` (or "auto"), writes
        config.toml, log.txt, metrics.json, plot.png and checkpoint.h5 there. `max_steps` stops
        early (after a checkpoint) once that many steps in total have been taken, as an
        interruption would. `batch_size` None: the batch size this engine last trained with
        (a resumed run: its checkpoint's), else DEFAULT_BATCH_SIZE; a change is logged and is
        allowed only at an epoch boundary. `run_config`: more entries for config.toml's [training] table
        ({flag name: value}; the command line's test and json switches).
        """
        from .options import check_arguments
        from .train_options import TRAIN_OPTIONS
        check_arguments(TRAIN_OPTIONS, {"epochs": epochs, "batch_size": batch_size,
                                        "max_steps_per_epoch": max_steps_per_epoch,
                                        "checkpoint_every": checkpoint_every,
                                        "sync_every": sync_every, "eval_batch_size": eval_batch_size},
                        "Engine.train")
        if max_steps is not None and not max_steps >= 1:
            raise ValueError(f"Engine.train: max_steps must be >= 1, got {max_steps}")
        if batch_size is None:
            batch_size = self.batch_size or DEFAULT_BATCH_SIZE
        if run_dir == "auto":
            run_dir = default_run_dir()
        training = {"epochs": epochs, "batch_size": batch_size,
                    "max_steps_per_epoch": max_steps_per_epoch,
                    "checkpoint_every": checkpoint_every, "sync_every": sync_every,
                    "eval_batch_size": eval_batch_size, "progress": progress}
        if self.comm.size > 1:     # the same run on every rank (checked), in rank 0's folder
            from .config import resolved_run_config
            from .distributed.run import check_run
            run_dir = check_run(self.comm, resolved_run_config(self, _data_path(train), training,
                                                               run_config), train, valid, run_dir)
        self.run_dir = run_dir
        loader = self.make_loader(train, "train", batch_size, shuffle=True)
        valid_loader, log, first_step = None, None, self.step
        try:
            if valid is not None:
                valid_loader = self.make_loader(valid, "valid", eval_batch_size or batch_size,
                                                shuffle=False)
            if run_dir:
                from .config import resolved_run_config
                config = resolved_run_config(self, _data_path(train), training, run_config)
                if self.comm.is_root:
                    log = RunLog(run_dir, config=config, quiet=not self.verbose)
                    # before any collective call: no rank can be writing a checkpoint yet
                    removed = remove_stale_temps(run_dir)
                    if removed:
                        log.line(f"[engine] removed {len(removed)} temporary file(s) left by an "
                                 f"interrupted write: {', '.join(removed)}")
                else:              # ranks > 0 write their checkpoint shards, nothing else
                    from .distributed.run import RankLog
                    log = RankLog(run_dir)
                log.write_config()
                if self.comm.size > 1:
                    log.line(f"[engine] {self.comm.size} ranks ({type(self.comm).__name__}); "
                             f"output: {type(self.model.output).__name__}")
            return self._train_epochs(loader, valid_loader, log, epochs, batch_size, checkpoint_every,
                                      max_steps_per_epoch, max_steps, sync_every, progress)
        except BaseException:
            if isinstance(log, RunLog) and self.step == first_step:
                log.discard()      # failed before its first step: no empty run folder left
            raise
        finally:
            _close_owned(loader, train)
            _close_owned(valid_loader, valid)

    def _train_epochs(self, loader, valid_loader, log, epochs, batch_size, checkpoint_every,
                      max_steps_per_epoch, max_steps, sync_every, progress):
        run_dir = log.run_dir if log else None
        if self.batch_in_epoch and self.batch_size not in (None, batch_size):
            raise ValueError(f"resuming mid-epoch with batch_size {batch_size}, but the run was trained "
                             f"with batch_size {self.batch_size}: the remaining batches would differ")
        if log and self.batch_size not in (None, batch_size):
            log.line(f"[engine] batch size {self.batch_size} -> {batch_size} from epoch {self.epoch + 1}")
        self.batch_size = batch_size
        n_batches = len(loader)
        if max_steps_per_epoch:
            n_batches = min(n_batches, int(max_steps_per_epoch))
        if n_batches == 0:
            raise ValueError("training data yields no batch (empty dataset, or batch larger than the "
                             "data with drop_last)")
        self.optimizer.set_total_steps(int(epochs) * n_batches)   # for cosine schedules
        if sync_every is None:
            sync_every = self.backend.sync_every_default
        xp = self.backend.xp
        # the loss curve keeps about 200 points per epoch (means over the sync points between them)
        log_every = max(sync_every, n_batches // 200)
        if log:
            log.line(f"[engine] device {self.backend.device}, {self.model.num_parameters():,} parameters, "
                     f"{n_batches} batches of {batch_size} per epoch, run folder {run_dir}")

        while self.epoch < epochs:
            self._t0 = time.perf_counter()
            loss_sum = xp.zeros((), dtype=numpy.float64) + self.epoch_loss_sum
            bar = self._progress(progress and self.comm.is_root, n_batches, self.batch_in_epoch)
            batches = epoch_batches(loader, self.epoch, self.batch_in_epoch)
            loss = None                  # the last step's loss, checked again before a save
            try:
                for x, y in batches:
                    if self.batch_in_epoch >= n_batches:
                        break
                    # the first step is always checked: its loss is the divergence reference
                    sync = (self.step + 1) % sync_every == 0 or not self.step_log
                    loss = self.train_step(x, y, check_finite=sync)
                    rows = (int(y.shape[0]) if self._distributed is None     # every rank's rows
                            else self._distributed.global_rows)
                    loss_sum += loss.astype(numpy.float64) * rows
                    self.epoch_examples += rows
                    self.batch_in_epoch += 1
                    if sync:
                        value = float(loss)
                        self._last_checked_step = self.step
                        self._log_loss(value, log_every)
                        if bar is not None:
                            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
                    if bar is not None:
                        bar.update(1)
                    if log and checkpoint_every and self.step % checkpoint_every == 0:
                        self._snapshot(loss_sum, loss)
                        self.save_checkpoint(log.checkpoint_path)
                    if max_steps is not None and self.step >= max_steps:
                        break
                self._snapshot(loss_sum, loss)
            except TrainingDiverged as exc:
                kept = log.checkpoint_path if log and os.path.exists(log.checkpoint_path) else None
                msg = f"{exc}; " + (f"last good checkpoint kept at {kept}" if kept else "no checkpoint was written")
                if log:
                    log.line(f"[engine] stopped: {msg}")
                raise TrainingDiverged(msg) from None
            finally:
                if bar is not None:
                    bar.close()
                batches.close()
            if max_steps is not None and self.step >= max_steps and self.batch_in_epoch < n_batches:
                if log:
                    self.save_checkpoint(log.checkpoint_path)
                    log.line(f"[engine] stopped after {self.step} steps (max_steps); resume from "
                             f"{log.checkpoint_path}")
                return self.history
            self._finish_epoch(valid_loader, log)
        return self.history

    def _log_loss(self, value, log_every):
        """Add a sync point's loss to the curve: one [step, mean loss] point per log_every steps."""
        self._curve_sum += value
        self._curve_n += 1
        if self.step % log_every == 0 or self.step_log == []:
            self.step_log.append([self.step, self._curve_sum / self._curve_n])
            self._curve_sum, self._curve_n = 0.0, 0

    def _progress(self, progress, total, initial):
        if not progress:
            return None
        try:
            from tqdm import tqdm
        except Exception:
            return None
        # redirected output (a log file, CI) gets an update every 30 s, not a line per second
        try:
            interactive = sys.stderr.isatty()
        except (AttributeError, ValueError):      # a replaced or closed stderr
            interactive = False
        return tqdm(total=total, initial=initial, desc=f"epoch {self.epoch + 1}", unit="batch",
                    mininterval=1.0 if interactive else 30.0, leave=False, dynamic_ncols=True)

    def _snapshot(self, loss_sum, last_loss=None):
        """Bring the saved position up to date (running loss sum, seconds spent in this epoch).

        Every position that may be checkpointed passes here: a non-finite running sum means a
        loss between two sync points was NaN or inf, and `last_loss` (the last step's, not yet
        checked between sync points) must pass the divergence rule, else nothing is saved and
        training stops."""
        self.backend.synchronize()
        now = time.perf_counter()
        total = float(loss_sum)
        if not math.isfinite(total):
            raise TrainingDiverged(f"a loss became {total} between step {self._last_checked_step} "
                                   f"and step {self.step} (epoch {self.epoch + 1}; losses are checked every "
                                   f"sync_every steps)")
        if last_loss is not None and self._last_checked_step != self.step:
            self.check_loss(float(last_loss), f"step {self.step} (epoch {self.epoch + 1})",
                            note="found before saving; nothing was saved")
        self.epoch_loss_sum = total
        self.epoch_seconds += now - self._t0
        self._t0 = now

    def _finish_epoch(self, valid_loader, log):
        seconds = self.epoch_seconds
        train_loss = self.epoch_loss_sum / max(self.epoch_examples, 1)
        record = {"epoch": self.epoch + 1, "step": self.step, "train_loss": train_loss,
                  "seconds": seconds, "examples_per_second": self.epoch_examples / max(seconds, 1e-9),
                  "lr": self.optimizer.current_lr(self.epoch), "device": self.backend.device}
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"epoch {self.epoch + 1} mean training loss is {train_loss}")
        likelihood = self.model.output.has_likelihood and self.model.reports_perplexity
        if likelihood:
            record["train_perplexity"] = perplexity(train_loss)
        if valid_loader is not None:
            metrics = self.evaluate(valid_loader)
            for key, value in metrics.items():     # valid_loss, valid_perplexity, valid_p@1, ...
                if key not in ("examples", "seconds", "device"):
                    record[f"valid_{key}"] = value
            self.optimizer.observe(metrics["loss"])
        self.history.append(record)
        self.epoch += 1
        self.batch_in_epoch, self.epoch_loss_sum, self.epoch_examples, self.epoch_seconds = 0, 0.0, 0, 0.0
        if log:
            parts = [f"epoch {record['epoch']}", f"train loss {train_loss:.4f}"]
            if "train_perplexity" in record:
                parts.append(f"ppl {show_perplexity(record['train_perplexity'])}")
            if "valid_loss" in record:
                parts.append(f"valid loss {record['valid_loss']:.4f}")
            if "valid_perplexity" in record:
                parts.append(f"valid ppl {show_perplexity(record['valid_perplexity'])}")
            for key in metric_keys(record, "valid_"):
                parts.append(f"valid {key} {record['valid_' + key]:.4f}")
            parts.append(f"{seconds:.1f} s ({record['examples_per_second']:,.0f} ex/s)")
            log.line("[engine] " + ", ".join(parts))
            self.save_checkpoint(log.checkpoint_path)
            if "valid_loss" in record and record["valid_loss"] <= min(h["valid_loss"] for h in self.history):
                self.save_checkpoint(log.best_path)
            log.write_metrics(self.history, self.step_log)
            log.plot(self.history, self.step_log)

    # ------------------------------------------------------------ evaluation
    def evaluate(self, data, split="test", batch_size=512):
        """Mean loss over every example (per token for a language model) and its perplexity."""
        loader = self.make_loader(data, split, batch_size, shuffle=False)
        try:
            return self._evaluate(loader)
        finally:
            _close_owned(loader, data)

    def _evaluate(self, loader):
        """Add the model's per-minibatch metric sums on the device (one host transfer at the
        end), then let the model turn them into metrics (mean loss, accuracy, P@k, ...)."""
        xp = self.backend.xp
        sums = {}
        t0 = time.perf_counter()
        for x, y in loader.iter_from(0, 0):
            for key, value in self.model.eval_sums(x, y).items():
                value = xp.asarray(value, dtype=numpy.float64)
                sums[key] = sums[key] + value if key in sums else value
        if self.comm.size > 1:     # every rank's part of the sums, added in one all-reduce
            from .distributed.run import reduce_sums
            sums = reduce_sums(self.comm, xp, sums)
        host = {key: float(value) for key, value in sums.items()}
        n = int(round(host.get("count", 0)))
        if n == 0:
            raise ValueError("evaluate: the data holds no example")
        result = dict(self.model.eval_finish(host))
        result.update({"examples": n, "seconds": time.perf_counter() - t0,
                       "device": self.backend.device})
        if self.model.reports_perplexity and self.model.output.has_likelihood:
            result["perplexity"] = perplexity(result["loss"])
        return result

    def predict_topk(self, x, k=1):
        if self.comm.size > 1:     # each rank its rows of x; every rank gets all rows
            from .distributed.run import predict_topk
            return predict_topk(self, x, k)
        return self.model.predict_topk(self.backend.asarray(x), k)

    # ----------------------------------------------------------- checkpoints
    def engine_state(self):
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "epoch_loss_sum": self.epoch_loss_sum, "epoch_examples": self.epoch_examples,
                "epoch_seconds": self.epoch_seconds, "seed": self.seed, "dtype": self.dtype.name,
                "history": self.history, "step_log": self.step_log,
                "data_vocab_hash": self.data_vocab_hash, "batch_size": self.batch_size}

    def save_checkpoint(self, path):
        if self.comm.size > 1:     # one shard per rank and a manifest at `path`
            from .distributed.checkpoints import save_sharded
            return save_sharded(self, path)
        opt = self.optimizer
        save_checkpoint(path, self.model.kind, self.model.config(), self.model.state_dict(),
                        type(opt).__name__.lower(), opt.config(), opt.state_dict(), self.engine_state())

    @classmethod
    def from_checkpoint(cls, path, device="auto", verbose=True, comm=None):
        """Rebuild model, optimizer and training position from a checkpoint. `comm` (see
        __init__): the ranks to continue on; a sharded checkpoint (a manifest) is read by each
        rank as its shard, or merged (and split again) for another number of ranks."""
        from .optim import optimizer_from_config
        ck = load_checkpoint(path)
        if comm is not None:
            from .distributed.run import attach
            _, comm = attach(comm, device, verbose)
        if ck.get("shard") is not None or comm is not None and comm.size > 1:
            from .distributed.checkpoints import checkpoint_for_rank
            ck = checkpoint_for_rank(path, ck, comm.rank if comm else 0, comm.size if comm else 1)
        state = ck["engine_state"]
        try:
            model = build_model(ck["model_kind"], ck["model_config"])
            optimizer = optimizer_from_config(ck["optimizer_config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot rebuild the model/optimizer: {exc}") from None
        engine = cls(model, optimizer, device=device, seed=state["seed"], dtype=state["dtype"],
                     verbose=verbose, comm=comm)
        try:
            model.load_state_dict(ck["model_state"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: model state does not fit the model: {exc}") from None
        optimizer.load_state_dict(ck["optimizer_state"])
        for key in ("step", "epoch", "batch_in_epoch", "epoch_loss_sum", "epoch_examples",
                    "epoch_seconds", "history", "step_log", "data_vocab_hash", "batch_size"):
            setattr(engine, key, state.get(key))
        return engine
