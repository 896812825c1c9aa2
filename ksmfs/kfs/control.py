"""ksmfs/: the control directory (not a kernel path): actions written as text commands."""

from __future__ import annotations

from ksmfs.kfs.tree import FileSpec


def file_specs(version) -> list[FileSpec]:
    return []
