"""File plumbing shared by the stages: the one atomic writer (manifests, feature-store metadata,
model folders) and the base of the errors that name a file and a reason.

A temp file in the same folder (unique per process, so two writers never share it), fsync, then
``os.replace``: a reader or a crash never sees half a file.
"""
from __future__ import annotations

import os
from pathlib import Path


class FileProblem(Exception):
    """A file that cannot be used (audio, video, media, cached feature): names it and says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
