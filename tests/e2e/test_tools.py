"""Unmodified monitoring tools on a mount: Prometheus node_exporter's ksmd collector
(pointed at MOUNT/sys) and psutil (pointed at MOUNT/proc)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from e2e_support import IDLE_SCENARIO, fuse_test, mounted, run, wait_until

pytestmark = [*fuse_test, pytest.mark.timeout(180)]

CACHE = Path(os.environ.get("KSMFS_TEST_CACHE", Path.home() / ".cache" / "ksmfs-tests"))


def node_exporter() -> Path:
    """Debian's node_exporter binary, unpacked into a cache directory.

    `apt-get download` + `dpkg-deb -x` rather than `apt-get install`: the package would
    start a system service.
    """
    binary = CACHE / "node-exporter" / "usr" / "bin" / "prometheus-node-exporter"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("node_exporter needs apt-get and dpkg-deb (Debian) to be fetched")
    CACHE.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        r = run(["apt-get", "download", "prometheus-node-exporter"], cwd=CACHE, timeout=300)
        if r.returncode == 0:
            break
        if attempt == 0:  # the package lists may be missing on a fresh machine
            run(["apt-get", "update"], timeout=300)
    else:
        pytest.skip(f"apt-get download prometheus-node-exporter failed: {r.stderr.strip()}")
    deb = sorted(CACHE.glob("prometheus-node-exporter_*.deb"))[-1]
    r = run(["dpkg-deb", "-x", str(deb), str(CACHE / "node-exporter")])
    assert r.returncode == 0, r.stderr
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def ksmd_file(metric: str) -> tuple[str, float]:
    """The sysfs file a node_ksmd_* metric reads, and the factor applied to it
    (node_exporter's ksmd_linux.go: sleep_millisecs becomes seconds, counters _total)."""
    name = metric.removeprefix("node_ksmd_").removesuffix("_total")
    if name == "sleep_seconds":
        return "sleep_millisecs", 1e-3
    return name, 1.0


def test_node_exporter_ksmd_collector_reads_the_mount(tmp_path):
    """Every node_ksmd_* value equals the file it came from; the collector succeeds."""
    binary = node_exporter()
    with mounted(tmp_path / "mnt", "--speed", "5") as m:
        assert wait_until(lambda: m.ksm_value("pages_sharing") > 0, 30)
        port = free_port()
        proc = subprocess.Popen(
            [str(binary), "--collector.disable-defaults", "--collector.ksmd",
             f"--path.sysfs={m.path / 'sys'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert wait_until(lambda: _up(port), 20), "node_exporter did not start"
            live = scrape(port)  # while ksmd runs
            assert live['node_scrape_collector_success{collector="ksmd"}'] == 1
            # Freeze the counters (run = 0 stops ksmd; nothing else changes them), then
            # every metric must equal its file exactly.
            m.write_ksm("run", "0\n")
            metrics = scrape(port)
            ksmd = {k: v for k, v in metrics.items() if k.startswith("node_ksmd_")}
            assert len(ksmd) >= 9
            for metric, value in ksmd.items():
                name, factor = ksmd_file(metric)
                assert value == pytest.approx(m.ksm_value(name) * factor), metric
            assert ksmd["node_ksmd_pages_sharing"] > 0
            assert metrics['node_scrape_collector_success{collector="ksmd"}'] == 1
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


PSUTIL_PROBE = textwrap.dedent(
    """
    import json, sys
    import psutil
    psutil.PROCFS_PATH = sys.argv[1]
    out = {}
    for pid in psutil.pids():
        p = psutil.Process(pid)
        full = p.memory_full_info()
        maps = p.memory_maps(grouped=False)
        out[pid] = {
            "name": p.name(), "uids": list(p.uids()), "rss": full.rss, "uss": full.uss,
            "pss": full.pss, "swap": full.swap, "maps": len(maps),
            "maps_rss": sum(mm.rss for mm in maps),
        }
    print(json.dumps(out))
    """
)


def test_psutil_lists_the_simulated_processes_and_their_memory(tmp_path):
    """psutil with PROCFS_PATH=MOUNT/proc: pids, names, memory_full_info, memory_maps."""
    # The idle scenario: the demo's timeline ends and starts processes, which would race
    # with the two listings compared below.
    toml = tmp_path / "idle.toml"
    toml.write_text(IDLE_SCENARIO)
    with mounted(tmp_path / "mnt", "--scenario", str(toml), "--speed", "5") as m:
        pid = m.control("spawn tester uid=1000 pages=64 fill=cycle:16 mergeable").split()[1]
        assert wait_until(lambda: m.ksm_value("pages_sharing") > 0, 30)
        r = run([sys.executable, "-c", PSUTIL_PROBE, str(m.path / "proc")])
        assert r.returncode == 0, r.stderr
        info = {int(k): v for k, v in json.loads(r.stdout).items()}
        pids = sorted(int(p) for p in os.listdir(m.path / "proc") if p.isdigit())
        assert sorted(info) == pids and int(pid) in info
        assert info[int(pid)]["name"] == "tester" and info[int(pid)]["uids"][0] == 1000
        for p, v in info.items():
            assert v["maps"] >= 1 and v["rss"] > 0, p
            assert v["maps_rss"] == v["rss"], p
            # Merged pages are shared: proportional and unique sizes drop below RSS.
            assert 0 < v["pss"] <= v["rss"] and 0 <= v["uss"] <= v["rss"], p
        assert any(v["pss"] < v["rss"] for v in info.values())
