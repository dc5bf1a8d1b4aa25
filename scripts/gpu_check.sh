#!/usr/bin/env bash
# make gpu-check: the one prepared GPU check (at most 8 minutes on one H100/H200: every step has a limit,
# 90 + 80 + 220 + 90 s; the e2e bench writes its JSON after each run, so a limit keeps what was measured).
#   1. pytest -m gpu                      CUDA vs CPU tiny run, projection invariance in float64, resume
#   2. python -m nscl.bench projection    NullSpaceAdam / official / Adam steps on CUDA (ResNet-18, MLP)
#   3. python -m nscl.bench e2e           first two tasks of the 10-split CIFAR-100 recipe at full size on
#                                         CIFAR-shaped synthetic data: s/step, boundary/epoch, memory,
#                                         checkpoint size, projected recipe time
#   4. notebook 00 through papermill with device=cuda
# Every JSON lands in one folder (default results/gpu_check/; GPU_CHECK_OUT overrides), with summary.json
# listing each step's status and seconds. Without a CUDA GPU it says so and exits 2, running nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-results/gpu_check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-check: NO GPU PRESENT: torch.cuda.is_available() is False on $(hostname). Nothing was run." >&2
  echo "gpu-check: run 'make gpu-check' on a node with an NVIDIA GPU and a CUDA build of torch." >&2
  exit 2
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
"$PY" -c 'import torch; print("gpu-check on", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'

NAMES=(); STATUS=(); TIMES=()
step() {  # step NAME LIMIT_S CMD...: run with a time limit, record exit status and seconds
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  NAMES+=("$name"); STATUS+=("$rc"); TIMES+=("$((SECONDS - t0))")
  echo "== $name: exit $rc after $((SECONDS - t0))s"
}

step pytest_gpu 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py --junitxml "$OUT/pytest_gpu.xml"
step bench_projection 80 "$PY" -m nscl.bench projection --device cuda --out "$OUT/projection.json"
step bench_e2e 220 "$PY" -m nscl.bench e2e --cases resnet18 --device cuda --gpu-epochs 2 \
  --settings finetune,principled_subset,official,principled,principled_fast --out "$OUT/e2e.json"

NB_ARGS=(-p device cuda -p output_dir "$OUT/notebook00")
if [ -z "${NSCL_DATA_ROOT:-}" ] && ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "gpu-check: Fashion-MNIST not found: notebook 00 runs on split_digits instead"
  NB_ARGS+=(-p benchmark split_digits)
fi
step notebook00 90 "$PY" -m papermill -k python3 --no-progress-bar notebooks/00_quickstart.ipynb \
  "$OUT/00_quickstart.ipynb" "${NB_ARGS[@]}"
[ -f "$OUT/notebook00/results.json" ] && cp "$OUT/notebook00/results.json" "$OUT/notebook00.json"

"$PY" - "$OUT" "${#NAMES[@]}" "${NAMES[@]}" "${STATUS[@]}" "${TIMES[@]}" <<'PYEOF'
import json, sys, platform
out, n = sys.argv[1], int(sys.argv[2])
names, status, secs = sys.argv[3:3 + n], sys.argv[3 + n:3 + 2 * n], sys.argv[3 + 2 * n:3 + 3 * n]
import torch
steps = [{"step": a, "exit": int(b), "seconds": int(c)} for a, b, c in zip(names, status, secs)]
summary = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "host": platform.node(), "steps": steps, "ok": all(s["exit"] == 0 for s in steps),
           "total_seconds": sum(s["seconds"] for s in steps)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
for s in steps:
    print(f"{s['step']:<18} {'ok' if s['exit'] == 0 else 'FAILED (exit %d)' % s['exit']:<16} {s['seconds']:>4} s")
print(f"written: {out}/summary.json ({'all ok' if summary['ok'] else 'FAILURES'})")
sys.exit(0 if summary["ok"] else 1)
PYEOF
