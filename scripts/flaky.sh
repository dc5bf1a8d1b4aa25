#!/usr/bin/env bash
# `make flaky`: the tests that could depend on timing, FLAKY_N times (default 10) under make test's load;
# each test's pass count in results/flaky/counts.txt, each iteration's seconds in results/flaky/iterations.txt.
#
#   the tests:  marker `timing` (set by tests/conftest.py): markers slow, slurm, browser
#               (SLURM jobs, a browser, subprocesses, sweeps, notebooks through papermill), and every test
#               whose file or name says sweep, signal, stop, interrupt, Ctrl-C, lock, kill or resume; not
#               the notebook tests (nbval_records: they read files nbval wrote) nor gpu. One pytest run
#               per iteration, a worker per core + 1, as in make test.
#   the load:   nbval of the committed notebooks in a loop on both of make test's numeric paths, in the
#               background for the whole check (as in make test, where both run beside the tests).
# Exit status 0 only when every test passed FLAKY_N of FLAKY_N. PY: the project's python.
set -u
PY=${PY:-.venv/bin/python}
N=${FLAKY_N:-10}
OUT=results/flaky
WORKERS=${TEST_WORKERS:-$(( $(nproc 2>/dev/null || echo 2) + 1 ))}
rm -rf "$OUT" && mkdir -p "$OUT"
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

# the tests: marker `timing` (tests/conftest.py sets it), not the notebook tests nor gpu, nor SLURM's own
# time-limit clock (make slurm-timelimit-check: outside make test, three minutes an iteration)
SELECT='timing and not nbval_records and not gpu and not slurm_timelimit'
"${PYTEST[@]}" --collect-only -m "$SELECT" | grep '::' > "$OUT/tests.txt"
n_tests=$(wc -l < "$OUT/tests.txt")
[ "$n_tests" -gt 0 ] || { echo "error: no tests collected"; exit 1; }

# the load: nbval on both numeric paths, each in a loop, until the check ends
load() {
  local i=0
  while true; do
    i=$((i + 1))
    "$PY" -m pytest -q -p no:cacheprovider --nbval --nbval-current-env --nbval-kernel-startup-timeout=600 \
      notebooks/ > "$OUT/load-$1-$i.log" 2>&1
    echo "$(date -u +%H:%M:%S) nbval $1 pass $i rc $?" >> "$OUT/load.txt"
  done
}
set -m  # each background job in its own process group: the check ends the load's groups, nothing else
NSCL_OUTPUT_ROOT=$PWD/$OUT/load-default load default &
load_default=$!
OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default NSCL_OUTPUT_ROOT=$PWD/$OUT/load-portable load portable &
load_portable=$!
set +m
stop_load() { kill -- -"$load_default" -"$load_portable" 2>/dev/null; wait "$load_default" "$load_portable" 2>/dev/null; }
trap stop_load EXIT

echo "$n_tests tests, $N times, while nbval loads the cores (log: $OUT/load.txt)"
echo "# iteration  seconds  pytest-rc" > "$OUT/iterations.txt"
for i in $(seq 1 "$N"); do
  start=$EPOCHREALTIME
  OMP_NUM_THREADS=1 "${PYTEST[@]}" -rA --durations=15 -m "$SELECT" -n "$WORKERS" --dist load --maxschedchunk 1 \
    > "$OUT/iteration-$i.log" 2>&1
  rc=$?
  seconds=$(awk -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.0f", e - s }')
  echo "$i $seconds $rc" >> "$OUT/iterations.txt"
  echo "iteration $i/$N: ${seconds} s, $(tail -n 1 "$OUT/iteration-$i.log")"
done
stop_load
trap - EXIT

"$PY" - "$OUT" "$N" <<'PY'
"""Pass counts per test from the iterations' summaries (pytest -rA: one PASSED line per passed test)."""
import sys
from pathlib import Path

out, n = Path(sys.argv[1]), int(sys.argv[2])
tests = [t.strip() for t in (out / "tests.txt").read_text().splitlines() if t.strip()]
passed = dict.fromkeys(tests, 0)
for i in range(1, n + 1):
    log = out / f"iteration-{i}.log"
    ok = {ln.split(" ", 1)[1].strip() for ln in log.read_text().splitlines() if ln.startswith("PASSED ")}
    for t in tests:
        passed[t] += t in ok
lines = [f"{passed[t]}/{n}  {t}" for t in sorted(tests, key=lambda t: (passed[t], t))]
(out / "counts.txt").write_text(
    f"# passes out of {n} runs under nbval load (scripts/flaky.sh); seconds per run: iterations.txt\n"
    + "\n".join(lines)
    + "\n"
)
print("\n".join(lines))
flaky = [t for t in tests if passed[t] < n]
print(f"{len(tests) - len(flaky)}/{len(tests)} tests passed {n} of {n}" + (f"; NOT: {len(flaky)}" if flaky else ""))
sys.exit(1 if flaky else 0)
PY
