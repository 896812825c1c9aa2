# ksmfs in a container: a simulated kernel mounted at /ksm, optionally with node_exporter.
#
#   docker build -t ksmfs .
#   docker run -d --name ksmfs --device /dev/fuse --cap-add SYS_ADMIN ksmfs
#   docker exec ksmfs cat /ksm/sys/kernel/mm/ksm/pages_sharing
#   docker run -d --device /dev/fuse --cap-add SYS_ADMIN -p 9100:9100 \
#       -e KSMFS_NODE_EXPORTER_PORT=9100 ksmfs --scenario kvm-guests
#   curl -s localhost:9100/metrics | grep node_ksmd
#
# Arguments after the image name go to `ksmfs mount /ksm --foreground` (--kernel, --speed,
# --scenario ...), or name a command to run instead (bash, ksmfs run NAME ...).
# FUSE needs the device and CAP_SYS_ADMIN; --privileged is not needed.
FROM debian:bookworm-slim

# 0 leaves prometheus-node-exporter out of the image.
ARG NODE_EXPORTER=1

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/ksmfs/bin:$PATH

# gcc, python3-dev, libfuse3-dev and pkg-config build pyfuse3 (and the scenario worker);
# fuse3 brings fusermount3 and libfuse3. node_exporter: only the binary is taken out of its
# package (apt-get download + dpkg-deb -x), because installing it would start a service.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        fuse3 libfuse3-dev pkg-config python3 python3-venv gcc python3-dev ca-certificates \
    && if [ "$NODE_EXPORTER" = 1 ]; then \
        cd /tmp && apt-get download prometheus-node-exporter \
        && dpkg-deb -x prometheus-node-exporter_*.deb /tmp/node-exporter \
        && install -m 0755 /tmp/node-exporter/usr/bin/prometheus-node-exporter /usr/local/bin/ \
        && rm -rf /tmp/node-exporter /tmp/prometheus-node-exporter_*.deb; \
    fi \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY ksmfs /src/ksmfs
RUN python3 -m venv /opt/ksmfs \
    && /opt/ksmfs/bin/pip install /src \
    && rm -rf /src \
    && ksmfs --version

COPY scripts/docker-entrypoint.sh /usr/local/bin/ksmfs-entrypoint

ENV KSMFS_MOUNTPOINT=/ksm
EXPOSE 9100
ENTRYPOINT ["/usr/local/bin/ksmfs-entrypoint"]
CMD []
