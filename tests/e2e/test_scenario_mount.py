"""A contract-v2 scenario served by a real mount: the forks of its timeline are processes
of the mount's /proc (children of the forking process), and once the timeline has played
the counters read with cat are those of `ksmfs run` after its last full scan."""

from __future__ import annotations

from pathlib import Path

from e2e_support import fuse_test, mounted, wait_until

from ksmfs.scenario.loader import load_scenario
from ksmfs.scenario.sim import run_sim

pytestmark = fuse_test


def _tasks(root: Path) -> dict[int, tuple[str, int]]:
    """pid -> (comm, PPid) of every process in the mount's /proc."""
    out = {}
    for entry in (root / "proc").iterdir():
        if entry.name.isdigit():
            comm = (entry / "comm").read_text().strip()
            status = (entry / "status").read_text()
            ppid = int(status.split("PPid:", 1)[1].split()[0])
            out[int(entry.name)] = (comm, ppid)
    return out


def test_prefork_web_server_forks_in_the_mount(tmp_path: Path) -> None:
    scenario = load_scenario("prefork-web-server")
    snaps = run_sim(scenario, lambda s: None)
    last = snaps[-1]["ksm"]
    # after the last step (full scan 5) the stable tree settles: the run's last two
    # snapshots agree, so a mount that has gone past max_full_scans shows the same values
    # whenever it is read (pages_unshared is not among them: the unstable tree starts
    # empty at every pass, and the mount is read at any batch of one)
    settled = ("pages_shared", "pages_sharing", "ksm_zero_pages")
    assert all(snaps[-2]["ksm"][k] == last[k] for k in settled)
    with mounted(tmp_path / "mnt", "--scenario", "prefork-web-server", "--speed", "50") as m:
        def past_the_end() -> bool:
            return int(m.read("sys/kernel/mm/ksm/full_scans")) > scenario.max_full_scans

        assert wait_until(past_the_end, timeout=60)
        tasks = _tasks(m.path)
        masters = [pid for pid, (comm, ppid) in tasks.items() if ppid == 1]
        assert len(masters) == 1  # the master; every worker is its child (fork(2))
        workers = [pid for pid, (_, ppid) in tasks.items() if ppid == masters[0]]
        # 8 forked after full scan 1; worker-3 exited and worker-8 was forked after scan 5
        assert len(workers) == 8 and all(tasks[w][0] == "master" for w in workers)
        for pid in workers:
            stat = m.read(f"proc/{pid}/ksm_stat")
            assert "ksm_mergeable: yes" in stat  # registered by ksm_fork, no madvise
        for key in settled:
            assert int(m.read(f"sys/kernel/mm/ksm/{key}")) == last[key], key
