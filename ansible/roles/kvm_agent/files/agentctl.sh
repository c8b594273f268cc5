#!/bin/sh
# Start, stop or restart the KVM agent without systemd: a background process with a pid file.
# usage: agentctl start|stop|restart AGENT CONFIG PIDFILE LOGFILE TIMEOUT
# Prints "started <pid>" when it started one (Ansible reports a change), "running <pid>" when one
# was already running; fails with the log's tail when the agent exits instead of coming up.
set -eu
action=$1 agent=$2 config=$3 pidfile=$4 logfile=$5 timeout=$6

running() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

stop() {
    running || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt $((timeout * 10)) ]; then kill -KILL "$pid"; break; fi
        sleep 0.1
    done
    rm -f "$pidfile"
}

start() {
    if running; then echo "running $(cat "$pidfile")"; return 0; fi
    rm -f "$pidfile"
    # A background job of a script is no process group leader, so setsid execs in place: $! is the
    # agent itself, detached from this SSH session.
    setsid "$agent" --config "$config" --pid-file "$pidfile" </dev/null >>"$logfile" 2>&1 &
    child=$!
    i=0
    while [ "$i" -le $((timeout * 10)) ]; do
        if [ -s "$pidfile" ] && [ "$(cat "$pidfile")" = "$child" ]; then echo "started $child"; return 0; fi
        if ! kill -0 "$child" 2>/dev/null; then
            echo "the agent exited instead of starting; the end of $logfile:" >&2
            tail -n 20 "$logfile" >&2
            exit 1
        fi
        i=$((i + 1))
        sleep 0.1
    done
    echo "the agent did not come up within $timeout s; the end of $logfile:" >&2
    tail -n 20 "$logfile" >&2
    exit 1
}

case "$action" in
    start) start ;;
    stop) stop; echo stopped ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|restart AGENT CONFIG PIDFILE LOGFILE TIMEOUT" >&2; exit 2 ;;
esac
