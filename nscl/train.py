"""The one training loop: tasks in sequence, method hooks, evaluation, records, checkpoints.

``run(cfg, out_dir)`` returns the results dict (FACIL style: the accuracy matrix is the product)
and, with ``out_dir``, writes the run directory described in :mod:`nscl.runs`. Deterministic on
CPU for a given seed: every task re-seeds torch from ``(seed, task)``, so a run resumed from its
per-task checkpoint ends with the same results as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import config as config_mod
from . import metrics as metrics_mod
from . import runs
from .data import make_stream
from .methods import METHODS
from .models import build_model
from .nullspace import NullSpaceTracker


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
                f"penalty strength. Results of the tasks finished before are kept.")
        self.where = []
        self.counter.zero_()


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


def _progress(iterable, quiet: bool, **kw):
    if quiet:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


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


def _differing(saved: dict, cfg: dict) -> set[str]:
    """Parameters that differ between a saved run and ``cfg`` (keys the saved run predates count
    at their defaults; parameters that don't change results are ignored)."""
    saved = {**config_mod.defaults(), **saved}
    return {k for k in cfg if k not in runs.RUN_INVARIANT and saved.get(k) != cfg[k]}


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
        self.stream = stream if stream is not None else make_stream(
            cfg["benchmark"], data_root=cfg["data_root"], seed=cfg["seed"], n_tasks=cfg["n_tasks"],
            samples_per_task=cfg["samples_per_task"], test_samples_per_task=cfg["test_samples_per_task"],
            val_fraction=cfg["val_fraction"], class_order=cfg["class_order"], download=cfg["download"])
        if self.device.type == "cuda":
            _stream_to_device(self.stream, self.device)
        torch.manual_seed(cfg["seed"])
        self.model = build_model(cfg, self.stream.input_shape, [t.n_classes for t in self.stream]).to(self.device)
        self.method = METHODS[cfg["method"]](cfg, self.model, self.stream, self.device)
        self.method.trainer = self
        self.tracker = NullSpaceTracker(self.method.tracked_layers(), cfg)
        T = len(self.stream)
        self.acc: list[list] = [[None] * T for _ in range(T)]
        self.timing: list[dict] = []
        self.generator = torch.Generator()

    # ---- data ------------------------------------------------------------------------------
    def batches(self, sets, batch_size: int | None = None, shuffle: bool = True, train: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Mini-batches ``(x, y, task)`` on the device over one or more ``(TaskData, task_index)``."""
        batch_size = batch_size or self.cfg["batch_size"]
        sizes = [len(d) for d, _ in sets]
        offsets = np.cumsum([0] + sizes)
        n = int(offsets[-1])
        order = torch.randperm(n, generator=generator or self.generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
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
    def _train_task(self, t: int, bar) -> float:
        cfg, method, model = self.cfg, self.method, self.model
        method.before_task(t)
        opt, sched = method.make_optimizer(t)
        sets = method.train_sets(t)
        # one task per batch: an int head index (a tensor would make MultiHead sync on .tolist())
        single = sets[0][1] if len(sets) == 1 else None
        train_augment = True
        guard = _FiniteGuard(t, cfg, method.backbone_lr(t))
        t0 = time.perf_counter()
        for epoch in range(cfg["epochs"]):
            method.set_train_mode(t)
            for step, (x, y, tasks) in enumerate(self.batches(sets, train=train_augment)):
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
            if bar is not None:
                bar.set_postfix(task=t + 1, epoch=epoch + 1, loss=f"{loss.item():.3f}")
        return time.perf_counter() - t0

    def _task_boundary(self, t: int) -> dict:
        """after_task hook, covariance + null spaces on task t, evaluation of tasks 0..t."""
        timing = {}
        t0 = time.perf_counter()
        self.method.after_task(t)
        timing["after_task_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.model.eval()
        # batch_mean depends on the batch (the official code uses the training batch size);
        # per_sample does not, so it takes large batches (fewer, bigger float64 Gram updates)
        bs = self.cfg["cov_batch_size"] or (self.cfg["batch_size"] if self.cfg["covariance"] == "batch_mean"
                                             else self.cfg["eval_batch_size"])
        gen = torch.Generator().manual_seed(self.cfg["seed"] * 7919 + t)
        data, weight = self.stream[t].train, 1.0
        m = self.cfg["cov_samples"]
        if m is not None and m < len(data):  # unbiased subset estimate, weighted to the task's size
            weight = len(data) / m
            data = data.subset(torch.randperm(len(data), generator=gen)[:m].sort().values)
        xs = (x for x, _, _ in self.batches([(data, t)], bs, shuffle=True, generator=gen))
        patch_gen = torch.Generator().manual_seed(self.cfg["seed"] * 7919 + t + 104729)
        self.tracker.cov.update(lambda x: self.model.features(x), xs, weight=weight, generator=patch_gen)
        timing["covariance_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.tracker.recompute(t)
        timing["eigen_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for j in range(t + 1):
            self.acc[t][j] = self.accuracy(j)
        timing["eval_s"] = time.perf_counter() - t0
        return timing

    def results(self, status: str, error: str | None = None, total_s: float | None = None) -> dict:
        return {
            "schema": runs.SCHEMA,
            "status": status,
            "error": error,
            "name": self.out_dir.name if self.out_dir else None,
            "params": self.cfg,
            "stream": self.stream.info,
            "tasks": [t.name for t in self.stream],
            "acc": self.acc,
            "metrics": metrics_mod.summary(self.acc),
            "null_space": self.tracker.history,
            "method_diagnostics": self.method.diagnostics(),
            "timing": {"per_task": self.timing, "total_s": total_s if total_s is not None else
                       sum(sum(v for v in d.values()) for d in self.timing)},
            "env": runs.env_info(self.device, self.cfg["seed"]),
        }

    def _write(self, status: str, error: str | None = None, total_s: float | None = None) -> dict:
        res = self.results(status, error, total_s)
        if self.out_dir is not None:
            runs.write_spectra(self.out_dir, self.tracker.spectra)
            runs.write_json(self.out_dir / runs.RESULTS, res)
        return res

    def checkpoint_state(self, t: int) -> dict:
        """Everything a resume after task ``t`` needs (what ``checkpoint.pt`` holds)."""
        return {"task": t, "params": self.cfg, "model": self.model.state_dict(),
                "method": self.method.state_dict(), "tracker": self.tracker.state_dict(),
                "acc": self.acc, "timing": self.timing}

    def _checkpoint(self, t: int) -> None:
        if self.out_dir is None or not self.cfg["checkpoint"]:
            return
        runs.save_checkpoint(self.out_dir, self.checkpoint_state(t))

    def _resume(self) -> int:
        """Load the checkpoint of the last finished task, if any; return the next task index."""
        if self.out_dir is None:
            return 0
        state = runs.load_checkpoint(self.out_dir)
        if state is None:
            return 0
        diff = _differing(state["params"], self.cfg)
        if diff:
            raise config_mod.ConfigError(
                f"{self.out_dir / runs.CHECKPOINT} was written with other parameters ({', '.join(sorted(diff))}); "
                f"use another output directory or delete the checkpoint")
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.tracker.load_state_dict(state["tracker"])
        self.acc, self.timing = state["acc"], state["timing"]
        return state["task"] + 1

    def run(self) -> dict:
        cfg = self.cfg
        done = self._completed()
        if done is not None:
            return done
        start = self._resume()  # refuses a checkpoint written with other parameters
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            runs.write_params(self.out_dir, cfg)
        T = len(self.stream)
        t_start = time.perf_counter()
        previous = sum(sum(d.values()) for d in self.timing)
        bar = _progress(range(start, T), cfg["quiet"], desc=f"{cfg['method']} on {cfg['benchmark']}",
                        unit="task", initial=start, total=T)
        try:
            for t in bar:
                torch.manual_seed(cfg["seed"] * 1000 + t)
                self.generator.manual_seed(cfg["seed"] * 1000 + t)
                train_s = self._train_task(t, bar if not cfg["quiet"] else None)
                timing = {"train_s": train_s, **self._task_boundary(t)}
                self.timing.append(timing)
                self._checkpoint(t)
                self._write("running", total_s=previous + time.perf_counter() - t_start)
        except NonFiniteLossError as e:
            self._write("failed", error=str(e), total_s=previous + time.perf_counter() - t_start)
            raise
        res = self._write("complete", total_s=previous + time.perf_counter() - t_start)
        if self.out_dir is not None and (self.out_dir / runs.CHECKPOINT).exists():
            (self.out_dir / runs.CHECKPOINT).unlink()
        return res

    def _completed(self) -> dict | None:
        """Results of an identical, already complete run in ``out_dir`` (then nothing is retrained)."""
        if self.out_dir is None or not (self.out_dir / runs.RESULTS).exists():
            return None
        try:
            res = runs.load(self.out_dir)
        except (ValueError, OSError):
            return None
        if res.get("status") != "complete":
            return None
        diff = _differing(res.get("params", {}), self.cfg)
        if diff:
            raise config_mod.ConfigError(
                f"{self.out_dir} holds a complete run with other parameters ({', '.join(sorted(diff))}); "
                f"use another output directory, or delete it to retrain")
        return res


def run(cfg: dict, out_dir: str | os.PathLike | None = None, stream=None) -> dict:
    """Train ``cfg['method']`` on the configured stream; return (and with ``out_dir`` write) results."""
    return Trainer(cfg, out_dir, stream).run()
