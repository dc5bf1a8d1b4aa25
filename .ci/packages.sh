#!/usr/bin/env bash
# The Debian packages the project's commands use, installed when missing, all in ONE `apt-get update` and
# ONE `apt-get install` (root only; `make test` runs it in the background while pip builds the venv):
#
#   data      dataset-fashion-mnist        unless $NSCL_DATA_ROOT is set or /usr/share/datasets/fashion-mnist
#                                          has the files (the notebooks and make run read it)
#   slurm     slurmd slurmctld munge       unless installed, or a SLURM answers (a real cluster): the sweep
#                                          tests' single-node SLURM (.ci/slurm.sh starts it)
#   browser   chromium                     unless installed or $NSCL_CHROMIUM is set (tests/test_lab_browser.py)
#
#   .ci/packages.sh [data] [slurm] [browser]     (none: all three)
#
# --no-install-recommends: the daemons and a headless browser need no desktop, printing or sound
# packages (34 packages instead of 157 on Debian 12). One nscl apt call at a time (a lock file), and apt
# waits for a dpkg lock another program holds. Not root, or no apt-get: data missing is an error (exit 1);
# SLURM or Chromium missing is a warning (their tests fail and say how to install them).
set -euo pipefail
FMNIST_DIR=/usr/share/datasets/fashion-mnist
[ $# -gt 0 ] || set -- data slurm browser

want=() why=()
for part in "$@"; do
  case "$part" in
    data)
      if [ -z "${NSCL_DATA_ROOT:-}" ] && ! ls "$FMNIST_DIR"/train-images-idx3-ubyte* >/dev/null 2>&1; then
        want+=(dataset-fashion-mnist) why+=(data)
      fi ;;
    slurm)
      if ! { command -v slurmctld && command -v slurmd && command -v munged && command -v sbatch; } >/dev/null \
         && ! timeout 10 sinfo -h >/dev/null 2>&1; then
        want+=(slurmd slurmctld munge) why+=(slurm)
      fi ;;
    browser)
      if [ -z "${NSCL_CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
        want+=(chromium) why+=(browser)
      fi ;;
    *) echo "usage: $0 [data] [slurm] [browser]" >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -gt 0 ] || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  rc=0
  for w in "${why[@]}"; do
    case "$w" in
      data) rc=1; echo "Fashion-MNIST not found in $FMNIST_DIR. Run 'sudo apt-get install dataset-fashion-mnist'," \
                       "or set NSCL_DATA_ROOT to a folder with the IDX files (or with internet: -p download=true)." >&2 ;;
      slurm) echo "WARNING: no SLURM and not root: tests/test_sweep_slurm.py will FAIL." \
                  "Install and start one with 'sudo .ci/slurm.sh start'." >&2 ;;
      browser) echo "WARNING: no chromium and not root: tests/test_lab_browser.py will FAIL." \
                    "Install it with 'sudo apt-get install chromium' (or set NSCL_CHROMIUM to a Chromium binary)." >&2 ;;
    esac
  done
  exit $rc
fi

echo "installing ${want[*]} (Debian packages, for: ${why[*]})"
# one nscl apt call at a time (make test's background install, make data, .ci/slurm.sh start); apt does
# not inherit the lock (9>&-): a daemon a package's script starts would hold it for good
exec 9>/var/lock/nscl-apt.lock
flock -w 1800 9 || { echo "error: another nscl apt call holds /var/lock/nscl-apt.lock for 30 min" >&2; exit 1; }
apt=(apt-get -qq -o DPkg::Lock::Timeout=600)  # another program's apt/dpkg: wait for it, do not fail
"${apt[@]}" update 9>&-
DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${want[@]}" >/dev/null 9>&-
