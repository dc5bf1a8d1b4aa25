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
    p.add_argument("-f", "--file", action="append", default=[], metavar="YAML",
                   help="parameter file, layered left to right")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter (YAML value), applied after the files")
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
    tr = trainer.Trainer(cfg, args.out)
    try:
        res = tr.fit()
    except trainer.NonFiniteLossError as e:
        where = f" (traceback in {args.out}/{records.ERROR})" if args.out else ""
        print(f"error: {e}{where}", file=sys.stderr)
        return 1
    print(format_results([res], matrix=True))
    if args.out:
        print(f"\n{'reused' if tr.reused else 'written'}: {args.out}/{records.RESULTS}")
    return 0


def format_results(results: list[dict], matrix: bool = False) -> str:
    """Plain-text table of ACC / BWT / plasticity / forgetting (and accuracy matrices)."""
    lines = [f"{'run':<28} {'method':<12} {'benchmark':<16} {'seed':>4} {'ACC':>7} {'BWT':>7} "
             f"{'plast.':>7} {'forget':>7} {'time s':>7}"]
    fmt = lambda v: f"{v:7.2f}" if isinstance(v, (int, float)) else f"{'-':>7}"  # noqa: E731
    for res in results:
        p, m = res["params"], res["metrics"]
        name = _short(res)
        lines.append(f"{name:<28} {p['method']:<12} {p['benchmark']:<16} {p['seed']:>4} {fmt(m['acc'])} "
                     f"{fmt(m['bwt'])} {fmt(m['plasticity'])} {fmt(m['forgetting'])} "
                     f"{fmt(res['timing']['total_s'])}")
    if matrix:
        for res in results:
            lines.append(f"\naccuracy matrix of {_short(res, 60)} "
                         f"(row i: after training task i; column j: task j)")
            for i, row in enumerate(res["acc"]):
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

    dirs = records.find_runs(args.paths)
    if not dirs:
        print(f"no results.json under {', '.join(args.paths)}", file=sys.stderr)
        return 1
    if args.seeds:
        df = tables.seed_summary(tables.runs_frame(args.paths), ignore=args.ignore)
        for _, r in df.iterrows():
            cells = "  ".join(f"{m.upper()} {r[m + '_mean']:6.2f} ± {r[m + '_std']:4.2f}"
                              for m in ("acc", "bwt", "plasticity"))
            print(f"{r['label']:<60} n={r['n']}  {cells}  ({r['time_s_mean']:.0f} s/run)")
        return 0
    print(format_results([records.load(d) for d in dirs], matrix=args.matrix))
    return 0


def cmd_params(args) -> int:
    for name, p in sorted(config.PARAMS.items()):
        choices = f" [{'|'.join(map(str, p.choices))}]" if p.choices else ""
        print(f"{name:<22} {p.type:<12} default={p.default!r}{choices}\n{'':<22} {p.help}")
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
    parser = argparse.ArgumentParser(prog="python -m nscl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    p = sub.add_parser("show", help="print the metrics of run directories")
    p.add_argument("paths", nargs="+")
    p.add_argument("--matrix", action="store_true", help="also print the accuracy matrices")
    p.add_argument("--seeds", action="store_true",
                   help="mean ± std over seeds of runs that share all other parameters")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="with --seeds: leave this parameter out of the grouping (repeatable)")
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
