"""``python -m nscl.apps.sweep SPEC.json``: run one spec (the local executor's worker)."""

import json
import sys
from pathlib import Path

from ...experiment import records
from .state import OUTCOME, run_one


def main(argv: list[str]) -> int:
    spec_file = Path(argv[0])
    spec = json.loads(spec_file.read_text())
    res = run_one(spec)
    records.write_json(spec_file.parent / OUTCOME, res)
    print(json.dumps(res), flush=True)
    return 0


raise SystemExit(main(sys.argv[1:]))
