"""The one training loop: tasks in sequence, method hooks, evaluation, records, checkpoints.

``run(cfg, out_dir)`` returns the results dict (FACIL style: the accuracy matrix is the product)
and, with ``out_dir``, writes the run directory described in :mod:`nscl.experiment.records`. Deterministic on
CPU for a given seed: every task re-seeds torch from ``(seed, task)``, so a run resumed from its
per-task checkpoint ends with the same results as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..core import metrics as metrics_mod
from ..core.models import build_model
from ..core.nullspace import NullSpaceTracker
from ..data import make_stream
from ..methods import METHODS
from ..util import atomic_write, progress
from . import config as config_mod
from . import records


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names task, epoch and step."""


class _FiniteGuard:
    """NaN/inf guard of the training loss without a host sync per step.

    ``record`` keeps, on the loss' device, the value and index of the first non-finite loss; every
    ``nan_check_every`` steps (before that step's backward) and at every :meth:`check` one ``.item()``
    looks at it and raises :class:`NonFiniteLossError` naming the task, epoch and step where it
    first happened. With ``nan_check_every=1`` this is a check before every backward.
    """

    def __init__(self, t: int, cfg: dict, lr: float):
        self.t, self.cfg, self.lr = t, cfg, lr
        self.every = cfg["nan_check_every"]
        self.where: list[tuple[int, int]] = []  # (epoch, step) of each step since the last check
        self.first_step = self.first_loss = self.counter = None

    def record(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        value = loss.detach()
        if self.counter is None:
            self.counter = torch.zeros((), dtype=torch.long, device=value.device)
            self.first_step = torch.full((), -1, dtype=torch.long, device=value.device)
            self.first_loss = torch.zeros((), dtype=value.dtype, device=value.device)
        take = ~torch.isfinite(value) & (self.first_step < 0)
        self.first_step = torch.where(take, self.counter, self.first_step)
        self.first_loss = torch.where(take, value, self.first_loss)
        self.counter += 1
        self.where.append((epoch, step))
        if len(self.where) >= self.every:
            self.check()

    def check(self) -> None:
        if self.first_step is None or not self.where:
            return
        first = int(self.first_step.item())
        if first >= 0:
            epoch, step = self.where[first]
            raise NonFiniteLossError(
                f"loss is {self.first_loss.item()} at task {self.t + 1}, epoch {epoch + 1}, step {step + 1} "
                f"(method {self.cfg['method']}, lr {self.lr}); lower the learning rate or "
                f"penalty strength. Results of the tasks finished before are kept."
            )
        self.where = []
        self.counter.zero_()


class RunStopped(BaseException):
    """The run was asked to stop by a signal (:data:`STOP_SIGNALS`): not a failure of the run.

    Like ``KeyboardInterrupt`` (Ctrl-C) it is no ``Exception``, so nothing that records failures
    catches it: the run is left ``stopped``, resumable from its checkpoint by the same command."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


#: SIGTERM (``kill``, ``scancel``, a SLURM time limit) and SIGUSR2 (SLURM's warning before the time limit,
#: ``--signal=USR2@<delay>``, which submitit asks for): both stop a run the way Ctrl-C does
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, :data:`STOP_SIGNALS` raise :class:`RunStopped` (the previous handlers, e.g.
    submitit's, come back on exit). Only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise RunStopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise config_mod.ConfigError(f"parameter 'device' is {name!r} but CUDA is not available; use auto or cpu")
    return dev


def _stream_to_device(stream, device: torch.device) -> None:
    """Keep every task's raw (uint8) tensors on the GPU once, so batches never cross PCIe.

    Tensors shared between tasks (permuted streams) are moved once and stay shared.
    """
    moved: dict[int, torch.Tensor] = {}
    for task in stream:
        for split in (task.train, task.val, task.test):
            for attr in ("x", "y", "perm"):
                tensor = getattr(split, attr)
                if tensor is not None:
                    if id(tensor) not in moved:
                        moved[id(tensor)] = tensor.to(device)
                    setattr(split, attr, moved[id(tensor)])


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(cfg: dict, input_shape) -> None:
    """A :class:`ConfigError` naming ``hidden`` when the model's fully connected layers cannot fit this
    machine's memory: their float32 weights plus the float64 ``d x d`` covariance of each one's input (a
    lower bound of what a run holds), checked before anything is allocated."""
    if cfg["model"] not in ("mlp", "cnn"):
        return
    hidden = list(cfg["hidden"])
    dims = ([math.prod(input_shape)] if cfg["model"] == "mlp" else []) + hidden
    need = sum(4 * a * b + 8 * a * a for a, b in zip(dims, dims[1:]))
    have = _memory_bytes()
    if have is not None and need > have:
        raise config_mod.ConfigError(
            f"parameter 'hidden': {hidden} needs at least {need / 1e9:.0f} GB (the layers' weights and the "
            f"covariances of their inputs), more than this machine's {have / 1e9:.0f} GB; use smaller widths"
        )


class Trainer:
    """Holds the stream, model, method and null-space tracker of one run; :meth:`run` trains it."""

    def __init__(self, cfg: dict, out_dir: str | os.PathLike | None = None, stream=None):
        self.cfg = cfg = config_mod.validate(cfg)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        self.device = resolve_device(cfg["device"])
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg["seed"])
        self.stream = (
            stream
            if stream is not None
            else make_stream(
                cfg["benchmark"],
                data_root=cfg["data_root"],
                seed=cfg["seed"],
                n_tasks=cfg["n_tasks"],
                samples_per_task=cfg["samples_per_task"],
                test_samples_per_task=cfg["test_samples_per_task"],
                val_fraction=cfg["val_fraction"],
                class_order=cfg["class_order"],
                download=cfg["download"],
            )
        )
        if self.device.type == "cuda":
            _stream_to_device(self.stream, self.device)
        _check_fits(cfg, self.stream.input_shape)
        torch.manual_seed(cfg["seed"])
        self.model = build_model(
            cfg["model"],
            self.stream.input_shape,
            [t.n_classes for t in self.stream],
            hidden=cfg["hidden"],
            bias=cfg["bias"],
            cnn_channels=cfg["cnn_channels"],
            batchnorm=cfg["batchnorm"],
            width=cfg["width"],
            resnet_block=cfg["resnet_block"],
        ).to(self.device)
        self.method = METHODS[cfg["method"]](cfg, self.model, self.stream, self.device)
        self.method.trainer = self
        self.tracker = NullSpaceTracker(
            self.method.tracked_layers(),
            cfg["covariance"],
            scale_sqrt_r=cfg["scale_sqrt_r"],
            patches=cfg["cov_patches"],
            eigen_update=cfg["eigen_update"],
            rule=config_mod.nullspace_rule(cfg),
        )
        T = len(self.stream)
        self.acc: list[list] = [[None] * T for _ in range(T)]
        self.val_acc: list[list] = [[None] * T for _ in range(T)]  # the same matrix on the val split
        self.timing: list[dict] = []
        self.generator = torch.Generator()
        self.tasks_done = 0  # tasks trained and closed (end_task) so far
        self.reused = False  # fit() found an identical complete run in out_dir and trained nothing
        self._bar = None  # the fit() progress bar, for the loss in its postfix

    # ---- data ------------------------------------------------------------------------------
    def batches(
        self,
        sets,
        batch_size: int | None = None,
        shuffle: bool = True,
        train: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Mini-batches ``(x, y, task)`` on the device over one or more ``(TaskData, task_index)``."""
        batch_size = batch_size or self.cfg["batch_size"]
        sizes = [len(d) for d, _ in sets]
        offsets = np.cumsum([0] + sizes)
        n = int(offsets[-1])
        order = torch.randperm(n, generator=generator or self.generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xs, ys, ts = [], [], []
            for k, (data, task) in enumerate(sets):
                sel = idx[(idx >= offsets[k]) & (idx < offsets[k + 1])] - int(offsets[k])
                if len(sel) == 0:
                    continue
                x, y = data.get(sel, generator=generator or self.generator, train=train)
                xs.append(x)
                ys.append(y)
                ts.append(torch.full((len(sel),), task, dtype=torch.long))
            x, y, t = torch.cat(xs), torch.cat(ys), torch.cat(ts)
            yield x.to(self.device, non_blocking=True), y.to(self.device), t.to(self.device)

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def accuracy(self, t: int, split: str = "test") -> float:
        """Task-aware accuracy (percent) of task ``t`` on ``split`` through its own head."""
        was = self.model.training
        self.model.eval()
        data = getattr(self.stream[t], split)
        correct = total = 0
        for x, y, _ in self.batches([(data, t)], self.cfg["eval_batch_size"], shuffle=False):
            correct += (self.model(x, t).argmax(1) == y).sum().item()
            total += len(y)
        self.model.train(was)
        return 100.0 * correct / max(total, 1)

    # ---- the loop ----------------------------------------------------------------------------
    def seed_task(self, t: int) -> None:
        """Re-seed torch and the batch order from ``(seed, task)``: a resumed run or a notebook that
        trains task by task gets exactly the numbers of one uninterrupted :meth:`fit`."""
        torch.manual_seed(self.cfg["seed"] * 1000 + t)
        self.generator.manual_seed(self.cfg["seed"] * 1000 + t)

    def train_task(self, t: int, epochs: int | None = None) -> float:
        """Train task ``t`` for ``epochs`` (default: the ``epochs`` parameter) with the method's hooks;
        returns the seconds spent. Also used by methods that fine-tune after pruning."""
        cfg, method, model = self.cfg, self.method, self.model
        method.before_task(t)
        opt, sched = method.make_optimizer(t)
        sets = method.train_sets(t)
        # one task per batch: an int head index (a tensor would make MultiHead sync on .tolist())
        single = sets[0][1] if len(sets) == 1 else None
        guard = _FiniteGuard(t, cfg, method.backbone_lr(t))
        t0 = time.perf_counter()
        for epoch in range(cfg["epochs"] if epochs is None else epochs):
            method.set_train_mode(t)
            for step, (x, y, tasks) in enumerate(self.batches(sets, train=True)):
                logits = model(x, tasks if single is None else single)
                loss = F.cross_entropy(logits, y)
                pen = method.penalty(t)
                if pen is not None:
                    loss = loss + pen
                guard.record(loss, epoch, step)  # checks (one host sync) every nan_check_every steps
                opt.zero_grad(set_to_none=True)
                loss.backward()
                method.after_backward(t)
                opt.step()
                method.after_step(t)
            guard.check()
            sched.step()
            if self._bar is not None:
                self._bar.set_postfix(task=t + 1, epoch=epoch + 1, loss=f"{loss.item():.3f}")
        return time.perf_counter() - t0

    def end_task(self, t: int) -> dict:
        """Close task ``t``: the method's ``after_task`` hook, the covariance pass and null spaces on
        task ``t``, evaluation of tasks ``0..t``. Returns the timings of each part."""
        timing = {}
        t0 = time.perf_counter()
        self.method.after_task(t)
        timing["after_task_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.model.eval()
        # batch_mean depends on the batch (the official code uses the training batch size);
        # per_sample does not, so it takes large batches (fewer, bigger float64 Gram updates)
        bs = self.cfg["cov_batch_size"] or (
            self.cfg["batch_size"] if self.cfg["covariance"] == "batch_mean" else self.cfg["eval_batch_size"]
        )
        gen = torch.Generator().manual_seed(self.cfg["seed"] * 7919 + t)
        data, weight = self.stream[t].train, 1.0
        m = self.cfg["cov_samples"]
        if m is not None and m < len(data):  # unbiased subset estimate, weighted to the task's size
            weight = len(data) / m
            data = data.subset(torch.randperm(len(data), generator=gen)[:m].sort().values)
        xs = (x for x, _, _ in self.batches([(data, t)], bs, shuffle=True, generator=gen))
        patch_gen = torch.Generator().manual_seed(self.cfg["seed"] * 7919 + t + 104729)
        self.tracker.cov.update(lambda x: self.model.features(x), xs, weight=weight, generator=patch_gen)
        val = self.stream[t].val  # held-out inputs of the same task: the leak rule, held-out kept energy
        if len(val):
            vs = (x for x, _, _ in self.batches([(val, t)], bs, shuffle=True, generator=gen))
            self.tracker.val_cov.update(lambda x: self.model.features(x), vs, generator=patch_gen)
        timing["covariance_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.tracker.recompute(t)
        timing["eigen_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for j in range(t + 1):
            self.acc[t][j] = self.accuracy(j)
            # validation accuracy: what settings are chosen on (never the test split)
            self.val_acc[t][j] = self.accuracy(j, "val") if len(self.stream[j].val) else None
        timing["eval_s"] = time.perf_counter() - t0
        self.tasks_done = t + 1
        return timing

    def fit(self, until: int | None = None) -> dict:
        """Train the remaining tasks up to ``until`` (default: all), seeding each task from
        ``(seed, task)``. With a run directory: hold its lock (:func:`nscl.experiment.records.lock`),
        reuse an identical complete run (``self.reused``), refuse one with other parameters, resume from
        its checkpoint, and write a checkpoint and the records after every task. A failure marks the
        run ``failed`` and leaves its traceback in ``error.txt``; Ctrl-C, SIGTERM or SLURM's time-limit
        warning (:func:`stop_on_signals`) mark it ``stopped`` (resumable, no ``error.txt``) and raise
        ``KeyboardInterrupt`` / :class:`RunStopped`. Returns the results dict."""
        if self.out_dir is None:
            with stop_on_signals():
                return self._fit(until)
        done = records.reusable(self.out_dir, self.cfg)  # read-only: a complete run needs no lock
        if done is not None:
            self.reused = True
            return done
        with stop_on_signals(), records.lock(self.out_dir):
            return self._fit(until)

    def _bar_label(self) -> str:
        """``method on benchmark``, plus the parameters of the method's own (and, for a projecting method,
        the null-space rule's) set away from their defaults: short enough to leave the bar room, and
        never a parameter the method does not read (a sweep's folder name may hold those)."""
        cfg, d = self.cfg, config_mod.defaults()
        own = [p.name for p in METHODS[cfg["method"]].params]
        if "project" in own or "scale_sqrt_r" in own:  # the methods that project read the rule
            own += ["nullspace_rule", "a", "energy", "energy_step"]

        def show(v) -> str:
            return (
                "-".join(map(show, v)) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, float) else str(v)
            )

        shown = "".join(f" {k}={show(cfg[k])}" for k in own if k in cfg and cfg[k] != d.get(k))
        shown = shown if len(shown) <= 30 else shown[:29] + "…"
        return f"{cfg['method']}{shown} on {cfg['benchmark']}"

    def _fit(self, until: int | None) -> dict:
        cfg = self.cfg
        T = len(self.stream)
        until = T if until is None else min(until, T)
        if self.out_dir is not None:
            done = records.check_same_run(self.out_dir, cfg)  # refuses a run with other parameters
            if done is not None:
                self.reused = True
                return done
        try:
            start = max(self._resume(), self.tasks_done)
        except (KeyboardInterrupt, RunStopped):  # stopped while loading: the record keeps its tasks, says stopped
            self._mark_stopped()
            raise
        if self.out_dir is not None:
            (self.out_dir / records.ERROR).unlink(missing_ok=True)  # a rerun clears the last failure
            records.write_params(self.out_dir, cfg)
        t_start = time.perf_counter()
        previous = sum(sum(d.values()) for d in self.timing)
        bar = progress(
            range(start, until),
            cfg["quiet"],
            desc=self._bar_label(),
            unit="task",
            initial=start,
            total=until,
        )
        self._bar = bar if hasattr(bar, "set_postfix") else None  # no bar: quiet, or $NSCL_QUIET
        try:
            for t in bar:
                self.seed_task(t)
                train_s = self.train_task(t)
                self.timing.append({"train_s": train_s, **self.end_task(t)})
                self._checkpoint(t)
                self._write("running", total_s=previous + time.perf_counter() - t_start)
        except (KeyboardInterrupt, RunStopped):  # asked to stop: resumable from the last checkpoint
            self._write("stopped", total_s=previous + time.perf_counter() - t_start)
            raise
        except Exception as e:  # a failure of this run (not an interrupt): recorded, then raised
            message = str(e) if isinstance(e, NonFiniteLossError) else f"{type(e).__name__}: {e}"
            self._write("failed", error=message, total_s=previous + time.perf_counter() - t_start)
            if self.out_dir is not None:
                atomic_write(self.out_dir / records.ERROR, traceback.format_exc())
            raise
        finally:
            self._bar = None
        status = "complete" if self.tasks_done == T else "running"
        res = self._write(status, total_s=previous + time.perf_counter() - t_start)
        if status == "complete" and self.out_dir is not None and (self.out_dir / records.CHECKPOINT).exists():
            (self.out_dir / records.CHECKPOINT).unlink()
        return res

    def results(self, status: str, error: str | None = None, total_s: float | None = None) -> dict:
        return {
            "schema": records.SCHEMA,
            "status": status,
            "error": error,
            "name": self.out_dir.name if self.out_dir else None,
            "params": self.cfg,
            "stream": self.stream.info,
            "tasks": [t.name for t in self.stream],
            "acc": self.acc,
            "metrics": metrics_mod.summary(self.acc),
            "val_acc": self.val_acc,
            "val_metrics": metrics_mod.summary(self.val_acc),
            "null_space": self.tracker.history,
            "method_diagnostics": self.method.diagnostics(),
            "capacity": metrics_mod.capacity(self.acc, self.tracker.history, self.method.capacity()),
            "timing": {
                "per_task": self.timing,
                "total_s": total_s if total_s is not None else sum(sum(v for v in d.values()) for d in self.timing),
            },
            "env": records.env_info(self.device, self.cfg["seed"]),
        }

    def _write(self, status: str, error: str | None = None, total_s: float | None = None) -> dict:
        res = self.results(status, error, total_s)
        if self.out_dir is not None:
            records.write_spectra(self.out_dir, self.tracker.spectra)
            records.write_json(self.out_dir / records.RESULTS, res)
        return res

    def checkpoint_state(self, t: int) -> dict:
        """Everything a resume after task ``t`` needs (what ``checkpoint.pt`` holds)."""
        return {
            "task": t,
            "params": self.cfg,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "tracker": self.tracker.state_dict(),
            "acc": self.acc,
            "val_acc": self.val_acc,
            "timing": self.timing,
        }

    def _checkpoint(self, t: int) -> None:
        if self.out_dir is None or not self.cfg["checkpoint"]:
            return
        records.save_checkpoint(self.out_dir, self.checkpoint_state(t))

    def _mark_stopped(self) -> None:
        """Set the status of the run's ``results.json`` to ``stopped``, keeping what it records, and take its
        task count (a stop before the checkpoint was loaded: nothing of this process is worth writing)."""
        try:
            res = records.load(self.out_dir)
        except (OSError, records.NotARunRecord):
            return
        if res.get("status") in ("running", "stopped"):
            res.pop("_dir", None)
            records.write_json(self.out_dir / records.RESULTS, {**res, "status": "stopped"})
        self.tasks_done = max(self.tasks_done, int((res.get("metrics") or {}).get("tasks_done") or 0))

    def _resume(self) -> int:
        """Load the checkpoint of the last finished task, if any; return the next task index."""
        if self.out_dir is None:
            return 0
        state = records.load_checkpoint(self.out_dir)
        if state is None:
            return 0
        task, T = state["task"], len(self.stream)
        if (
            isinstance(task, bool)
            or not isinstance(task, int)
            or not 0 <= task < T
            or not isinstance(state["params"], dict)
        ):
            raise records.RunDirError(
                f"{self.out_dir / records.CHECKPOINT} is not a checkpoint of this run (task {task!r} of a "
                f"{T}-task stream); delete it to start the run from its first task"
            )
        diff = records.differing(state["params"], self.cfg)
        if diff:
            raise records.RunDirError(
                f"{self.out_dir / records.CHECKPOINT} was written with other parameters ({', '.join(sorted(diff))}); "
                f"use another output directory or delete the checkpoint"
            )
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.tracker.load_state_dict(state["tracker"])
        self.acc, self.timing = state["acc"], state["timing"]
        self.val_acc = state.get("val_acc", self.val_acc)
        self.tasks_done = state["task"] + 1
        return self.tasks_done


def run(cfg: dict, out_dir: str | os.PathLike | None = None, stream=None) -> dict:
    """Train ``cfg['method']`` on the configured stream; return (and with ``out_dir`` write) results."""
    return Trainer(cfg, out_dir, stream).fit()
