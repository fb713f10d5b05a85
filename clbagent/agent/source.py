"""Document files and directories as a source of desired state (the embedded default source).

Only files whose metadata changed since the last read are parsed again (a one-document edit among
a thousand re-reads one file). A change to any other file under the directory (a certificate named
by ``CertFile``) drops the cache, since any document may read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbagent.errors import Code, Issue
from clbagent.loader import SUFFIXES, load
from clbagent.settings import DEFAULT_SETTINGS, Settings

_Stat = tuple[int, int, int]


@dataclass
class Snapshot:
    """Every document of the source, and the files that could not be read or parsed."""

    docs: list[tuple[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    failed_files: set[str] = field(default_factory=set)
    files_read: int = 0


class FileSource:
    """Files and directories of documents; ``read`` returns them all, parsing only what changed."""

    def __init__(self, paths: list[Path], cert_dir: Path | None = None, settings: Settings = DEFAULT_SETTINGS):
        self.paths = paths
        self.cert_dir = cert_dir
        self.settings = settings
        self._cache: dict[str, tuple[_Stat, list[tuple[str, Any]], list[Issue]]] = {}
        self._others: dict[str, _Stat] = {}

    def forget(self) -> None:
        self._cache.clear()

    def read(self) -> Snapshot:
        snap = Snapshot()
        files: list[tuple[str, _Stat]] = []
        others: dict[str, _Stat] = {}
        for p in self.paths:
            if p.is_dir():
                found, extra = _scan(str(p))
                files.extend(found)
                others.update(extra)
            elif p.exists():
                files.append((str(p), _stat(str(p))))
            else:
                snap.issues.append(Issue(str(p), Code.RESOURCE_NOT_FOUND, "no such file or directory"))
                snap.failed_files.add(str(p))
        if others != self._others:
            self._cache.clear()
            self._others = others
        if len(self._cache) != len(files):
            present = {key for key, _ in files}
            for gone in [key for key in self._cache if key not in present]:
                del self._cache[gone]
        for key, st in files:
            cached = self._cache.get(key)
            if cached is None or cached[0] != st:
                docs, issues = load([Path(key)], self.cert_dir, self.settings)
                cached = (st, docs, issues)
                self._cache[key] = cached
                snap.files_read += 1
            _, docs, issues = cached
            snap.docs.extend(docs)
            if issues:
                snap.issues.extend(issues)
                if not docs:
                    snap.failed_files.add(key)
        return snap


def _scan(directory: str) -> tuple[list[tuple[str, _Stat]], dict[str, _Stat]]:
    """Document files under a directory with their metadata (sorted, as the loader orders them)
    and the other files, in one walk. Hidden files (editors' and atomic writers' temporaries) are
    not documents. Plain strings and the walk's own entries: this runs for every file on every
    read, so it must cost little more than the stat calls themselves."""
    docs: list[tuple[str, _Stat]] = []
    others: dict[str, _Stat] = {}
    pending = [directory]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif entry.name.endswith(SUFFIXES):
                    docs.append((entry.path, _entry_stat(entry)))
                else:
                    others[entry.path] = _entry_stat(entry)
    docs.sort()
    return docs, others


def _entry_stat(entry: os.DirEntry[str]) -> _Stat:
    try:
        st = entry.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _stat(path: str) -> _Stat:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)
