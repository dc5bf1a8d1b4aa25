#!/usr/bin/env bash
# `make test` after ruff (PY: the project's python). Every step must pass; logs in results/make-test/.
#
#   at once: nbval on this machine's numeric path      (the committed notebooks' stored outputs,
#            nbval on OMP_NUM_THREADS=1                  exact except `training-numbers` cells,
#                      ATEN_CPU_CAPABILITY=default       within notebooks/output_tolerance.yaml)
#            every other test, a worker per core + 1   (SLURM jobs, a browser, subprocesses: they
#                                                         wait as much as they compute, so nbval fills
#                                                         the cores meanwhile)
#   then:    the notebook tests (marker nbval_records)  (they read the first nbval run's records:
#                                                         NSCL_NBVAL_ROOT)
# Each notebook executes once per numeric path.
set -u
PY=${PY:-.venv/bin/python}
OUT=results/make-test
WORKERS=${TEST_WORKERS:-$(( $(nproc 2>/dev/null || echo 2) + 1 ))}
rm -rf "$OUT" && mkdir -p "$OUT"
NBVAL=("$PY" -m pytest -q -p no:cacheprovider --nbval --nbval-current-env notebooks/)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

echo "at once: nbval on this machine's numeric path, nbval on OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default"
echo "         (logs in $OUT/), and every test but the notebook tests:"
NSCL_OUTPUT_ROOT=$PWD/$OUT/default "${NBVAL[@]}" > "$OUT/nbval-default.log" 2>&1 &
own=$!
OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default NSCL_OUTPUT_ROOT=$PWD/$OUT/portable "${NBVAL[@]}" \
    > "$OUT/nbval-portable.log" 2>&1 &
portable=$!
OMP_NUM_THREADS=1 "${PYTEST[@]}" -m 'not gpu and not nbval_records' -n "$WORKERS" --dist load --maxschedchunk 1
tests=$?
wait $own
own=$?
wait $portable
portable=$?
echo "--- nbval, this machine's numeric path:"; tail -n 15 "$OUT/nbval-default.log"
echo "--- nbval, OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default:"; tail -n 15 "$OUT/nbval-portable.log"
[ $own = 0 ] || exit 1
echo "--- the notebook tests, on the records of the first nbval run:"
NSCL_NBVAL_ROOT=$PWD/$OUT/default OMP_NUM_THREADS=1 "${PYTEST[@]}" -m 'nbval_records and not gpu'
records=$?
[ $portable = 0 ] && [ $tests = 0 ] && [ $records = 0 ]
