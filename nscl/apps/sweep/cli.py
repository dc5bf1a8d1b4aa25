"""``python -m nscl sweep run|status|collect``."""

from __future__ import annotations

import sys
from pathlib import Path

from ...analysis.tables import SUMMARY_LEGEND, format_summary, seed_summary
from .executors import SweepInterrupted, run
from .spec import EXECUTORS, SweepError
from .state import COLLECTED, collect, format_status, status


def add_cli(sub) -> None:
    """``python -m nscl sweep run|status|collect`` (registered in :data:`nscl.apps.cli.COMMANDS`)."""
    p = sub.add_parser(
        "sweep",
        help="run a grid of runs (SLURM job array, local pool, in-process), show its state, collect its results",
    )
    ss = p.add_subparsers(dest="sweep_command", required=True)
    r = ss.add_parser("run", help="expand, validate and execute a sweep file (only runs not yet done)")
    r.add_argument("file", help="sweep YAML, e.g. params/sweeps/compare_fmnist.yaml")
    r.add_argument("--executor", "-e", choices=EXECUTORS, default=None, help="default: the file's executor.kind")
    r.add_argument("--out", "-o", default=None, help="sweep directory (default: the file's out)")
    r.add_argument("--parallel", "-j", type=int, default=None, help="local executor: runs at once")
    r.add_argument("--no-wait", action="store_true", help="slurm: return after submitting")
    r.add_argument("--retry-failed", action="store_true", help="also re-run runs that failed")
    r.add_argument("--dry-run", action="store_true", help="validate and list the runs; run nothing")
    r.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    r.set_defaults(func=_cmd_run)
    s = ss.add_parser("status", help="complete / running / failed (with the error's last line) / pending")
    s.add_argument("dir")
    s.add_argument("--all", action="store_true", help="list complete runs too")
    s.set_defaults(func=_cmd_status)
    c = ss.add_parser("collect", help="one row per run -> DIR/collected.csv (+ .parquet with pyarrow)")
    c.add_argument("dir")
    c.set_defaults(func=_cmd_collect)


def _reports_sweep_errors(cmd):
    """A bad sweep file or directory is a one-line error (exit 2), not a traceback."""

    def wrapped(args) -> int:
        try:
            return cmd(args)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped


@_reports_sweep_errors
def _cmd_run(args) -> int:
    """Exit 0 only when every run of the sweep is complete (with ``--no-wait``: none failed or
    stopped), this time or from an earlier submission (a resubmission skips failed runs, and runs in
    progress elsewhere, so it must still say they are there); 130 after Ctrl-C."""
    try:
        res = run(
            args.file,
            executor=args.executor,
            out=args.out,
            wait=not args.no_wait,
            retry_failed=args.retry_failed,
            dry_run=args.dry_run,
            timeout_s=args.timeout,
            parallel=args.parallel,
        )
    except SweepInterrupted as e:
        print(
            "\ninterrupted: the queue is cancelled and the runs in progress were stopped (resumable)", file=sys.stderr
        )
        for r in e.results:
            print(
                f"  {r['status'].upper()} {r['name']}" + (f": {r['error']}" if r.get("error") else ""), file=sys.stderr
            )
        if e.not_started:
            print(f"  not started: {len(e.not_started)} run(s): {', '.join(e.not_started)}", file=sys.stderr)
        print("resubmit the same command to finish the sweep (complete runs are skipped)", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            "\ninterrupted while waiting; submitted SLURM jobs keep running (python -m nscl sweep status DIR)",
            file=sys.stderr,
        )
        return 130
    if args.dry_run:
        for s in res["specs"]:
            print(f"  {'run' if s['name'] in res['submitted'] else 'skip'}  {s['name']}")
        print(f"{len(res['submitted'])} to run, {len(res['skipped'])} skipped (complete/failed/running)")
        return 0
    print(
        f"{len(res['submitted'])} run(s) executed, {len(res['skipped'])} skipped (already complete, failed or running)"
    )
    for r in res["results"]:
        if r.get("status") in ("failed", "stopped", "running"):
            print(f"  {r['status'].upper()} {r['name']}: {r['error']}")
    rows = status(res["sweep_dir"])
    print(format_status(rows, res["sweep_dir"]))
    # submitted without waiting: running / pending runs are expected; otherwise the sweep is unfinished
    unfinished = ("failed", "stopped") if args.no_wait else ("failed", "stopped", "running", "pending")
    bad = [r for r in rows if r["state"] in unfinished]
    if bad:
        print(f"error: {len(bad)} run(s) of the sweep did not complete:", file=sys.stderr)
        for r in bad:
            print(f"  {r['state']:<8} {r['name']}: {r['detail']}", file=sys.stderr)
        print(
            f"(their logs: {res['sweep_dir']}/runs/<name>/error.txt; resubmit with --retry-failed to run "
            "failed ones again, stopped ones resume on any resubmission, running ones are in progress elsewhere)",
            file=sys.stderr,
        )
        return 1
    return 0


@_reports_sweep_errors
def _cmd_status(args) -> int:
    rows = status(args.dir)
    print(format_status(rows, args.dir, args.all))
    return 0


@_reports_sweep_errors
def _cmd_collect(args) -> int:
    import pandas as pd

    df = collect(args.dir)
    if "tasks_done" in df:  # tasks done of the stream, e.g. 3/5 (a run that failed early has none)
        df["tasks"] = [
            f"{int(d)}/{int(t)}" if d == d and t == t and t else "-"
            for d, t in zip(df["tasks_done"], df.get("tasks", df["tasks_done"]))
        ]
    cols = [c for c in ("name", "state", "tasks", "acc", "bwt", "plasticity", "total_s") if c in df]
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 50):
        print(df[cols].to_string(index=False))
        failed = df[df["state"] == "failed"]
        if len(failed):
            print("\nfailed:")
            for name, err in zip(failed["name"], failed["error"]):
                print(f"  {name}: {err}")
        if {"benchmark", "method", "acc"} <= set(df.columns) and (df["state"] == "complete").any():
            print(
                "\nmean ± std over distinct seeds (complete runs only; every other differing parameter is its own row):"
            )
            print(
                format_summary(seed_summary(df, by=("benchmark", "method")), seeds=True, counts=True).to_string(
                    index=False
                )
            )
            print(SUMMARY_LEGEND)
    print(f"\nwritten: {Path(args.dir) / (COLLECTED + '.csv')} ({len(df)} rows)")
    return 0
