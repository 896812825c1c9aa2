# shellcheck shell=bash
# Common part of scripts/container-smoke.sh and scripts/container-test.sh (sourced): podman
# on a machine with no Docker engine and no image registry, as root.
#
#   podman_setup WORK        install podman + runc + debootstrap if missing; a
#                            containers.conf of our own in WORK (CONTAINERS_CONF): runc,
#                            because crun rejects hybrid cgroup setups, and ulimits the
#                            machine can grant (podman's defaults may not be)
#   podman_base_image IMAGE WORK
#                            a Debian bookworm image built with debootstrap from this
#                            machine's own apt sources, carrying this machine's CA
#                            certificates (HTTPS to the package indexes may be re-signed
#                            by a CA that a fresh Debian does not trust) and a pip.conf
#                            that uses them
#   podman_net_snapshot / podman_net_cleanup
#                            podman's network tool leaves a netns mount and nft tables
#                            behind: note what exists before, remove what was added
# Messages go through `say` and `fail`, which the sourcing script defines.

PODMAN_RUN_FLAGS=(--runtime runc --ulimit nofile=16384:16384 --ulimit nproc=16384:16384)

podman_setup() {
    local work=$1 need=() pkg
    for pkg in podman runc uidmap fuse-overlayfs slirp4netns containers-storage debootstrap \
        curl; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "apt-get install ${need[*]}"
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF=$work/containers.conf
}

# Prints two lines: the bookworm mirror, then the Debian stanzas (deb822, "\n" escaped)
# of this machine's apt sources. Third-party sources are left out: their keys are not in
# the base image, and apt-get update would fail on them.
_podman_apt_sources() {
    python3 - <<'PY'
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
}

podman_base_image() {
    local image=$1 work=$2 rootfs=$2/rootfs src mirror t0=$SECONDS
    mapfile -t src < <(_podman_apt_sources)
    mirror=${src[0]:-}
    [ -n "$mirror" ] || fail "no Debian bookworm mirror in /etc/apt/sources.list*"
    say "debootstrap bookworm from $mirror (about a minute)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    rm -f "$rootfs/etc/resolv.conf"
    printf '%b\n' "${src[1]}" >"$rootfs/etc/apt/sources.list.d/debian.sources"
    : >"$rootfs/etc/apt/sources.list"
    mkdir -p "$rootfs/usr/local/share/ca-certificates" "$rootfs/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" \
        2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    tar -C "$rootfs" -c . | podman import -q --change 'CMD ["bash"]' - "$image" >/dev/null
    rm -rf "$rootfs"
    say "base image $image ready in $((SECONDS - t0)) s"
}

podman_net_snapshot() {
    _podman_had_netns=0
    [ -d /run/netns ] && _podman_had_netns=1
    _podman_nft_before=""
    if command -v nft >/dev/null; then
        _podman_nft_before=$(nft list tables 2>/dev/null || true)
    fi
}

podman_net_cleanup() {
    if [ "${_podman_had_netns:-1}" = 0 ] && [ -d /run/netns ]; then
        umount /run/netns 2>/dev/null
        rmdir /run/netns 2>/dev/null
    fi
    if command -v nft >/dev/null; then
        nft list tables 2>/dev/null | while read -r _ family table; do
            if ! grep -qx "table $family $table" <<<"${_podman_nft_before:-}"; then
                nft delete table "$family" "$table" 2>/dev/null
            fi
        done
    fi
    return 0
}
