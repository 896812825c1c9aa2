#!/usr/bin/env bash
# Build the Dockerfile with podman and check the container serves /ksm, on a machine with no
# Docker engine and no image registry (podman with runc, a debootstrap'd base image).
#
#   scripts/container-smoke.sh            # as root; about 2-3 minutes
#   KEEP=1 scripts/container-smoke.sh     # keep the images (not the container) afterwards
#
# Steps: install podman + runc (only if missing); a containers.conf of our own (runc, lower
# ulimits) via CONTAINERS_CONF; a debootstrap'd bookworm base image carrying this machine's
# CA certificates, imported and tagged as debian:bookworm-slim; podman build; podman run
# with --device /dev/fuse --cap-add SYS_ADMIN and node_exporter on a loopback port; then
#   cat /ksm/sys/kernel/mm/ksm/pages_sharing   inside the container,
#   node_ksmd_pages_sharing                    from node_exporter's /metrics,
#   podman stop                                exits well before its 10 s timeout.
# Everything it created is removed on exit (container, images, work dir, network leftovers).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=ksmfs-smoke-$$
IMAGE=localhost/ksmfs-smoke:latest
BASE=localhost/debian:bookworm
BASE_ALIAS=docker.io/library/debian:bookworm-slim
HOST_PORT=${KSMFS_SMOKE_PORT:-19100}
WORK=$(mktemp -d /tmp/ksmfs-container-smoke.XXXXXX)

say() { printf '[container-smoke] %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (podman, debootstrap, FUSE in the container)"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

# shellcheck source=scripts/_podman.sh
source "$REPO/scripts/_podman.sh"
podman_net_snapshot
had_base=0
had_alias=0

cleanup() {
    set +e
    say "cleaning up"
    podman rm -f -t0 "$NAME" >/dev/null 2>&1
    if [ "${KEEP:-0}" != 1 ]; then
        podman rmi -f "$IMAGE" >/dev/null 2>&1
        [ "$had_alias" = 1 ] || podman rmi -f "$BASE_ALIAS" >/dev/null 2>&1
        [ "$had_base" = 1 ] || podman rmi -f "$BASE" >/dev/null 2>&1
        podman image prune -f >/dev/null 2>&1   # dangling layers of our build
    fi
    podman_net_cleanup
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. podman with runc ----------------------------------------------------------------
podman_setup "$WORK"

# --- 2. base image without a registry -------------------------------------------------
podman image exists "$BASE" && had_base=1
podman image exists "$BASE_ALIAS" && had_alias=1
if [ "$had_alias" = 0 ]; then
    [ "$had_base" = 1 ] || podman_base_image "$BASE" "$WORK"
    # The Dockerfile says FROM debian:bookworm-slim (a real public name, so that it builds
    # unchanged with Docker elsewhere): tag our image with that name.
    podman tag "$BASE" "$BASE_ALIAS"
fi

# --- 3. build and run -----------------------------------------------------------------
say "podman build (apt + pyfuse3 from source: a few minutes the first time)"
podman build --runtime runc -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; fail "podman build failed"; }
say "built $IMAGE ($(podman image inspect "$IMAGE" --format '{{.Size}}' | numfmt --to=iec))"

# A first argument that is not an option runs that command instead of the mount.
version=$(podman run --rm "${PODMAN_RUN_FLAGS[@]}" "$IMAGE" ksmfs --version)
[ "$version" = "ksmfs 0.1.0" ] || fail "ksmfs --version in the image printed '$version'"
say "OK: podman run IMAGE ksmfs --version -> $version"

podman run -d --name "$NAME" "${PODMAN_RUN_FLAGS[@]}" \
    --device /dev/fuse --cap-add SYS_ADMIN \
    -e KSMFS_NODE_EXPORTER_PORT=9100 -p "127.0.0.1:$HOST_PORT:9100" \
    "$IMAGE" >/dev/null

value=""
for _ in $(seq 60); do
    # timeout: a FUSE server that hangs would otherwise hang `cat` and podman exec with it.
    value=$(timeout 20 podman exec "$NAME" cat /ksm/sys/kernel/mm/ksm/pages_sharing \
        2>/dev/null || true)
    [[ $value =~ ^[0-9]+$ ]] && break
    [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
    sleep 0.5
done
if ! [[ $value =~ ^[0-9]+$ ]]; then
    podman logs "$NAME" 2>&1 | tail -20 >&2
    fail "cat /ksm/sys/kernel/mm/ksm/pages_sharing in the container gave '$value'"
fi
say "OK: cat /ksm/sys/kernel/mm/ksm/pages_sharing in the container -> $value"
timeout 20 podman exec "$NAME" sh -c 'grep . /ksm/sys/kernel/mm/ksm/*' >&2 || true

metric=""
for _ in $(seq 50); do
    metric=$(curl -fsS -m 10 "http://127.0.0.1:$HOST_PORT/metrics" 2>/dev/null \
        | grep '^node_ksmd_pages_sharing ' || true)
    [ -n "$metric" ] && break
    sleep 0.2
done
if [ -n "$metric" ]; then
    say "OK: node_exporter on 127.0.0.1:$HOST_PORT -> $metric"
else
    podman logs "$NAME" 2>&1 | tail -20 >&2
    fail "no node_ksmd_pages_sharing from node_exporter on 127.0.0.1:$HOST_PORT"
fi

start=$(date +%s%N)
podman stop -t 10 "$NAME" >/dev/null
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
say "podman stop took ${took_ms} ms, exit code $code"
podman logs "$NAME" 2>&1 | tail -5 >&2
if [ "$took_ms" -ge 9000 ]; then
    fail "the container ignored SIGTERM (podman stop waited for its timeout)"
fi
[ "$code" = 0 ] || fail "the container exited with $code after SIGTERM (want 0: clean unmount)"
say "PASS"
