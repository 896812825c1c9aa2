# shellcheck shell=bash
# Common part of scripts/setup-demo.sh and scripts/setup-test.sh (sourced, not run).
#
# ksmfs_setup [EXTRA_DEB_PACKAGE...]
#   1. installs the Debian packages pyfuse3 needs to build and run (fuse3, libfuse3-dev,
#      pkg-config, gcc, Python headers and venv), plus any extra ones, only if missing;
#   2. creates REPO/.venv with Python >= 3.11 (reused when it is healthy);
#   3. pip install -e 'REPO[plot,test]' (versions pinned in pyproject.toml; it also compiles
#      the C extension ksmfs/kernel/_rbtree.c), skipped when neither pyproject.toml nor the
#      C source has changed since the last successful install;
#   4. puts `ksmfs` on PATH: a link to REPO/.venv/bin/ksmfs in /usr/local/bin (root) or
#      ~/.local/bin (other users, when that is on PATH); an existing file of another
#      ksmfs is left alone.
# Each step prints one line when it starts and one with the time it took; apt-get and
# pip show their own progress lines in between.
# Idempotent: a second run installs nothing and takes about a second.
# Environment: PYTHON=/path/to/python3.x picks the interpreter for the venv;
# KSMFS_NO_LINK=1 skips step 4.

KSMFS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KSMFS_VENV="$KSMFS_REPO/.venv"

ksmfs_log() { printf '[ksmfs setup] %s\n' "$*" >&2; }
ksmfs_done() { ksmfs_log "  done in $((SECONDS - $1)) s"; }
ksmfs_die() { ksmfs_log "error: $*"; exit 1; }

# Packages: fuse3 gives fusermount3 (mount/unmount as FUSE needs), libfuse3-dev + pkg-config +
# gcc + python3-dev build pyfuse3 from source, python3-venv gives `python3 -m venv` on Debian.
KSMFS_DEBS=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv)

ksmfs_apt_install() {
    local missing=() pkg sudo=""
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    command -v apt-get >/dev/null \
        || ksmfs_die "missing packages ${missing[*]} and no apt-get: install them by hand"
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null \
            || ksmfs_die "missing packages ${missing[*]}: run as root or install sudo"
        sudo="sudo"
    fi
    local t0=$SECONDS
    ksmfs_log "installing Debian packages: ${missing[*]} (about half a minute)"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet; a failed update (offline mirror) is
    # not fatal as long as the install itself works from the lists already there.
    $sudo apt-get update -q || ksmfs_log "apt-get update failed; trying the install anyway"
    # apt's own lines, one per package as it is set up (the Get/Unpacking lines are
    # dropped: four lines a package would bury the rest); errors still show on stderr.
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" \
        | { grep --line-buffered -E '^(Fetched|Setting up|E:)' || true; } \
        || ksmfs_die "apt-get install ${missing[*]} failed"
    ksmfs_done "$t0"
}

ksmfs_python_ok() {  # ksmfs_python_ok PYTHON: is it a Python >= 3.11 with venv/ensurepip?
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

ksmfs_pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3 /usr/bin/python3; do
        if command -v "$candidate" >/dev/null && ksmfs_python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    ksmfs_die "no Python >= 3.11 with venv found (set PYTHON=/path/to/python3.11)"
}

ksmfs_venv() {
    if [ -x "$KSMFS_VENV/bin/python" ] && ksmfs_python_ok "$KSMFS_VENV/bin/python" \
        && "$KSMFS_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    local python
    python=$(ksmfs_pick_python)
    if [ -e "$KSMFS_VENV" ]; then
        ksmfs_log "$KSMFS_VENV is broken (moved or its Python is gone): recreating it"
        rm -rf "$KSMFS_VENV"
    fi
    local t0=$SECONDS
    ksmfs_log "creating $KSMFS_VENV with $python ($("$python" -V 2>&1))"
    "$python" -m venv "$KSMFS_VENV"
    ksmfs_done "$t0"
}

ksmfs_pip_install() {
    local stamp="$KSMFS_VENV/.ksmfs-installed" want
    want="$(cd "$KSMFS_REPO" && sha256sum pyproject.toml ksmfs/kernel/*.c | sha256sum | cut -d' ' -f1) $KSMFS_REPO"
    # Reinstall when pyproject.toml changed (new pins, entry points, extensions), when a C
    # extension's source changed (pip compiles it), or when the editable install points at
    # another checkout; also when the compiled extension is gone (git clean).
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$KSMFS_VENV/bin/python" -c 'import ksmfs, ksmfs.kernel._rbtree, pytest' 2>/dev/null \
        && [ -x "$KSMFS_VENV/bin/ksmfs" ]; then
        return 0
    fi
    local t0=$SECONDS
    ksmfs_log "pip install -e '.[plot,test]' into .venv (pyfuse3 is built from source: about a minute)"
    rm -f "$stamp"
    # pip's own lines show the progress (Collecting, Building wheel ...). The greps drop
    # only "already satisfied" lines and the warnings about local index folders that some
    # machines' pip.conf names but do not have; everything else pip says still shows.
    "$KSMFS_VENV/bin/python" -m pip install --progress-bar off --disable-pip-version-check \
        -e "$KSMFS_REPO[plot,test]" \
        > >(grep --line-buffered -v '^Requirement already satisfied' >&2) \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) \
        || ksmfs_die "pip install failed (see the messages above)"
    printf '%s\n' "$want" >"$stamp"
    ksmfs_done "$t0"
}

# Where `ksmfs` goes on PATH: /usr/local/bin for root, ~/.local/bin for others.
ksmfs_link() {
    local dir target="$KSMFS_VENV/bin/ksmfs"
    if [ "$(id -u)" -eq 0 ]; then
        dir=/usr/local/bin
    else
        dir="$HOME/.local/bin"
    fi
    if [ "${KSMFS_NO_LINK:-0}" != 1 ] && [ -d "$dir" ] && [ -w "$dir" ] \
        && { [ ! -e "$dir/ksmfs" ] || [ -L "$dir/ksmfs" ]; }; then
        ln -sfn "$target" "$dir/ksmfs"
    fi
    if [ "$(command -v ksmfs || true)" = "$dir/ksmfs" ] \
        && [ "$(readlink -f "$dir/ksmfs")" = "$(readlink -f "$target")" ]; then
        ksmfs_log "ksmfs is on PATH ($dir/ksmfs -> $target)"
    else
        ksmfs_log "ksmfs is not on PATH here: run $target, or: export PATH=\"$KSMFS_VENV/bin:\$PATH\""
    fi
}

ksmfs_setup() {
    ksmfs_apt_install "${KSMFS_DEBS[@]}" "$@"
    ksmfs_venv
    ksmfs_pip_install
    "$KSMFS_VENV/bin/ksmfs" --version >/dev/null || ksmfs_die "$KSMFS_VENV/bin/ksmfs does not run"
    ksmfs_log "ready: $("$KSMFS_VENV/bin/ksmfs" --version) in $KSMFS_VENV"
    ksmfs_link
}
