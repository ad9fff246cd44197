# Shared by start.sh and stop.sh: where the local test cluster keeps its state, logs and PID files.
# DATE_SLURM_STATE moves it (default /var/tmp/date-slurm); a fresh folder means a fresh cluster *and*
# a fresh accounting database (the two must go together, or sacct returns stale rows for reused job ids).
STATE=${DATE_SLURM_STATE:-/var/tmp/date-slurm}
PIDS=$STATE/pids                 # one <daemon>.pid per daemon this script started (and only those)
DB_PORT=${DATE_SLURM_DB_PORT:-3306}  # mariadb on 127.0.0.1 for slurmdbd
SLURM_CONF_FILE=/etc/slurm/slurm.conf   # Debian's default path, so sinfo/sbatch need no SLURM_CONF
DBD_CONF_FILE=/etc/slurm/slurmdbd.conf
MARKER="# written by tests/slurm/start.sh (DATE test cluster)"
