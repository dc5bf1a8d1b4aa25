#!/usr/bin/env bash
# `make test` after ruff (PY: the project's python). Every step must pass; logs in results/make-test/.
#
#   at once: nbval on this machine's numeric path      (the committed notebooks' stored outputs,
#            nbval on OMP_NUM_THREADS=1                  exact except `training-numbers` cells,
#                      ATEN_CPU_CAPABILITY=default       within notebooks/output_tolerance.yaml)
#            the SLURM tests                             (mostly waiting on slurmctld's 30 s tick)
#   then:    every other test on every core             (the notebook tests read the first nbval
#                                                         run's records: NSCL_NBVAL_ROOT)
# Each notebook executes once per numeric path.
set -u
PY=${PY:-.venv/bin/python}
OUT=results/make-test
WORKERS=${TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}
rm -rf "$OUT" && mkdir -p "$OUT"
NBVAL=("$PY" -m pytest -q -p no:cacheprovider --nbval --nbval-current-env notebooks/)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

echo "nbval on this machine's numeric path and on OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default, and the SLURM tests, at once (logs in $OUT/)"
NSCL_OUTPUT_ROOT=$PWD/$OUT/default "${NBVAL[@]}" > "$OUT/nbval-default.log" 2>&1 &
own=$!
OMP_NUM_THREADS=1 "${PYTEST[@]}" -m slurm > "$OUT/slurm.log" 2>&1 &
slurm=$!
OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default NSCL_OUTPUT_ROOT=$PWD/$OUT/portable "${NBVAL[@]}" \
    > "$OUT/nbval-portable.log" 2>&1
portable=$?
wait $own
own=$?
echo "--- nbval, this machine's numeric path:"; tail -n 15 "$OUT/nbval-default.log"
echo "--- nbval, OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default:"; tail -n 15 "$OUT/nbval-portable.log"

rest=1
if [ $own = 0 ] && [ $portable = 0 ]; then
    NSCL_NBVAL_ROOT=$PWD/$OUT/default OMP_NUM_THREADS=1 "${PYTEST[@]}" -m 'not gpu and not slurm' \
        -n "$WORKERS" --dist worksteal
    rest=$?
fi
wait $slurm
slurm=$?
echo "--- the SLURM tests:"; tail -n 15 "$OUT/slurm.log"
[ $own = 0 ] && [ $portable = 0 ] && [ $rest = 0 ] && [ $slurm = 0 ]
