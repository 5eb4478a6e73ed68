#!/usr/bin/env bash
# Stop the daemons that start-local-cluster.sh started, in reverse start order, by the pid files
# listed in its manifest (never by process name), and wait until each has exited.
# Configs, database and logs stay under TS_SLURM_DIR, so the next start is fast; the link
# /etc/slurm/slurm.conf that start made to this folder's config is removed.
set -euo pipefail

DIR=${TS_SLURM_DIR:-/tmp/transfer-scaling-slurm}
MANIFEST=$DIR/run/daemons
WAIT_S=${TS_SLURM_WAIT_S:-30}

if [[ ! -s $MANIFEST ]]; then
    echo "stop-local-cluster: nothing to stop ($MANIFEST not found)"
    exit 0
fi

# Signal the process in the pid file if it is still the daemon named, then wait for it to exit.
stop_daemon() {
    local name=$1 pidfile=$2 pid deadline
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$name" ]] || return 0
    kill -TERM "$pid"
    deadline=$((SECONDS + WAIT_S))
    while [[ -e /proc/$pid ]]; do
        if ((SECONDS >= deadline)); then
            echo "stop-local-cluster: $name (pid $pid) still running after ${WAIT_S}s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    echo "stopped $name (pid $pid)"
}

tac "$MANIFEST" | while read -r name pidfile; do
    stop_daemon "$name" "$pidfile"
done

DEFAULT_CONF=/etc/slurm/slurm.conf
if [[ -L $DEFAULT_CONF && $(readlink "$DEFAULT_CONF") == "$DIR/etc/slurm.conf" ]]; then
    rm "$DEFAULT_CONF"
fi
