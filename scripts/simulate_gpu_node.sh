#!/usr/bin/env bash
# A GPU node without internet, simulated on this machine, to prove that make gpu-check finds everything
# it needs there (docs/gpu.md). Not part of make test: the first run downloads torch (~2.7 GB with its
# CUDA libraries) and the check itself takes minutes.
#   1. the node's Python: a fresh venv (NODE_VENV, default /tmp/gpunode-venv) of NODE_PYTHON (a CPython
#      of the node's version, 3.12) with torch $TORCH / torchvision $TORCHVISION (the node's) and the node's
#      other packages that the check uses (scripts/wheelhouse.py node) -- then every package the node
#      does not list is removed again. Built once, reused; needs the package index.
#   2. make wheelhouse: the wheels of scripts/gpu_wheelhouse.txt (needs the index).
#   3. offline (PIP_NO_INDEX=1, no pip configuration, Fashion-MNIST hidden): a clean clone of this
#      repository's HEAD into $WORK, the wheelhouse copied in as the device tool's `carry` would, then
#      scripts/gpu_check.sh with GPU_CHECK_DEVICE=cpu (every step at CPU size) and that venv's python.
# Usage: bash scripts/simulate_gpu_node.sh   (TORCH_WHEELS=DIR: find torch wheels downloaded before there)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
NODE_PYTHON=${NODE_PYTHON:-python3.12}
NODE_VENV=${NODE_VENV:-/tmp/gpunode-venv}
TORCH=${TORCH:-2.11.0}
TORCHVISION=${TORCHVISION:-0.26.0}
WORK=${WORK:-/tmp/gpunode-check}
t_start=$SECONDS

if [ ! -x "$NODE_VENV/bin/python" ]; then
  echo "== simulate: building the node's Python in $NODE_VENV ($NODE_PYTHON, torch $TORCH)"
  "$NODE_PYTHON" -m venv "$NODE_VENV"
  "$NODE_VENV/bin/python" -m pip install -q ${TORCH_WHEELS:+--no-index --find-links "$TORCH_WHEELS"} \
    "torch==$TORCH" "torchvision==$TORCHVISION"
  mapfile -t NODE_REQS < <("$NODE_VENV/bin/python" "$REPO/scripts/wheelhouse.py" node 2>/dev/null)
  "$NODE_VENV/bin/python" -m pip install -q "${NODE_REQS[@]}"
  # only what the node lists (plus pip): anything else pulled in would hide a missing wheel
  mapfile -t EXTRA < <("$NODE_VENV/bin/python" - "$REPO/scripts/gpu_node_packages.txt" <<'PYEOF'
import re, sys
from importlib.metadata import distributions
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
node = {canon(l.split("#")[0].split("==")[0].strip()) for l in open(sys.argv[1]) if l.split("#")[0].strip()}
print("\n".join(sorted({canon(d.metadata["Name"]) for d in distributions()} - node - {"pip"})))
PYEOF
  )
  if [ "${#EXTRA[@]}" -gt 0 ]; then
    echo "== simulate: removing what the node does not have: ${EXTRA[*]}"
    "$NODE_VENV/bin/python" -m pip uninstall -q -y "${EXTRA[@]}"
  fi
fi
"$NODE_VENV/bin/python" -c 'import importlib.util as u, sys; missing = [m for m in ("papermill", "nbclient", "nbformat", "ipykernel", "jupyter_client", "submitit") if u.find_spec(m)]; sys.exit(f"the simulated node has {missing}" if missing else 0)'

echo "== simulate: make wheelhouse"
make -C "$REPO" -s wheelhouse PYTHON="${WHEELHOUSE_PYTHON:-python3}"

echo "== simulate: clean clone of $(git -C "$REPO" rev-parse --short HEAD) into $WORK/nscl, offline"
rm -rf "$WORK" && mkdir -p "$WORK"
git clone -q "$REPO" "$WORK/nscl"
cp -r "$REPO/wheelhouse" "$WORK/nscl/wheelhouse"
du -sh --exclude=.git "$WORK/nscl" | sed 's/^/== simulate: tree + wheelhouse (what the device copies): /'
t_check=$SECONDS
cd "$WORK/nscl"
rc=0
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null \
  TMPDIR="$WORK" FMNIST_DIR=/nonexistent GPU_CHECK_DEVICE=cpu GPU_CHECK_OUT="$WORK/out" PY="$NODE_VENV/bin/python" \
  bash scripts/gpu_check.sh || rc=$?
echo "== simulate: check $((SECONDS - t_check)) s, all $((SECONDS - t_start)) s; results in $WORK/out; exit $rc"
exit $rc
