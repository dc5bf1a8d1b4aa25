#!/usr/bin/env bash
# A real single-node SLURM (munge + slurmctld + slurmd) on this machine, for the sweep tests
# (tests/test_sweep_slurm.py) and for trying `python -m nscl sweep run FILE --executor slurm`.
#
#   .ci/slurm.sh start    install slurmd, slurmctld and munge if missing (root, Debian: .ci/packages.sh),
#                         write a one-node config, start the daemons, wait until the node is idle.
#                         Idempotent, one start at a time (a lock file): a SLURM already up is reused,
#                         a node left DOWN/DRAINED by an earlier run is resumed, daemons that do not
#                         answer are restarted.
#   .ci/slurm.sh status   exit 0 when `sinfo` answers, else 1
#   .ci/slurm.sh stop     stop the three daemons this script starts
#
# A machine that already has a SLURM configuration NOT written by this script (a real cluster) is
# never touched: `start` only checks that it answers. (a single-node SLURM: munge + slurmctld + slurmd)
# (Debian 12, slurm-wlm 22.05). No accounting database: `sacct` does not work, and nscl.apps.sweep
# does not need it (it watches result files and `squeue`).
set -euo pipefail
cmd=${1:-start}
CONF=/etc/slurm/slurm.conf
MARK="# written by nscl .ci/slurm.sh"

answers() { timeout 10 sinfo -h -o %t >/dev/null 2>&1; }
# before restarting daemons that seem dead: a loaded machine may answer slowly (a restart kills running jobs)
answers_patiently() { for _ in 1 2 3; do timeout 30 sinfo -h -o %t >/dev/null 2>&1 && return 0; sleep 2; done; return 1; }
node_state() { timeout 10 sinfo -h -N -o %t 2>/dev/null | head -1; }
pid_of() { pgrep -x "$1" || true; }

stop_daemons() {
  for p in slurmd slurmctld munged; do
    pid=$(pid_of "$p")
    if [ -n "$pid" ]; then kill $pid 2>/dev/null || true; fi
  done
  for _ in $(seq 1 20); do
    [ -z "$(pid_of slurmd)$(pid_of slurmctld)$(pid_of munged)" ] && return 0
    sleep 0.5
  done
}

case "$cmd" in
  status)
    answers_patiently && { sinfo; exit 0; }
    echo "SLURM does not answer (sinfo)"; exit 1 ;;
  stop)
    stop_daemons; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|status|stop]" >&2; exit 2 ;;
esac

# A foreign SLURM (real cluster, or one configured by hand): use it, never rewrite it.
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  if answers; then echo "using the existing SLURM (configured outside nscl)"; sinfo; exit 0; fi
  echo "error: $CONF exists (not written by nscl) but SLURM does not answer; fix it or move the file" >&2
  exit 1
fi

if [ "$(id -u)" != 0 ]; then
  if answers; then sinfo; exit 0; fi
  echo "error: no running SLURM and not root: cannot install/start one." >&2
  echo "       run 'sudo .ci/slurm.sh start' (tests/test_sweep_slurm.py fails without it)" >&2
  exit 1
fi

# One start at a time (make test starts SLURM in the background, and each SLURM test asks for it too):
# the others wait here, then find it up. Nothing started below may inherit the lock (9>&-): a daemon
# holding it would block every later start.
exec 9>/var/lock/nscl-slurm.lock
flock -w 900 9 || { echo "error: another .ci/slurm.sh start holds /var/lock/nscl-slurm.lock for 15 min" >&2; exit 1; }

bash "$(dirname "$0")/packages.sh" slurm 9>&-  # slurmd, slurmctld, munge when missing

host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key

cpus=$(nproc)
mem=$(( $(free -m | awk '/Mem/{print $2}') - 2000 ))
[ "$mem" -gt 500 ] || mem=500
new=$(mktemp)
cat > "$new" <<CONF
$MARK (single node, for tests and local sweeps)
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=60
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

# Changed configuration (other host name, CPU count) or daemons that do not answer: restart.
if ! cmp -s "$new" "$CONF" 2>/dev/null || { [ -n "$(pid_of slurmctld)" ] && ! answers_patiently; }; then
  stop_daemons
  cp "$new" "$CONF"
fi
rm -f "$new"

[ -n "$(pid_of munged)" ] || su -s /bin/sh munge -c /usr/sbin/munged 9>&-
[ -n "$(pid_of slurmctld)" ] || slurmctld 9>&-
[ -n "$(pid_of slurmd)" ] || slurmd 9>&-

state=""
for _ in $(seq 1 240); do  # up to 2 min or more: a safety net for a loaded machine
  state=$(node_state || true)
  case "$state" in
    idle*|mix*|alloc*) break ;;
    down*|drain*|drng*|fail*)
      scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.5
done
case "$state" in
  idle*|mix*|alloc*) sinfo ;;
  *) echo "error: SLURM node state is '${state:-none}' (see /var/log/slurm/slurm*.log)" >&2; exit 1 ;;
esac
