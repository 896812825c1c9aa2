#!/usr/bin/env bash
# A newcomer's first hour, replayed: the README's two commands in a fresh Debian bookworm
# container, on the repository cloned into /root, ending with pytest's summary.
#
#   scripts/container-test.sh                 # as root; 10-20 minutes (podman, no registry)
#   scripts/container-test.sh tests/test_cli.py -x   # arguments go to setup-test.sh/pytest
#
# What it does, as a new user would:
#   1. podman with runc and a debootstrap'd bookworm base image (scripts/_podman.sh);
#   2. a container run with only `--device /dev/fuse --cap-add SYS_ADMIN` (so /sys is
#      read-only, as in any unprivileged container), with a `git clone` of this
#      repository's committed HEAD given to it;
#   3. inside: apt-get install git, git clone into /root/ksmfs (a 0700 home), then
#        scripts/setup-demo.sh      (the demo mount stays up, as the README's order implies)
#        scripts/setup-test.sh      (the suite, with the demo mount still running)
#   4. prints the tail of the test run and exits with pytest's status.
# Everything it created is removed on exit (container, image, work dir, network leftovers);
# KEEP=1 keeps the container and the image for a look inside (podman exec -it NAME bash).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=ksmfs-newcomer-$$
BASE=localhost/ksmfs-newcomer-base:$$
WORK=$(mktemp -d /tmp/ksmfs-container-test.XXXXXX)
LOG=$WORK/inside.log
T0=$SECONDS

say() { printf '[container-test %3d s] %s\n' "$((SECONDS - T0))" "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# shellcheck source=scripts/_podman.sh
source "$REPO/scripts/_podman.sh"

[ "$(id -u)" -eq 0 ] || fail "run as root (podman, debootstrap, FUSE in the container)"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"
command -v git >/dev/null || fail "git is needed to hand the repository to the container"

cleanup() {
    set +e
    if [ "${KEEP:-0}" = 1 ]; then
        say "kept: container $NAME, image $BASE (podman rm -f $NAME; podman rmi $BASE)"
    else
        podman rm -f -t0 "$NAME" >/dev/null 2>&1
        podman rmi -f "$BASE" >/dev/null 2>&1
    fi
    podman_net_cleanup
    rm -rf "$WORK"
}
trap cleanup EXIT

podman_net_snapshot
podman_setup "$WORK"
podman_base_image "$BASE" "$WORK"

# The committed state, as a plain repository the container can clone from (a worktree's
# .git points outside the tree).
git clone -q --no-hardlinks "$REPO" "$WORK/repo"
say "cloning $(git -C "$WORK/repo" log -1 --format='%h %s' | cut -c1-70)"

# PID 1 only waits; --init reaps the mount's forked server and its children.
podman run -d --name "$NAME" --init "${PODMAN_RUN_FLAGS[@]}" \
    --device /dev/fuse --cap-add SYS_ADMIN \
    -v "$WORK/repo:/src:ro" \
    "$BASE" sleep infinity >/dev/null

inside() {  # inside COMMAND: bash -lc COMMAND in the container, output shown and logged
    podman exec -e TERM=dumb "$NAME" bash -lc "$1" 2>&1 | tee -a "$LOG"
    return "${PIPESTATUS[0]}"
}

sys_mount=$(podman exec "$NAME" awk '$2 == "/sys" {print $4}' /proc/mounts)
[[ $sys_mount == ro* ]] || fail "/sys is not read-only in the container ($sys_mount)"
say "container $NAME: /sys mounted $sys_mount, /dev/fuse and CAP_SYS_ADMIN given"

say "apt-get install git; git clone into /root/ksmfs"
inside 'set -e; apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends git >/dev/null
        chmod 700 /root && git clone -q /src /root/ksmfs && ls -ld /root' \
    || fail "could not clone the repository in the container"

say "README: scripts/setup-demo.sh"
inside 'cd /root/ksmfs && scripts/setup-demo.sh' || fail "scripts/setup-demo.sh failed"
say "the demo mount answers: pages_sharing=$(podman exec "$NAME" \
    cat /tmp/ksmfs-demo/sys/kernel/mm/ksm/pages_sharing), and ksmfs is $(podman exec "$NAME" \
    bash -lc 'command -v ksmfs || echo "not on PATH"')"

say "README: scripts/setup-test.sh $*"
rc=0
inside "cd /root/ksmfs && scripts/setup-test.sh $(printf '%q ' "$@")" || rc=$?
say "scripts/setup-test.sh exited $rc; the demo mount: $(podman exec "$NAME" \
    cat /tmp/ksmfs-demo/sys/kernel/mm/ksm/full_scans) full scans, still mounted"
podman exec "$NAME" bash -lc 'ksmfs umount /tmp/ksmfs-demo' >/dev/null 2>&1 || true

echo
echo "=== the end of the test run in the container ==="
# pytest -q -ra: the skip reasons and the summary line are the last lines.
if grep -q 'short test summary info' "$LOG"; then
    awk '/short test summary info/ {p=1} p' "$LOG" | tail -40
else
    tail -5 "$LOG"
fi
exit "$rc"
