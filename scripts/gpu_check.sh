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
# listing each step's status and seconds, and gpu_check.log the whole output. Without a CUDA GPU it says
# so and exits 2, running nothing. docs/gpu.md says how to run it on a node without internet.
#
# Settings (environment):
#   PY                 the Python (default .venv/bin/python, else python3: a node's own preinstalled one)
#   GPU_CHECK_OUT      the results folder (default results/gpu_check)
#   WHEELHOUSE         wheels for what that Python lacks (default wheelhouse/, from make wheelhouse): when
#                      papermill is missing they are installed, offline, into GPU_CHECK_SITE (default
#                      ${TMPDIR:-/tmp}/nscl-gpu-site), which goes first on PYTHONPATH
#   GPU_CHECK_DEVICE   cuda (default) or cpu: the same steps at small sizes on CPU, to prove on a machine
#                      without a GPU that nothing is missing (scripts/simulate_gpu_node.sh); step 1 then
#                      only collects the gpu tests (they need CUDA)
#   FMNIST_DIR         Fashion-MNIST for notebook 00 when NSCL_DATA_ROOT is unset and the wheelhouse holds
#                      none (default /usr/share/datasets/fashion-mnist); else it runs on split_digits
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; fi
OUT=${GPU_CHECK_OUT:-results/gpu_check}
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
[ -d "$WHEELHOUSE" ] && WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu-check: $PY cannot import torch, so it cannot tell whether a GPU is here. Nothing was run." >&2
  echo "gpu-check: give PY a Python with a CUDA build of torch (e.g. a node's own Python or module; docs/gpu.md)." >&2
  exit 2
fi
case $DEVICE in
  cuda)
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      echo "gpu-check: NO GPU PRESENT: torch.cuda.is_available() is False on $(hostname) ($PY). Nothing was run." >&2
      echo "gpu-check: run it on a node with an NVIDIA GPU and a CUDA build of torch (docs/gpu.md)." >&2
      exit 2
    fi ;;
  cpu) ;;
  *) echo "gpu-check: GPU_CHECK_DEVICE must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;;
esac
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_check.log") 2>&1

# The notebook stack from the wheelhouse, offline, when this Python lacks it (a GPU node's own Python)
if ! "$PY" -c 'import papermill, ipykernel' 2>/dev/null; then
  if ! ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
    echo "gpu-check: $PY has no papermill/ipykernel and there is no wheelhouse in '$WHEELHOUSE':" \
         "run 'make wheelhouse' where pip reaches the package index and bring the folder along (docs/gpu.md)." >&2
    exit 2
  fi
  SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/nscl-gpu-site}
  echo "gpu-check: installing $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels from $WHEELHOUSE into $SITE (no index)"
  t0=$SECONDS
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --upgrade --target "$SITE" "$WHEELHOUSE"/*.whl || { echo "gpu-check: installing the wheelhouse failed" >&2; exit 2; }
  echo "gpu-check: wheelhouse installed in $((SECONDS - t0)) s"
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
"$PY" - "$DEVICE" <<'PYEOF'
import sys, platform, torch
dev = sys.argv[1]
where = torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
print(f"gpu-check on {where} | Python {platform.python_version()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
PYEOF

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

if [ "$DEVICE" = cuda ]; then
  step pytest_gpu 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py --junitxml "$OUT/pytest_gpu.xml"
  step bench_projection 80 "$PY" -m nscl.bench projection --device cuda --out "$OUT/projection.json"
  step bench_e2e 220 "$PY" -m nscl.bench e2e --cases resnet18 --device cuda --gpu-epochs 2 \
    --settings finetune,principled_subset,official,principled,principled_fast --out "$OUT/e2e.json"
else  # the same code paths, small: every import, CLI and JSON writer, at CPU sizes
  step pytest_gpu 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider --collect-only tests/test_gpu.py
  step bench_projection 80 "$PY" -m nscl.bench projection --device cpu --threads 1 --models mlp --steps 2 --warmup 1 \
    --out "$OUT/projection.json"
  step bench_e2e 220 "$PY" -m nscl.bench e2e --cases resnet18 --device cpu --threads 1 --resnet-steps 1 --width 8 \
    --settings finetune,principled_subset,official,principled,principled_fast --out "$OUT/e2e.json"
fi

NB_ARGS=(-p device "$DEVICE" -p output_dir "$OUT/notebook00")
if [ -z "${NSCL_DATA_ROOT:-}" ] && ls "$WHEELHOUSE"/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then
  export NSCL_DATA_ROOT=$WHEELHOUSE/fashion-mnist
fi
if [ -z "${NSCL_DATA_ROOT:-}" ] && ! ls "$FMNIST_DIR"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "gpu-check: Fashion-MNIST not found (NSCL_DATA_ROOT, $WHEELHOUSE/fashion-mnist, $FMNIST_DIR):" \
       "notebook 00 runs on split_digits instead"
  NB_ARGS+=(-y "benchmarks: [split_digits]")
fi
step notebook00 90 "$PY" -m papermill -k python3 --no-progress-bar notebooks/00_quickstart.ipynb \
  "$OUT/00_quickstart.ipynb" "${NB_ARGS[@]}"
[ -f "$OUT/notebook00/results.json" ] && cp "$OUT/notebook00/results.json" "$OUT/notebook00.json"

"$PY" - "$OUT" "$DEVICE" "${#NAMES[@]}" "${NAMES[@]}" "${STATUS[@]}" "${TIMES[@]}" <<'PYEOF'
import json, sys, platform
out, dev, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
names, status, secs = sys.argv[4:4 + n], sys.argv[4 + n:4 + 2 * n], sys.argv[4 + 2 * n:4 + 3 * n]
import torch
steps = [{"step": a, "exit": int(b), "seconds": int(c)} for a, b, c in zip(names, status, secs)]
summary = {"device": dev, "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None,
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "host": platform.node(), "steps": steps, "ok": all(s["exit"] == 0 for s in steps),
           "total_seconds": sum(s["seconds"] for s in steps)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
for s in steps:
    print(f"{s['step']:<18} {'ok' if s['exit'] == 0 else 'FAILED (exit %d)' % s['exit']:<16} {s['seconds']:>4} s")
print(f"written: {out}/summary.json ({'all ok' if summary['ok'] else 'FAILURES'}; {summary['total_seconds']} s)")
sys.exit(0 if summary["ok"] else 1)
PYEOF
