#!/usr/bin/env bash
# Container entry point (see Dockerfile):
#   ksmfs-entrypoint [--node-exporter[=PORT]] [ksmfs mount options...]
#       mounts a simulated kernel at $KSMFS_MOUNTPOINT (default /ksm) in the foreground
#       and, with --node-exporter or KSMFS_NODE_EXPORTER_PORT set, also serves its KSM
#       counters with prometheus-node-exporter (ksmd collector) on that port;
#   ksmfs-entrypoint COMMAND [ARGS...]
#       runs COMMAND instead (e.g. `bash`, or `ksmfs run kvm-guests`).
# SIGTERM/SIGINT stop node_exporter and let ksmfs unmount cleanly, so `docker stop` is quick.
set -euo pipefail

MNT=${KSMFS_MOUNTPOINT:-/ksm}
PORT=${KSMFS_NODE_EXPORTER_PORT:-}
args=()
for arg in "$@"; do
    case $arg in
        --node-exporter) PORT=${PORT:-9100} ;;
        --node-exporter=*) PORT=${arg#*=} ;;
        *) args+=("$arg") ;;
    esac
done
if [ ${#args[@]} -gt 0 ] && [[ ${args[0]} != -* ]]; then
    exec "${args[@]}"
fi

mkdir -p "$MNT"
ksmfs mount "$MNT" --foreground ${args[@]+"${args[@]}"} &
ksmfs_pid=$!
exporter_pid=""

stop() {
    [ -n "$exporter_pid" ] && kill -TERM "$exporter_pid" 2>/dev/null
    kill -TERM "$ksmfs_pid" 2>/dev/null || true
}
trap stop TERM INT

if [ -n "$PORT" ]; then
    if ! command -v prometheus-node-exporter >/dev/null; then
        echo "ksmfs-entrypoint: prometheus-node-exporter is not in this image" \
            "(built with --build-arg NODE_EXPORTER=0)" >&2
    else
        # Wait for the mount: node_exporter reads the files at every scrape, but a scrape
        # before the mount would report errors.
        for _ in $(seq 300); do
            [ -r "$MNT/sys/kernel/mm/ksm/pages_sharing" ] && break
            kill -0 "$ksmfs_pid" 2>/dev/null || break
            sleep 0.1
        done
        prometheus-node-exporter --web.listen-address=":$PORT" --path.sysfs="$MNT/sys" \
            --collector.disable-defaults --collector.ksmd &
        exporter_pid=$!
        echo "ksmfs-entrypoint: node_exporter on port $PORT serving $MNT/sys" >&2
    fi
fi

# `wait` returns early when a trapped signal arrives; keep waiting until ksmfs has exited
# (it unmounts first), then pass its exit status on.
rc=0
while :; do
    wait "$ksmfs_pid" && rc=0 || rc=$?
    kill -0 "$ksmfs_pid" 2>/dev/null || break
done
if [ -n "$exporter_pid" ]; then
    kill -TERM "$exporter_pid" 2>/dev/null || true
    wait "$exporter_pid" 2>/dev/null || true
fi
exit "$rc"
