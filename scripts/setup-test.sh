#!/usr/bin/env bash
# Set up a fresh machine (Debian packages, .venv, ksmfs with its test extras) and run the
# tests. Idempotent. Arguments go to pytest:
#   scripts/setup-test.sh                   # every test
#   scripts/setup-test.sh tests/test_cli.py -x
# KSMFS_SETUP_ONLY=1 stops after the setup (used by tests/test_readme.py).
set -euo pipefail
# shellcheck source=scripts/_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

# tmux: tests/test_top.py reads the live view's screen through it.
ksmfs_setup tmux

if [ "${KSMFS_SETUP_ONLY:-0}" = 1 ]; then
    exit 0
fi
cd "$KSMFS_REPO"
# Collection imports numpy, matplotlib and hypothesis: a few seconds (half a minute on a
# slow machine) before the first dot.
ksmfs_log "running the tests: pytest -q $* (the real-kernel and slow tiers are opt-in: tests/conftest.py)"
exec "$KSMFS_VENV/bin/python" -m pytest -q "$@"
