"""Command line: ``python -m nscl run|show|params ...``.

python -m nscl run -f params/base.yaml -f params/ci.yaml -p method=adam_nscl -p seed=1 -o runs/x
python -m nscl show runs/x runs/y          # metrics table (+ accuracy matrices with --matrix)
python -m nscl params                       # every valid key with its default and meaning
python -m nscl results suite=DIR full=DIR   # docs/results.md from finished sweeps (make results)
"""

from __future__ import annotations

import argparse
import sys

from ..data import DataError
from ..experiment import config


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="train one method on one task stream and write a run directory")
    p.add_argument(
        "-f", "--file", action="append", default=[], metavar="YAML", help="parameter file, layered left to right"
    )
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter (YAML value), applied after the files",
    )
    p.add_argument("-o", "--out", default=None, help="run directory (results.json, spectra.npz, ...)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from ..experiment import records, trainer

    overrides = config.parse_overrides(args.param)
    if args.quiet:
        overrides["quiet"] = True
    cfg = config.resolve(args.file, overrides)
    unread = config.unread(cfg)
    if unread:
        print(f"warning: method {cfg['method']} does not read: {', '.join(unread)}", file=sys.stderr)
    _check_out(args.out)
    tr = trainer.Trainer(cfg, args.out)
    try:
        res = tr.fit()
    except trainer.NonFiniteLossError as e:
        where = f" (traceback in {args.out}/{records.ERROR})" if args.out else ""
        print(f"error: {e}{where}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, trainer.RunStopped) as e:
        signum = getattr(e, "signum", 2)  # Ctrl-C is SIGINT
        where = f"; the same command resumes it from {args.out}" if args.out else ""
        print(f"\nstopped ({e or 'Ctrl-C'}) after {tr.tasks_done} of {len(tr.stream)} task(s){where}", file=sys.stderr)
        return 128 + signum
    print(format_results([res], matrix=True))
    if args.out:
        print(f"\n{'reused' if tr.reused else 'written'}: {args.out}/{records.RESULTS}")
    return 0


def _check_out(out: str | None) -> None:
    """``-o`` must name a directory (or nothing yet): not empty (an unset shell variable), not a file."""
    import os

    if out is None:
        return
    if not out.strip():
        raise config.ConfigError("-o is empty (an unset shell variable?); give the run directory, e.g. -o runs/x")
    if os.path.exists(out) and not os.path.isdir(out):
        raise config.ConfigError(f"-o {out} is a file, not a directory; give a run directory")


def _tasks(res: dict) -> tuple[int, int]:
    """``(tasks done, tasks of the stream)`` of a run record."""
    done = (res.get("metrics") or {}).get("tasks_done")
    if done is None:
        done = sum(1 for row in res.get("acc") or [] if row and row[0] is not None)
    total = len(res.get("tasks") or []) or len(res.get("acc") or []) or (res.get("stream") or {}).get("n_tasks") or 0
    return int(done), int(total)


def format_results(results: list[dict], matrix: bool = False) -> str:
    """Plain-text table of status, tasks done, ACC / BWT / plasticity / forgetting (and accuracy matrices).

    A failed or unfinished run is listed with its status and tasks done (e.g. ``3/5``): its metrics
    cover only those tasks. The failed runs' errors follow the table."""
    lines = [
        f"{'run':<28} {'method':<12} {'benchmark':<16} {'seed':>4} {'status':<9} {'tasks':>5} {'ACC':>7} "
        f"{'BWT':>7} {'plast.':>7} {'forget':>7} {'time s':>7}"
    ]
    fmt = lambda v: f"{v:7.2f}" if isinstance(v, (int, float)) else f"{'-':>7}"  # noqa: E731
    partial, errors = 0, []
    for res in results:
        p, m = res.get("params") or {}, res.get("metrics") or {}
        name, status = _short(res), res.get("status") or "-"
        done, total = _tasks(res)
        partial += status != "complete"
        if status == "failed":
            errors.append(f"  {name}: {res.get('error') or 'no error recorded'}")
        lines.append(
            f"{name:<28} {str(p.get('method')):<12} {str(p.get('benchmark')):<16} {str(p.get('seed')):>4} "
            f"{status:<9} {f'{done}/{total}':>5} {fmt(m.get('acc'))} {fmt(m.get('bwt'))} "
            f"{fmt(m.get('plasticity'))} {fmt(m.get('forgetting'))} "
            f"{fmt((res.get('timing') or {}).get('total_s'))}"
        )
    if partial:
        lines.append(
            f"\n{partial} run(s) not complete: their metrics cover only the tasks done. status 'running' "
            f"means still running or killed, 'stopped' stopped by Ctrl-C or a signal (the same command resumes "
            f"both); --seeds never averages them."
        )
    if errors:
        lines.append("errors of the failed runs:")
        lines.extend(errors)
    if matrix:
        for res in results:
            lines.append(f"\naccuracy matrix of {_short(res, 60)} (row i: after training task i; column j: task j)")
            for i, row in enumerate(res.get("acc") or []):
                if not row or row[0] is None:
                    continue
                lines.append(f"  {i + 1:>2} " + " ".join(f"{v:6.1f}" if v is not None else f"{'':>6}" for v in row))
    return "\n".join(lines)


def _short(res: dict, width: int = 28) -> str:
    """The run's directory (last components that fit), else its name."""
    d = res.get("_dir") or res.get("name") or "-"
    parts = d.replace("\\", "/").split("/")
    out = parts[-1]
    for p in reversed(parts[:-1]):
        if len(p) + 1 + len(out) > width:
            break
        out = f"{p}/{out}"
    return out[-width:]


def cmd_show(args) -> int:
    from ..analysis import tables
    from ..experiment import records

    runs = records.load_runs(args.paths)  # a results.json that is no run record: one warning, left out
    if not runs:
        print(f"no run records under {', '.join(args.paths)}", file=sys.stderr)
        return 1
    if args.seeds:
        print(format_seeds(tables.seed_summary(tables.runs_frame(runs), ignore=args.ignore)))
        return 0
    print(format_results(runs, matrix=args.matrix))
    return 0


def format_seeds(summary) -> str:
    """``nscl show --seeds``: one row per group of runs that share every other parameter: n (distinct
    seeds of complete runs), which seeds, mean ± std, and the runs left out (incomplete, duplicates)."""
    from ..analysis import tables

    if summary.empty:
        return "no runs"
    df = tables.format_summary(summary, digits=2, seeds=True, counts=True)
    if (summary["label"] == "all").all():  # no parameter differs between the runs
        df.insert(0, "group", "all runs")
    return df.to_string(index=False) + "\n\n" + tables.SUMMARY_LEGEND


def cmd_params(args) -> int:
    for name, p in sorted(config.PARAMS.items()):
        choices = f" [{'|'.join(map(str, p.choices))}]" if p.choices else ""
        allowed = f" ({p.describe_range()})" if p.range else ""
        print(f"{name:<22} {p.type:<12} default={p.default!r}{choices}{allowed}\n{'':<22} {p.help}")
    return 0


def _add_sweep(sub) -> None:
    from .sweep import add_cli  # python -m nscl sweep run|status|collect

    add_cli(sub)


def _add_suite(sub) -> None:
    from .suite import add_cli  # python -m nscl suite: the notebook suite behind `make run`

    add_cli(sub)


def _add_results(sub) -> None:
    from .results_page import add_cli  # python -m nscl results: docs/results.md from finished sweeps

    add_cli(sub)


COMMANDS = [_add_run, _add_sweep, _add_suite, _add_results]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nscl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    p = sub.add_parser("show", help="print the metrics of run directories")
    p.add_argument("paths", nargs="+")
    p.add_argument("--matrix", action="store_true", help="also print the accuracy matrices")
    p.add_argument("--seeds", action="store_true", help="mean ± std over seeds of runs that share all other parameters")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="with --seeds: leave this parameter out of the grouping (repeatable)",
    )
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("params", help="list every parameter with its default")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (config.ConfigError, DataError) as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, a folder that cannot be written: the file's name, no traceback
        if e.filename is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
