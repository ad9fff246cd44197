#!/usr/bin/env bash
# Stop the daemons tests/slurm/start.sh started, by the PIDs it recorded (never by name), in reverse
# start order. Daemons it did not start (a munged already running) are left alone. Idempotent.
set -uo pipefail
source "$(dirname "$0")/env.sh"
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
  pidfile=$PIDS/$daemon.pid
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "[slurm stop] $daemon (pid $pid) stopped"
  fi
  rm -f "$pidfile"
done
