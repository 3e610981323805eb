#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for development and CI: munged,
# slurmctld and slurmd with their config, state and logs in one folder.
#
#   cluster/local_slurm.sh install     apt-get install slurm-wlm munge (as root)
#   cluster/local_slurm.sh start DIR   start the daemons; prints the SLURM_CONF to export
#   cluster/local_slurm.sh stop DIR    stop the daemons this script started, by pid
#
# No cgroup plugins (proctrack/linuxproc, task/none), so it runs in a container;
# every CPU of the machine, each shareable by 4 tasks so tests can run several.
set -euo pipefail

command=${1:?usage: $0 install | start DIR | stop DIR}

if [ "$command" = install ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  exit 0
fi

dir=$(realpath -m "${2:?usage: $0 $command DIR}")

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    if kill "$pid" 2>/dev/null; then
      # wait up to 10 s for it to go, then make sure
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
  done
}

if [ "$command" = stop ]; then
  stop
  exit 0
fi
[ "$command" = start ] || { echo "unknown command $command: install, start or stop" >&2; exit 2; }

for daemon in munged slurmctld slurmd; do
  command -v "$daemon" >/dev/null || {
    echo "$daemon is not installed: run $0 install (as root), or apt-get install slurm-wlm munge" >&2
    exit 1; }
done

mkdir -p "$dir"/{state,spool,munge}
chmod 700 "$dir/munge"
node=$(hostname -s)
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
ctld_port=${SLURMCTLD_PORT:-6817}
slurmd_port=${SLURMD_PORT:-6818}

head -c 1024 /dev/urandom >"$dir/munge/munge.key"
chmod 400 "$dir/munge/munge.key"
socket="$dir/munge/munge.socket"

cat >"$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=30
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
EOF

munged --force --socket="$socket" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
  --seed-file="$dir/munge/munge.seed"
export SLURM_CONF="$dir/slurm.conf"
slurmctld -i   # -i: start from no saved state
slurmd
# Ready when the node takes jobs.
for _ in $(seq 150); do
  if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "The cluster did not come up within 30 s; logs in $dir (slurmctld.log, slurmd.log, munged.log)." >&2
stop
exit 1
