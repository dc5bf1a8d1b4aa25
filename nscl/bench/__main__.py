import importlib
import sys

from . import BENCHMARKS


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print("usage: python -m nscl.bench NAME [options]\n\nbenchmarks:")
        for name, what in BENCHMARKS.items():
            print(f"  {name:<12} {what}")
        return 2
    try:
        module = importlib.import_module(f"nscl.bench.{argv[0]}")
    except ModuleNotFoundError as e:
        print(f"benchmark {argv[0]!r} is not implemented yet ({e})", file=sys.stderr)
        return 2
    return module.main(argv[1:])


raise SystemExit(main())
