"""/proc: global files (meminfo, stat, uptime, version, vmstat) and /proc/<pid>/* rows."""

from __future__ import annotations

from ksmfs.kfs.tree import FileSpec


def global_specs(version) -> list[FileSpec]:
    return []


def pid_specs(version) -> list[FileSpec]:
    return []
