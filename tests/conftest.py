"""Shared fixtures: tiny configurations that train in seconds on CPU."""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from nscl.experiment import config


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


#: markers of the tests that take longest, longest first: a real SLURM job or a browser, then notebooks and
#: subprocesses
LONGEST_FIRST = (("slurm", "browser"), ("slow",))


def pytest_collection_modifyitems(config, items):
    """Longest tests first (``slurm`` and ``browser``, then ``slow``; stable otherwise): ``make test``
    hands tests to its workers in this order, two at first, then one at a time (``--dist load
    --maxschedchunk 1``), so the longest start at once on different workers instead of ending the run
    alone while the other workers idle. (Without ``--maxschedchunk``, xdist hands each worker a quarter
    of its share in one consecutive block: all the long tests went to one worker.) Tests using the ``suite`` fixture get the
    ``nbval_records`` marker (scripts/test.sh runs them after nbval); the tests that could depend on timing
    get ``timing`` (:data:`TIMING_MARKERS`, :data:`TIMING_NAMES`: what ``make flaky`` repeats)."""

    def rank(item):
        marks = {m.name for m in item.iter_markers()}
        return next((k for k, names in enumerate(LONGEST_FIRST) if marks & set(names)), len(LONGEST_FIRST))

    items.sort(key=rank)
    for item in items:  # make test runs these once its nbval run has written the records they read
        if "suite" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.nbval_records)
        marks = {m.name for m in item.iter_markers()}
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if marks & TIMING_MARKERS or TIMING_NAMES.search(name):
            item.add_marker(pytest.mark.timing)


#: the tests ``make flaky`` repeats under load (marker ``timing``, set here): those that start processes,
#: SLURM jobs or a browser, and those whose file or name says they stop, signal, lock, kill or resume runs
TIMING_MARKERS = {"slow", "slurm", "slurm_timelimit", "browser"}
TIMING_NAMES = re.compile(r"sweep|signal|stop|interrupt|ctrl_c|(?<!b)lock|kill|resum")


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` here, as in a terminal, also when pytest was started in
    the background of a non-interactive shell, which starts it with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


#: the tiny run every training test starts from: 3 tasks of split_digits (~290 samples each), MLP 32-32,
#: one epoch, CPU, quiet; tests override what they study
TINY = dict(
    benchmark="split_digits", n_tasks=3, epochs=1, batch_size=32, hidden=[32, 32], device="cpu", quiet=True, seed=0
)


class Killed(BaseException):
    """A simulated kill: like SIGKILL, not an error the run could record."""


@pytest.fixture
def tiny_cfg():
    """``make(**overrides)``: :data:`TINY` resolved, on the stream's full 5 tasks unless ``n_tasks`` is
    given, with the exact ``a_min`` null space (the invariance checks)."""

    def make(**overrides):
        return config.resolve(overrides={**TINY, "n_tasks": None, "nullspace_rule": "a_min", **overrides})

    return make


@pytest.fixture
def tiny_params():
    """:data:`TINY` as sweep / notebook parameters: explicit sizes, one thread each."""
    return {**TINY, "samples_per_task": 200, "test_samples_per_task": 100, "threads": 1}


@pytest.fixture
def kill_at_task():
    """``kill(trainer, t=2)``: the trainer dies with :class:`Killed` as task ``t`` starts, i.e. after
    task ``t - 1``'s checkpoint; ``kill.Killed`` is the exception to expect."""

    def kill(trainer, t: int = 2):
        before_task = trainer.method.before_task

        def die(k):
            if k == t:
                raise Killed(f"simulated kill as task {t + 1} starts")
            before_task(k)

        trainer.method.before_task = die
        return trainer

    kill.Killed = Killed
    return kill


@pytest.fixture
def write_run():
    """Write a run record (``results.json``) without training: ``params`` over the defaults, every
    accuracy of the T x T matrix equal to ``value`` (so ACC = plasticity = value, BWT = 0), only the
    first ``done`` rows filled (default: all when complete). For tests of tables and listings."""
    import json
    from pathlib import Path

    from nscl.core.metrics import summary
    from nscl.experiment import records

    def make(
        d,
        value: float,
        status: str = "complete",
        done: int | None = None,
        T: int = 5,
        error: str | None = None,
        **params,
    ):
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        done = T if done is None else done
        acc = [[value if j <= i and i < done else None for j in range(T)] for i in range(T)]
        res = {
            "schema": records.SCHEMA,
            "status": status,
            "error": error,
            "name": d.name,
            "params": {**config.defaults(), "benchmark": "split_digits", **params},
            "tasks": [f"task{t + 1}" for t in range(T)],
            "acc": acc,
            "metrics": summary(acc),
            "timing": {"total_s": 1.0},
        }
        (d / records.RESULTS).write_text(json.dumps(res))
        return d

    return make


#: the start-up module of a gated run (see :func:`gate`); filled in with the folder's paths
GATE_SITE = """\"\"\"A test's gate (tests/conftest.py, fixture ``gate``): every Python started with this folder on
PYTHONPATH trains until task {task} (0-based) starts, writes {reached!r} (its pid) and waits there for a
signal to stop it. Once the gate was reached, later runs pass through it (a resubmission completes).\"\"\"

import os
import time
from pathlib import Path

from nscl.experiment import trainer

_train_task = trainer.Trainer.train_task


def train_task(self, t, *args, **kwargs):
    reached = Path({reached!r})
    if t == {task} and not reached.exists():
        tmp = reached.with_name(reached.name + ".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(reached)  # atomic: the test reads a whole pid
        time.sleep({wait_s})  # a stop signal raises here (the run's handlers are installed by now)
        raise RuntimeError("the test's gate waited {wait_s} s and no signal came")
    return _train_task(self, t, *args, **kwargs)


trainer.Trainer.train_task = train_task
"""


class Gate:
    """A run that waits at a known point: see :func:`gate`."""

    def __init__(self, folder: Path, task: int, wait_s: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.reached = folder, folder / "reached"
        (folder / "sitecustomize.py").write_text(GATE_SITE.format(task=task, reached=str(self.reached), wait_s=wait_s))
        path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
        #: the environment for a subprocess started by the test (os.environ plus the gate)
        self.env = {**os.environ, "PYTHONPATH": path}
        #: the same as lines of a SLURM job's script (the sweep file's ``executor.slurm.setup``)
        self.setup = [f"export PYTHONPATH={path}"]

    def wait(self, process=None, timeout_s: float = 900) -> int:
        """Block until a run reached the gate; its pid. ``timeout_s`` is only a safety net (a run that
        never gets there, e.g. a failed start): far above any plausible start-up time."""
        deadline = time.monotonic() + timeout_s
        while not self.reached.exists():
            if process is not None and process.poll() is not None:
                pytest.fail(f"the gated process exited with code {process.returncode} before reaching the gate")
            if time.monotonic() > deadline:
                pytest.fail(f"no run reached the gate {self.reached} in {timeout_s:.0f} s")
            time.sleep(0.1)
        return int(self.reached.read_text())


@pytest.fixture
def gate(tmp_path_factory):
    """``gate(task)``: a :class:`Gate` that makes a run started in ANOTHER Python process (a SLURM job,
    a local sweep's run, a CLI subprocess: give it ``gate.env`` or ``gate.setup``) wait as task ``task``
    (0-based) starts, after the previous task's checkpoint, until a signal stops it. The test waits
    for that point (``gate.wait()``) and then delivers the signal itself: a stop at a known point, never
    a race between a run and a clock. ``wait_s``: how long the run waits at most (then it fails)."""

    def make(task: int = 1, wait_s: int = 1800) -> Gate:
        return Gate(tmp_path_factory.mktemp("gate"), task, wait_s)

    return make
