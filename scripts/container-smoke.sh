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
ROOTFS=$WORK/rootfs

say() { printf '[container-smoke] %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (podman, debootstrap, FUSE in the container)"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

had_netns=0
[ -d /run/netns ] && had_netns=1
nft_before=""
command -v nft >/dev/null && nft_before=$(nft list tables 2>/dev/null || true)
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
    # podman's network tool leaves a netns mount and nft tables behind; drop the ones that
    # were not there before us.
    if [ "$had_netns" = 0 ] && [ -d /run/netns ]; then
        umount /run/netns 2>/dev/null
        rmdir /run/netns 2>/dev/null
    fi
    if command -v nft >/dev/null; then
        nft list tables 2>/dev/null | while read -r _ family table; do
            if ! grep -qx "table $family $table" <<<"$nft_before"; then
                nft delete table "$family" "$table" 2>/dev/null
            fi
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. podman with runc ----------------------------------------------------------------
need=()
for pkg in podman runc uidmap fuse-overlayfs slirp4netns containers-storage debootstrap curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# crun rejects this machine's hybrid cgroups; run asks for rlimits the machine cannot grant.
cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$WORK/containers.conf

# --- 2. base image without a registry -------------------------------------------------
podman image exists "$BASE" && had_base=1
podman image exists "$BASE_ALIAS" && had_alias=1
if [ "$had_alias" = 0 ]; then
    # The mirror and the Debian entries come from this machine's own apt sources.
    mapfile -t src < <(python3 - <<'PY'
import glob, re
mirror, stanzas = None, []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for block in re.split(r"\n\s*\n", open(path).read()):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", block, re.M))
        suites = fields.get("Suites", "").split()
        if "debian-archive-keyring" in fields.get("Signed-By", "") and any(
            s.startswith("bookworm") for s in suites
        ):
            stanzas.append("\n".join(l for l in block.strip().splitlines() if not l.startswith("#")))
            if mirror is None and "bookworm" in suites:
                mirror = fields["URIs"].split()[0]
for line in open("/etc/apt/sources.list") if glob.glob("/etc/apt/sources.list") else []:
    m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(bookworm\S*)\s", line)
    if m and "debian" in m.group(1):
        stanzas.append(f"Types: deb\nURIs: {m.group(1)}\nSuites: {m.group(2)}\n"
                       "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg")
        if mirror is None and m.group(2) == "bookworm":
            mirror = m.group(1)
print(mirror or "")
print("\n\n".join(stanzas).replace("\n", "\\n"))
PY
)
    mirror=${src[0]:-}
    [ -n "$mirror" ] || fail "no Debian bookworm mirror in /etc/apt/sources.list*"
    say "debootstrap bookworm from $mirror (about 45 s)"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    rm -f "$ROOTFS/etc/resolv.conf"
    # This machine's Debian sources (third-party ones are left out: their keys are not in
    # the base image, and apt-get update would fail on them).
    printf '%b\n' "${src[1]}" >"$ROOTFS/etc/apt/sources.list.d/debian.sources"
    : >"$ROOTFS/etc/apt/sources.list"
    # HTTPS to the package index is re-signed by a CA this machine trusts: bake it in.
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates" "$ROOTFS/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" \
        2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
    tar -C "$ROOTFS" -c . | podman import --change 'CMD ["bash"]' - "$BASE" >/dev/null
    podman tag "$BASE" "$BASE_ALIAS"
    rm -rf "$ROOTFS"
fi

# --- 3. build and run -----------------------------------------------------------------
say "podman build (apt + pyfuse3 from source: a few minutes the first time)"
podman build --runtime runc -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; fail "podman build failed"; }
say "built $IMAGE ($(podman image inspect "$IMAGE" --format '{{.Size}}' | numfmt --to=iec))"

# A first argument that is not an option runs that command instead of the mount.
version=$(podman run --rm --runtime runc --ulimit nofile=16384:16384 \
    --ulimit nproc=16384:16384 "$IMAGE" ksmfs --version)
[ "$version" = "ksmfs 0.1.0" ] || fail "ksmfs --version in the image printed '$version'"
say "OK: podman run IMAGE ksmfs --version -> $version"

podman run -d --name "$NAME" --runtime runc \
    --ulimit nofile=16384:16384 --ulimit nproc=16384:16384 \
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
