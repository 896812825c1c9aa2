#!/usr/bin/env bash
# Set up a fresh machine (Debian packages, .venv, ksmfs) and mount a simulated kernel at
# /tmp/ksmfs-demo (or $KSMFS_DEMO_MOUNTPOINT). Idempotent: an existing demo mount is kept.
# Arguments go to `ksmfs mount`:
#   scripts/setup-demo.sh
#   scripts/setup-demo.sh --kernel 6.1 --speed 5
# KSMFS_SETUP_ONLY=1 stops after the setup.
set -euo pipefail
# shellcheck source=scripts/_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

ksmfs_setup

if [ "${KSMFS_SETUP_ONLY:-0}" = 1 ]; then
    exit 0
fi

MNT=${KSMFS_DEMO_MOUNTPOINT:-/tmp/ksmfs-demo}
KSMFS="$KSMFS_VENV/bin/ksmfs"
KSM="$MNT/sys/kernel/mm/ksm"
mkdir -p "$MNT" 2>/dev/null || true   # fails harmlessly on a stale mount (ENOTCONN)

if [ -r "$KSM/pages_sharing" ] && grep -qs " $MNT fuse" /proc/self/mounts; then
    ksmfs_log "$MNT is already mounted; keeping it"
    # The same "try" block as the mount's banner (one source: ksmfs.runtime.mount.try_text).
    "$KSMFS_VENV/bin/python" -c 'import sys; from ksmfs.runtime.mount import try_text; print(try_text(sys.argv[1]))' "$MNT"
else
    # `ksmfs mount` clears a stale mount itself, returns once the file system is up and
    # prints what to try.
    "$KSMFS" mount "$MNT" "$@"
fi
