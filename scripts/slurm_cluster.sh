#!/usr/bin/env bash
# A single-node SLURM cluster with accounting on this machine, for the tests (tests/test_slurm.py) and for trying the
# SLURM launchers (docs/cluster.md):
#   sudo scripts/slurm_cluster.sh start    # installs (Debian packages, once) and starts it; idempotent
#   scripts/slurm_cluster.sh status        # exit 0 when it answers
#   sudo scripts/slurm_cluster.sh stop     # stops exactly the daemons `start` started (by their PIDs)
# Debian's slurm-wlm, slurmdbd, munge and mariadb-server (apt-get); no systemd, no cgroups: proctrack/linuxproc,
# task/affinity, select/cons_tres. One node, `localhost`, with this machine's CPUs and 90% of its memory; partitions
# `batch` (the default) and `urgent`, whose jobs preempt batch jobs by requeueing them (PreemptMode=REQUEUE). The
# daemons run in the foreground of their own sessions, their PIDs in $MAKEMORE_SLURM_DIR/pids; state, logs and the
# database live there too (default /var/lib/makemore-slurm). /etc/slurm/slurm.conf and slurmdbd.conf are written
# only where they are absent or this script wrote them: a real cluster's configuration is never overwritten.
# Exit codes of start: 0 started or already running; 2 not root; 3 cannot install (no apt-get); 1 a daemon failed.
set -euo pipefail

DIR=${MAKEMORE_SLURM_DIR:-/var/lib/makemore-slurm}
PIDS=$DIR/pids
LOGS=$DIR/log
DB_PORT=${MAKEMORE_SLURM_DB_PORT:-3307}
MARK="# written by makemore-lab scripts/slurm_cluster.sh"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop goes the other way

say() { echo "slurm_cluster: $*"; }
die() { say "$2" >&2; exit "$1"; }

alive() {  # alive NAME: its recorded PID runs that daemon (a recycled PID is not ours)
  local pid
  pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 1
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$1"
}

all_alive() {  # every daemon runs: started by this script (its PID), or for munged the system's
  for d in "${DAEMONS[@]}"; do
    alive "$d" || { [[ $d == munged && ! -e $PIDS/munged.pid ]] && munge -n >/dev/null 2>&1; } || return 1
  done
}

answers() { timeout 10 sinfo -h -o '%T' -n localhost 2>/dev/null | grep -q -E '^(idle|mixed|allocated|completing)'; }

install() {
  local missing=0
  for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do command -v "$cmd" >/dev/null || missing=1; done
  [[ $missing == 0 ]] && return
  command -v apt-get >/dev/null || die 3 "cannot install SLURM: no apt-get (Debian/Ubuntu only); install ${PACKAGES[*]} yourself"
  say "installing ${PACKAGES[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$LOGS/apt.log" 2>&1 || die 3 "apt-get update failed (see $LOGS/apt.log)"
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOGS/apt.log" 2>&1 \
    || die 3 "apt-get install ${PACKAGES[*]} failed (see $LOGS/apt.log)"
}

write_conf() {  # write_conf PATH MODE: stdin to PATH, atomically; a file we did not write is left alone
  local path=$1 mode=$2 tmp
  if [[ -e $path ]] && ! grep -qF "$MARK" "$path"; then
    die 1 "$path exists and was not written by this script: is this a real cluster? Left as it is"
  fi
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

configure() {
  local cpus mem_mb
  cpus=$(nproc --all)
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p /etc/slurm "$DIR/state" "$DIR/spool" "$DIR/run"
  write_conf /etc/slurm/slurm.conf 644 <<EOF
$MARK
ClusterName=makemore
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (SLURM's default: 120).
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# The scheduler looks every 2 s (SLURM's default: 60 s), so a requeued job starts as soon as its hold ends.
SchedulerParameters=sched_interval=2,bf_interval=2
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
# Time limits, cancellations and requeues end a job within seconds (SIGTERM, then SIGKILL after KillWait).
KillWait=10
MinJobAge=600
# A partition with a higher PriorityTier preempts the lower one's jobs; they are requeued (GraceTime=0: at once).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=batch Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  write_conf /etc/slurm/slurmdbd.conf 600 <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
}

launch() {  # launch NAME COMMAND...: in its own session, in the foreground (so $! is the daemon), PID recorded
  local name=$1; shift
  alive "$name" && return
  setsid "$@" >"$LOGS/$name.out" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
  started+=("$name")
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return; sleep 0.2; done
  die 1 "$what did not come up in ${seconds}s (logs: $LOGS)"
}

sql() { mariadb --socket="$DIR/run/mysqld.sock" -u root "$@"; }

start() {
  [[ $(id -u) == 0 ]] || die 2 "must run as root (it installs packages and starts SLURM's daemons)"
  if all_alive && answers; then
    say "already running (sinfo answers; logs in $LOGS)"
    return
  fi
  mkdir -p "$PIDS" "$LOGS"
  local t0=$SECONDS
  install
  configure
  started=()
  # munge: the credentials every SLURM message carries; its key comes with the Debian package.
  [[ -s /etc/munge/munge.key ]] || { mungekey --create --force >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  # A munged already answering (the system's: a package's postinst may start it where systemd runs) is used as is.
  alive munged || ! munge -n >/dev/null 2>&1 || { say "using the munged that is already running"; rm -f "$PIDS/munged.pid"; }
  munge -n >/dev/null 2>&1 || launch munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
  wait_for munged 10 munge -n
  # MariaDB for slurmdbd (accounting: sacct tells submitit that a job was cancelled), on 127.0.0.1:$DB_PORT.
  if [[ ! -d $DIR/mysql/mysql ]]; then
    mkdir -p "$DIR/mysql"
    chown mysql:mysql "$DIR/mysql"
    mariadb-install-db --user=mysql --datadir="$DIR/mysql" --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 \
      || die 1 "mariadb-install-db failed (see $LOGS/mariadb-install.log)"
  fi
  chown mysql:mysql "$DIR/run"
  launch mariadbd mariadbd --user=mysql --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" \
    --pid-file="$DIR/run/mariadbd.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$LOGS/mariadbd.log"
  wait_for mariadbd 30 sql -e 'SELECT 1'
  sql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
          CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  launch slurmdbd slurmdbd -D
  wait_for slurmdbd 30 sacctmgr -n list cluster
  sacctmgr -i -Q add cluster makemore >/dev/null 2>&1 || true   # registered once; "already exists" after that
  launch slurmctld slurmctld -D -i
  wait_for slurmctld 30 scontrol ping
  launch slurmd slurmd -D -N localhost
  for _ in $(seq 150); do answers && break; scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true; sleep 0.2; done
  answers || die 1 "the node did not become idle in 30s (logs: $LOGS)"
  say "started ${started[*]:-nothing} in $((SECONDS - t0))s; node localhost: $(nproc --all) CPUs (logs in $LOGS)"
}

stop() {
  local stopped=()
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    local name=${DAEMONS[i]} pid
    if alive "$name"; then
      pid=$(cat "$PIDS/$name.pid")
      kill -TERM "$pid"
      for _ in $(seq 100); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
      [[ -e /proc/$pid ]] && kill -KILL "$pid"
      stopped+=("$name")
    fi
    rm -f "$PIDS/$name.pid"
  done
  say "stopped ${stopped[*]:-nothing (none of its daemons was running)}"
}

status() {
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "$d: running (pid $(cat "$PIDS/$d.pid"))"
    elif [[ $d == munged ]] && munge -n >/dev/null 2>&1; then echo "munged: running (not started by this script)"
    else echo "$d: not running"; fi
  done
  answers && { sinfo; return 0; }
  return 1
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
