#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine (munge, MariaDB, slurmdbd, slurmctld, slurmd),
# with accounting (the Snakemake SLURM executor polls sacct) and two fake GPUs as GRES.
# Every config, state, log and pid file lives under TS_SLURM_DIR (default /tmp/transfer-scaling-slurm).
# Idempotent: daemons already running from that folder are kept.
# Exit codes: 0 cluster up; 3 cannot run here (not root, no apt-get for missing packages, another SLURM
# owns /etc/slurm/slurm.conf), with a one-line reason; 1 a daemon did not come up (tail of its log shown).
set -euo pipefail

DIR=${TS_SLURM_DIR:-/tmp/transfer-scaling-slurm}
PARTITION=local
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
WAIT_S=${TS_SLURM_WAIT_S:-60}

ETC=$DIR/etc LOG=$DIR/log RUN=$DIR/run STATE=$DIR/state
MUNGE_DIR=$DIR/munge MYSQL_DIR=$DIR/mysql
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MYSQL_SOCKET=$MYSQL_DIR/mysqld.sock
export SLURM_CONF=$ETC/slurm.conf
# Daemons, in start order, with the pid file each one writes; stop-local-cluster.sh reads this list.
MANIFEST=$RUN/daemons

cannot_run() { echo "start-local-cluster: cannot run here: $*" >&2; exit 3; }
die() { echo "start-local-cluster: $*" >&2; exit 1; }

# Print the tail of a log and fail: a daemon that did not come up says why in its log.
die_with_log() {
    local message=$1 logfile=$2
    echo "start-local-cluster: $message; last lines of $logfile:" >&2
    tail -n 25 "$logfile" >&2 2>/dev/null || echo "(no log written)" >&2
    exit 1
}

# True if the pid file names a live process whose command is $2 (guards against reused pids).
running() {
    local pidfile=$1 comm=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$comm" ]]
}

# Poll a command until it succeeds; fail after WAIT_S, or at once when the daemon ($1, pid file $2)
# has written its pid and died.
wait_for_daemon() {
    local comm=$1 pidfile=$2 deadline=$((SECONDS + WAIT_S))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)) || { [[ -s $pidfile ]] && ! running "$pidfile" "$comm"; }; then
            return 1
        fi
        sleep 0.5
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
node_state() { sinfo -h -N -p "$PARTITION" -o %T 2>/dev/null | head -n 1; }
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated)$ ]]; }

print_summary() {
    cat <<EOF
SLURM test cluster is up (node $(sinfo -h -N -o %N | head -n 1), partition '$PARTITION', state $(node_state)).
  folder:      $DIR
  configs:     $ETC (slurm.conf, gres.conf, slurmdbd.conf)
  logs:        $LOG
  pid files:   listed in $MANIFEST
  stop with:   TS_SLURM_DIR=$DIR $(dirname "$(readlink -f "$0")")/stop-local-cluster.sh
  clients:     find it through /etc/slurm/slurm.conf -> $SLURM_CONF (or set SLURM_CONF)
SLURM_CONF=$SLURM_CONF
PARTITION=$PARTITION
EOF
}

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || cannot_run "packages ${missing[*]} are missing and apt-get is not available"
    echo "Installing ${missing[*]} ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$DIR/apt.log" 2>&1 || cannot_run "apt-get update failed (see $DIR/apt.log)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1 \
        || cannot_run "apt-get install ${missing[*]} failed (see $DIR/apt.log)"
}

make_dirs() {
    install -d -m 755 "$ETC" "$LOG" "$RUN" "$STATE/slurmctld" "$STATE/slurmd" "$DIR/dev"
    install -d -m 755 -o munge -g munge "$MUNGE_DIR"
    install -d -m 750 -o mysql -g mysql "$MYSQL_DIR"
    local i
    for i in 0 1; do
        [[ -c $DIR/dev/gpu$i ]] || mknod "$DIR/dev/gpu$i" c 1 3 || die "mknod $DIR/dev/gpu$i failed (fake GPUs need character devices)"
    done
}

# The node line comes from the hardware slurmd sees, with RealMemory 5% under MemTotal so that
# the node is never marked INVAL for claiming more memory than the kernel reports.
node_line() {
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
    slurmd -C | head -n 1 | sed -E "s/RealMemory=[0-9]+/RealMemory=$mem_mb/"
}

write_configs() {
    local db_pass
    [[ -s $ETC/db.pass ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/db.pass")
    db_pass=$(<"$ETC/db.pass")

    cat >"$ETC/slurm.conf" <<EOF
ClusterName=tslocal
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
MailProg=/bin/true
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoragePass=$MUNGE_SOCKET
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
GresTypes=gpu
$(node_line) Gres=gpu:fake:2 NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    echo "Name=gpu Type=fake File=$DIR/dev/gpu[0-1]" >"$ETC/gres.conf"

    (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
    )
}

start_munged() {
    running "$MUNGE_DIR/munged.pid" munged && return 0
    rm -f "$MUNGE_DIR/munged.pid"
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        || die_with_log "munged did not start" "$MUNGE_DIR/munged.log"
    wait_for_daemon munged "$MUNGE_DIR/munged.pid" test -S "$MUNGE_SOCKET" || die_with_log "munged socket $MUNGE_SOCKET did not appear" "$MUNGE_DIR/munged.log"
}

mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root "$@"; }

start_mariadbd() {
    running "$MYSQL_DIR/mariadbd.pid" mariadbd && return 0
    rm -f "$MYSQL_DIR/mariadbd.pid"
    if [[ ! -d $MYSQL_DIR/data/mysql ]]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install-db.log" 2>&1 \
            || die_with_log "mariadb-install-db failed" "$LOG/mariadb-install-db.log"
    fi
    setsid mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR/data" --socket="$MYSQL_SOCKET" \
        --pid-file="$MYSQL_DIR/mariadbd.pid" --skip-networking --log-error="$LOG/mariadbd.log" \
        </dev/null >/dev/null 2>&1 &
    wait_for_daemon mariadbd "$MYSQL_DIR/mariadbd.pid" mysql_root -e 'SELECT 1' || die_with_log "mariadbd did not answer on $MYSQL_SOCKET" "$LOG/mariadbd.log"
    local db_pass
    db_pass=$(<"$ETC/db.pass")
    # CREATE USER IF NOT EXISTS keeps an old password, so ALTER USER sets the current one.
    mysql_root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$db_pass';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$db_pass';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
    running "$RUN/slurmdbd.pid" slurmdbd && return 0
    rm -f "$RUN/slurmdbd.pid"
    # slurmdbd connects to StorageHost=localhost through the client library's default socket.
    MYSQL_UNIX_PORT=$MYSQL_SOCKET slurmdbd || die_with_log "slurmdbd did not start" "$LOG/slurmdbd.log"
    wait_for_daemon slurmdbd "$RUN/slurmdbd.pid" port_open 6819 || die_with_log "slurmdbd did not listen on port 6819" "$LOG/slurmdbd.log"
}

start_slurmctld() {
    running "$RUN/slurmctld.pid" slurmctld && return 0
    rm -f "$RUN/slurmctld.pid"
    slurmctld || die_with_log "slurmctld did not start" "$LOG/slurmctld.log"
    wait_for_daemon slurmctld "$RUN/slurmctld.pid" scontrol ping || die_with_log "slurmctld did not answer" "$LOG/slurmctld.log"
}

start_slurmd() {
    running "$RUN/slurmd.pid" slurmd && return 0
    rm -f "$RUN/slurmd.pid"
    slurmd || die_with_log "slurmd did not start" "$LOG/slurmd.log"
}

# Snakemake's job step strips SLURM_* variables (SLURM_CONF too) before its nested srun, so clients
# must find the config at the default path: link it there unless another cluster's config is in the way.
link_default_conf() {
    local default=/etc/slurm/slurm.conf
    if [[ -e $default || -L $default ]] && [[ $(readlink "$default") != "$SLURM_CONF" ]]; then
        cannot_run "$default belongs to another SLURM installation; this test cluster needs that path"
    fi
    install -d -m 755 /etc/slurm
    ln -sfn "$SLURM_CONF" "$default"
}

write_manifest() {
    cat >"$MANIFEST" <<EOF
munged $MUNGE_DIR/munged.pid
mariadbd $MYSQL_DIR/mariadbd.pid
slurmdbd $RUN/slurmdbd.pid
slurmctld $RUN/slurmctld.pid
slurmd $RUN/slurmd.pid
EOF
}

all_running() {
    [[ -s $MANIFEST ]] || return 1
    local name pidfile
    while read -r name pidfile; do
        running "$pidfile" "$name" || return 1
    done <"$MANIFEST"
}

main() {
    ((EUID == 0)) || cannot_run "must run as root (it installs packages and starts system daemons)"
    if all_running && node_ready; then
        echo "All daemons already running from $DIR; nothing started."
        print_summary
        return 0
    fi
    install -d -m 755 "$DIR"
    install_packages
    make_dirs
    write_configs
    link_default_conf
    write_manifest
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_for_daemon slurmd "$RUN/slurmd.pid" node_ready || die_with_log "node not idle after ${WAIT_S}s (state: '$(node_state)')" "$LOG/slurmctld.log"
    print_summary
}

main "$@"
