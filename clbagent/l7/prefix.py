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

from .compile import NginxConfig

RUNTIME_DIRS = {"logs": None, "run": 0o700, "tmp": None}  # None: created 0755, mode left alone
MANAGED_DIRS = {"conf.d": 0o755, "upstreams": 0o755, "certs": 0o700, "ca": 0o700}
READABLE = ("nginx.conf", "conf.d/", "upstreams/")  # 0644; everything else (keys) 0600


class PrefixError(Exception):
    """The output directory cannot hold a prefix (not a directory, symlinked managed directory)."""


def _same(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file (not a symlink) holding exactly ``data``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return f.read(len(data) + 1) == data


def _write(path: Path, text: str, mode: int) -> bool:
    data = text.encode()
    if _same(path, data):
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
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
    changed = []
    for rel, text in cfg.files.items():
        mode = 0o644 if rel.startswith(READABLE) else 0o600
        if _write(out / rel, text, mode):
            changed.append(rel)
    for name in MANAGED_DIRS:
        for path in sorted((out / name).iterdir()):
            rel = f"{name}/{path.name}"
            if rel not in cfg.files and (path.is_symlink() or path.is_file()):
                path.unlink()
                changed.append(rel)
    return changed
