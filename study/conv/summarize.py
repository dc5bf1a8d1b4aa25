"""Tables of the conv-pruning study from run directories named ``<label>_s<seed>``.

    python study/conv/summarize.py DIR [DIR ...] > table.md

ACC / BWT mean ± std over seeds per label, then for pruning runs the channels (units) freed per
layer after each task (mean over seeds), then every run's null-space dimension per layer input
after each task (mean over seeds).
"""

import json
import re
import statistics as st
import sys
from collections import defaultdict
from pathlib import Path


def short(layer):
    return layer.replace("backbone.", "").replace("layers.", "")


def pm(xs, digits=2):
    if not xs:
        return ""
    sd = st.stdev(xs) if len(xs) > 1 else 0.0
    return f"{st.mean(xs):.{digits}f} ± {sd:.{digits}f}"


runs = defaultdict(dict)
for root in sys.argv[1:]:
    for res in sorted(Path(root).glob("*/results.json")):
        m = re.match(r"(.+)_s(\d+)$", res.parent.name)
        if not m:
            continue
        r = json.loads(res.read_text())
        if r.get("status") != "complete":
            continue
        runs[m.group(1)][int(m.group(2))] = r

print("| run | seeds | ACC | BWT | plasticity |")
print("|---|---|---|---|---|")
for label, by_seed in runs.items():
    ms = [r["metrics"] for r in by_seed.values()]
    print(
        f"| {label} | {','.join(map(str, sorted(by_seed)))} | {pm([m['acc'] for m in ms])} | "
        f"{pm([m['bwt'] for m in ms])} | {pm([m['plasticity'] for m in ms])} |"
    )

print("\nUnits pruned (freed) per layer after each task, mean over seeds (of layer width):\n")
for label, by_seed in runs.items():
    recs = [r["method_diagnostics"].get("prune") for r in by_seed.values()]
    if not all(recs):
        continue
    layers = list(recs[0][0]["pruned"])
    sizes = by_seed[min(by_seed)]["method_diagnostics"]["units"]
    T = len(recs[0])
    print(
        f"{label}: "
        + "; ".join(
            f"{short(n)} (/{sizes[n]['size']}): "
            + " ".join(f"{st.mean(rc[t]['pruned'][n] for rc in recs):.1f}" for t in range(T))
            for n in layers
        )
    )

print("\nNull-space dimension of each layer's input after each task, mean over seeds (of d):\n")
for label, by_seed in runs.items():
    ns = [r["null_space"] for r in by_seed.values()]
    parts = []
    for n, h in ns[0].items():
        T = len(h["dims"])
        parts.append(
            f"{short(n)} (/{h['d']}): " + " ".join(f"{st.mean(x[n]['dims'][t] for x in ns):.0f}" for t in range(T))
        )
    print(f"{label}: " + "; ".join(parts))
