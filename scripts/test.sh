#!/usr/bin/env bash
# `make test` after ruff (PY: the project's python). Every step must pass; logs in results/make-test/.
#
#   at once: nbval on this machine's numeric path      (the committed notebooks' stored outputs,
#            nbval on OMP_NUM_THREADS=1                  exact except `training-numbers` cells,
#                      ATEN_CPU_CAPABILITY=default       within notebooks/output_tolerance.yaml)
#   then:    every test, one worker per core            (the notebook tests read the first nbval run's
#                                                         records: NSCL_NBVAL_ROOT)
# Measured on 2 idle cores: a worker more, or the SLURM tests beside nbval, only add contention (the
# work is CPU-bound).
# Each notebook executes once per numeric path.
set -u
PY=${PY:-.venv/bin/python}
OUT=results/make-test
WORKERS=${TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}
rm -rf "$OUT" && mkdir -p "$OUT"
NBVAL=("$PY" -m pytest -q -p no:cacheprovider --nbval --nbval-current-env notebooks/)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

echo "nbval on this machine's numeric path and on OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default, at once (logs in $OUT/)"
NSCL_OUTPUT_ROOT=$PWD/$OUT/default "${NBVAL[@]}" > "$OUT/nbval-default.log" 2>&1 &
own=$!
OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default NSCL_OUTPUT_ROOT=$PWD/$OUT/portable "${NBVAL[@]}" \
    > "$OUT/nbval-portable.log" 2>&1
portable=$?
wait $own
own=$?
echo "--- nbval, this machine's numeric path:"; tail -n 15 "$OUT/nbval-default.log"
echo "--- nbval, OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default:"; tail -n 15 "$OUT/nbval-portable.log"

[ $own = 0 ] && [ $portable = 0 ] || exit 1
NSCL_NBVAL_ROOT=$PWD/$OUT/default OMP_NUM_THREADS=1 "${PYTEST[@]}" -m 'not gpu' -n "$WORKERS" --dist load
