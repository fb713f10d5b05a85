"""write_prefix: install a compiled file set into an nginx prefix directory.

Only files whose content changed are rewritten (atomically: temporary file + rename), so a change
to one load balancer touches one file. Files of load balancers or certificates that are gone are
removed. Certificates and keys are 0600 in 0700 directories. ``run/`` is 0700: nginx creates the
control channel's socket there with mode 0666, so the directory keeps it root-only. The
directories the agent manages must be real directories: a symlinked ``certs/`` would send private
keys wherever it points, so it is refused (``PrefixError``) and nothing is written through it; a
symlink found in place of a file is replaced, never followed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from clbagent import reading

if TYPE_CHECKING:
    from .compile import NginxConfig

RUNTIME_DIRS = {"logs": None, "run": 0o700, "tmp": None}  # None: created 0755, mode left alone
MANAGED_DIRS = {"conf.d": 0o755, "upstreams": 0o755, "certs": 0o700, "ca": 0o700}
READABLE = ("nginx.conf", "conf.d/", "upstreams/")  # 0644; everything else (keys) 0600


class PrefixError(Exception):
    """The output directory cannot hold a prefix (not a directory, symlinked managed directory)."""


def _same(path: str, data: bytes, mode: int) -> bool:
    """Whether ``path`` is a regular file (not a symlink) holding exactly ``data``; its mode is set
    to ``mode`` if it is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(data) or f.read(len(data) + 1) != data:
            return False
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    return True


def _write(path: str, text: str, mode: int, present: bool) -> bool:
    """Write ``text`` to ``path`` through a temporary file and a rename, unless it is there already
    (``present``: the name was listed in its directory, so it is worth comparing)."""
    data = text.encode()
    if present and _same(path, data, mode):
        return False
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:  # left by an interrupted write
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # the umask may have narrowed it
        f.write(data)
    os.replace(tmp, path)
    return True


def _directory(path: Path, mode: int | None = None) -> None:
    """Create ``path`` or check that it is a real directory (never a symlink)."""
    with contextlib.suppress(FileExistsError, NotADirectoryError):
        path.mkdir(mode=mode or 0o755, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise PrefixError(f"{path} must be a directory, not a file or a symbolic link")
    if mode is not None:
        path.chmod(mode)


def write_prefix(cfg: NginxConfig, out: Path) -> list[str]:
    """Write ``cfg`` under ``out``; returns the relative paths that were (re)written or removed."""
    if out.exists() and not out.is_dir():
        raise PrefixError(f"{out} is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrefixError(f"cannot create {out}: {exc.strerror}") from None
    for name, mode in (RUNTIME_DIRS | MANAGED_DIRS).items():
        _directory(out / name, mode)
    listed = {name: _files(out / name) for name in MANAGED_DIRS}
    root = str(out)
    changed = []
    for rel, text in cfg.files.items():
        mode = file_mode(rel)
        folder, _, name = rel.rpartition("/")
        present = name in listed[folder] if folder in listed else True
        if _write(os.path.join(root, rel), text, mode, present):
            changed.append(rel)
    for folder, names in listed.items():
        for name in sorted(names):
            rel = f"{folder}/{name}"
            if rel not in cfg.files:
                os.unlink(os.path.join(root, rel))
                changed.append(rel)
    return changed


def file_mode(rel: str) -> int:
    return 0o644 if rel.startswith(READABLE) else 0o600


def holds(out: Path, digests: dict[str, str]) -> bool:
    """Whether ``out`` is a prefix as :func:`write_prefix` leaves it for a file set whose files
    have these SHA-256 ``digests``: the same directories and modes, the same files in the managed
    directories (no others), each a regular file with the same content and mode."""
    try:
        for name, mode in (RUNTIME_DIRS | MANAGED_DIRS).items():
            info = os.lstat(out / name)
            if not stat.S_ISDIR(info.st_mode) or (mode is not None and stat.S_IMODE(info.st_mode) != mode):
                return False
        listed = {f"{folder}/{name}" for folder in MANAGED_DIRS for name in _files(out / folder)}
    except OSError:
        return False
    if listed != {rel for rel in digests if "/" in rel}:
        return False
    return all(_digest_is(os.path.join(out, rel), digest, file_mode(rel)) for rel, digest in digests.items())


def _digest_is(path: str, digest: str, mode: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != mode:
            return False
        data = os.read(fd, info.st_size + 1)  # one read: a file that differs in size differs anyway
        return len(data) == info.st_size and reading.digest(data) == digest
    finally:
        os.close(fd)


def _files(folder: Path) -> set[str]:
    """Names of the regular files and symlinks in ``folder`` (subdirectories are left alone)."""
    with os.scandir(folder) as entries:
        return {e.name for e in entries if e.is_symlink() or e.is_file()}
