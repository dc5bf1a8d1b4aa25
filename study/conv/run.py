"""One run (as ``python -m nscl run``) plus the final accuracy of every task on its *val* split,
written to ``val.json`` beside ``results.json``: settings are chosen on those numbers, on a seed
the reported table does not use.

    python study/conv/run.py -o DIR -f params/base.yaml -p key=value ...
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from nscl.core import pruning
from nscl.experiment import config
from nscl.experiment.trainer import Trainer

ap = argparse.ArgumentParser()
ap.add_argument("-o", required=True)
ap.add_argument("-f", action="append", default=[])
ap.add_argument("-p", action="append", default=[])
ap.add_argument("--no-bn-l1", action="store_true", help="ablation: no L1 on the free units' BN scale")
args = ap.parse_args()
out = Path(args.o)
if (out / "val.json").exists():
    sys.exit(0)
if args.no_bn_l1:
    orig = pruning.UnitMasks.prepare_l1

    def prepare_l1(self):
        orig(self)
        self._free_bn = []

    pruning.UnitMasks.prepare_l1 = prepare_l1
cfg = config.resolve(args.f, config.parse_overrides(args.p))
tr = Trainer(cfg, out)
res = tr.fit()
val = [tr.accuracy(t, "val") for t in range(len(tr.stream))]
tmp = out / "val.json.tmp"
tmp.write_text(
    json.dumps(
        {
            "val_acc": val,
            "val_ACC": sum(val) / len(val),
            "no_bn_l1": args.no_bn_l1,
            "ACC": res["metrics"]["acc"],
            "BWT": res["metrics"]["bwt"],
        }
    )
)
os.replace(tmp, out / "val.json")
print(
    out.name,
    "val ACC %.2f  test ACC %.2f BWT %.2f" % (sum(val) / len(val), res["metrics"]["acc"], res["metrics"]["bwt"]),
)
