#!/usr/bin/env bash
# Start a one-node SLURM cluster with accounting on this machine, for the tests marked `slurm`.
# Needs root. Installs Debian's packages when missing, writes /etc/slurm/{slurm,slurmdbd}.conf (only
# if absent or written by this script before), starts munged -> mariadbd -> slurmdbd -> slurmctld ->
# slurmd on localhost, and waits until the node is idle. Idempotent: daemons already running (their
# PID file alive) are left alone. Stop with tests/slurm/stop.sh (by the recorded PIDs).
#
# Partitions: `debug` (default, high priority) and `lowprio` (preemptible: a debug job that needs the
# node sends lowprio jobs USR2, then requeues them after GraceTime).
set -euo pipefail
source "$(dirname "$0")/env.sh"
log() { echo "[slurm start] $*"; }
die() { echo "[slurm start] error: $*" >&2; exit 1; }
alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
wait_for() {  # wait_for <seconds> <what> <command...>
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$((limit * 2))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "$what not ready after ${limit}s (logs in $STATE/log)"
}
[ "$(id -u)" = 0 ] || die "run as root (the daemons run as root and munge)"

# --- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
   || ! command -v munged >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  log "installing slurm, munge, slurmdbd, mariadb (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
fi

mkdir -p "$PIDS" "$STATE/log" "$STATE/slurmctld" "$STATE/slurmd"

# --- configuration (never overwrite a slurm.conf someone else wrote)
for f in "$SLURM_CONF_FILE" "$DBD_CONF_FILE"; do
  if [ -f "$f" ] && ! head -1 "$f" | grep -qF "$MARKER"; then
    die "$f exists and was not written by this script; move it away to use the test cluster"
  fi
done
# the node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory): a configuration that differs
# from the hardware makes slurmd register fewer CPUs. (Not `nproc`: it honours OMP_NUM_THREADS.)
hardware=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
mkdir -p /etc/slurm
cat > "$SLURM_CONF_FILE" <<CONF
$MARKER
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
# requeued jobs otherwise wait ~120 s for old credentials to expire
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
ReturnToService=2
# accounting: sacct works, and submitit's job.result() raises on a killed job instead of hanging
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=2,bf_interval=5
KillWait=5
# preemption: a job in a higher PriorityTier partition requeues lowprio jobs, after their --signal
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
PartitionName=lowprio Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
CONF
cat > "$DBD_CONF_FILE" <<CONF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$PIDS/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 "$DBD_CONF_FILE"

# --- munged (as user munge); a munged someone else started is used as it is
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already answers"
else
  [ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  wait_for 10 munged bash -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$PIDS/munged.pid"
  log "munged started (pid $(cat "$PIDS/munged.pid"))"
fi

# --- mariadb: a private data dir under $STATE, on 127.0.0.1 only (socket and PID file in a folder
# the mysql user may write; the PID is then recorded with the others)
DB_RUN=$STATE/mysql-run
if ! alive mariadbd; then
  if [ ! -d "$STATE/mysql/mysql" ]; then
    install -d -o mysql -g mysql "$STATE/mysql"
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
      >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $STATE/log/mariadb-install.log"
  fi
  install -d -o mysql -g mysql "$DB_RUN"
  rm -f "$DB_RUN/mariadbd.pid"
  mariadbd --user=mysql --datadir="$STATE/mysql" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --socket="$DB_RUN/mysqld.sock" --pid-file="$DB_RUN/mariadbd.pid" --log-error="$STATE/log/mariadb.log" \
    </dev/null >/dev/null 2>&1 &  # detached from this shell: it outlives start.sh
  wait_for 30 mariadbd mariadb-admin --socket="$DB_RUN/mysqld.sock" ping
  cp "$DB_RUN/mariadbd.pid" "$PIDS/mariadbd.pid"
  log "mariadbd started (pid $(cat "$PIDS/mariadbd.pid"), 127.0.0.1:$DB_PORT)"
fi
mariadb --socket="$DB_RUN/mysqld.sock" -u root -e "
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

# --- slurmdbd, slurmctld, slurmd
if ! alive slurmdbd; then
  slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  log "slurmdbd started (pid $(cat "$PIDS/slurmdbd.pid"))"
fi
if ! alive slurmctld; then
  slurmctld
  wait_for 30 slurmctld scontrol ping
  log "slurmctld started (pid $(cat "$PIDS/slurmctld.pid"))"
fi
if ! alive slurmd; then
  slurmd -N localhost
  wait_for 10 slurmd test -f "$PIDS/slurmd.pid"
  log "slurmd started (pid $(cat "$PIDS/slurmd.pid"))"
fi

node_idle() { [ "$(sinfo -h -N -o %t | head -1)" = idle ]; }
for _ in $(seq 60); do
  node_idle && break
  case "$(sinfo -h -N -o %t | head -1)" in
    down*|drain*|unk*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
node_idle || die "node not idle: $(sinfo -N -l 2>&1 | tail -1) (logs in $STATE/log)"
log "cluster up: $(sinfo -h -o '%P %a %D %t' | tr '\n' ' ')"
