#!/usr/bin/env bash
# `make test`, set-up included (PY: the project's python; MAKE: the make that called it). Every step must
# pass; logs in results/make-test/, and each phase's start and duration in results/make-test/timings.txt.
#
#   set-up, at once:  the venv (make venv: pip)            the Debian packages that are missing
#                     then ruff check + format --check     (.ci/packages.sh: Fashion-MNIST, SLURM,
#                     beside Avalanche's import path        Chromium; one apt-get update + install)
#   then SLURM starts in the background (root; the SLURM tests wait for it), and at once:
#            nbval on this machine's numeric path      (the committed notebooks' stored outputs,
#            nbval on OMP_NUM_THREADS=1                  exact except `training-numbers` cells,
#                      ATEN_CPU_CAPABILITY=default       within notebooks/output_tolerance.yaml)
#            every other test, a worker per core + 1   (SLURM jobs, a browser, subprocesses: they
#                                                         wait as much as they compute, so nbval fills
#                                                         the cores meanwhile)
#   then:    the notebook tests (marker nbval_records)  (they read the first nbval run's records:
#                                                         NSCL_NBVAL_ROOT)
# Each notebook executes once per numeric path. SLURM's own time-limit clock is not waited for here
# (marker slurm_timelimit: make slurm-timelimit-check).
set -u
PY=${PY:-.venv/bin/python}
MAKE=${MAKE:-make}
OUT=results/make-test
WORKERS=${TEST_WORKERS:-$(( $(nproc 2>/dev/null || echo 2) + 1 ))}
rm -rf "$OUT" && mkdir -p "$OUT/phases"
T0=$EPOCHREALTIME
# kernels get 10 min to start: a safety net for a loaded machine, never a pass criterion
NBVAL=(-m pytest -q -p no:cacheprovider --nbval --nbval-current-env --nbval-kernel-startup-timeout=600 notebooks/)
PYTEST=(-m pytest -q -p no:cacheprovider)

# timed NAME COMMAND...: run it; "NAME start seconds rc" (seconds since make test began) in $OUT/phases/
timed() {
  local name=$1 start=$EPOCHREALTIME rc
  shift
  "$@"
  rc=$?
  awk -v n="$name" -v s="$start" -v e="$EPOCHREALTIME" -v t0="$T0" -v rc="$rc" \
    'BEGIN { printf "%-16s %7.1f %8.1f %3d\n", n, s - t0, e - s, rc }' > "$OUT/phases/$name"
  return $rc
}

write_timings() {
  local rc=$?
  awk -v e="$EPOCHREALTIME" -v t0="$T0" -v rc="$rc" 'BEGIN { printf "%-16s %7.1f %8.1f %3d\n", "total", 0, e - t0, rc }' \
    > "$OUT/phases/total"
  {
    echo "# make test: seconds per phase; start = seconds after make test began (phases that start together"
    echo "# ran at once); rc = exit status. Written by scripts/test.sh."
    echo "date     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu      $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
    echo "nproc    $(nproc)"
    installed=$(sed -n 's/^installing \(.*\) (Debian packages.*/\1/p' "$OUT/packages.log" 2>/dev/null | head -1)
    echo "apt      ${installed:-nothing to install (all present)}"
    printf "%-16s %7s %8s %3s\n" phase start seconds rc
    for p in packages venv avalanche ruff slurm-start nbval-default nbval-portable tests notebook-tests total; do
      cat "$OUT/phases/$p" 2>/dev/null
    done
  } > "$OUT/timings.txt"
  rm -rf "$OUT/phases"
  echo "--- timings ($OUT/timings.txt):"
  cat "$OUT/timings.txt"
}
trap write_timings EXIT

echo "set-up: the venv, and at once the missing Debian packages (log: $OUT/packages.log)"
timed packages bash .ci/packages.sh data slurm browser > "$OUT/packages.log" 2>&1 &
packages=$!
timed venv "$MAKE" --no-print-directory venv || exit 1
# Avalanche's import path for tests/test_avalanche.py (25 pinned packages, --no-deps; docs/library.md),
# in the background while ruff runs and apt finishes
timed avalanche "$PY" -m pip install -q --no-deps -r requirements/avalanche-min.txt > "$OUT/avalanche.log" 2>&1 &
avalanche=$!
timed ruff bash -c "'$PY' -m ruff check nscl tests && '$PY' -m ruff format --check nscl tests" || exit 1
wait $packages
packages=$?
cat "$OUT/packages.log"
[ $packages = 0 ] || { echo "error: .ci/packages.sh failed (log above): the tests need its packages"; exit 1; }
wait $avalanche || { cat "$OUT/avalanche.log"; echo "error: installing requirements/avalanche-min.txt failed"; exit 1; }
if [ "$(id -u)" = 0 ]; then  # no CPU: it waits for daemons while the tests start (the SLURM tests wait for it)
  timed slurm-start bash .ci/slurm.sh start > "$OUT/slurm-start.log" 2>&1 &
elif ! bash .ci/slurm.sh status >/dev/null 2>&1; then
  echo "WARNING: no SLURM running and not root: tests/test_sweep_slurm.py will FAIL. Start one with 'sudo .ci/slurm.sh start'."
fi

echo "at once: nbval on this machine's numeric path, nbval on OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default"
echo "         (logs in $OUT/), and every test but the notebook tests:"
NSCL_OUTPUT_ROOT=$PWD/$OUT/default timed nbval-default "$PY" "${NBVAL[@]}" > "$OUT/nbval-default.log" 2>&1 &
own=$!
OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default NSCL_OUTPUT_ROOT=$PWD/$OUT/portable \
  timed nbval-portable "$PY" "${NBVAL[@]}" > "$OUT/nbval-portable.log" 2>&1 &
portable=$!
OMP_NUM_THREADS=1 timed tests "$PY" "${PYTEST[@]}" -m 'not gpu and not nbval_records and not slurm_timelimit' \
  -n "$WORKERS" --dist load --maxschedchunk 1 --durations=25
tests=$?
wait $own
own=$?
wait $portable
portable=$?
echo "--- nbval, this machine's numeric path:"; tail -n 15 "$OUT/nbval-default.log"
echo "--- nbval, OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default:"; tail -n 15 "$OUT/nbval-portable.log"
[ $own = 0 ] || exit 1
echo "--- the notebook tests, on the records of the first nbval run:"
NSCL_NBVAL_ROOT=$PWD/$OUT/default OMP_NUM_THREADS=1 timed notebook-tests "$PY" "${PYTEST[@]}" -m 'nbval_records and not gpu'
records=$?
[ $portable = 0 ] && [ $tests = 0 ] && [ $records = 0 ]
