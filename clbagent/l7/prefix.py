"""write_prefix: install a compiled file set into an nginx prefix directory.

Only files whose content changed are rewritten (atomically: temporary file + rename), so a change
to one load balancer touches one file. Files of load balancers or certificates that are gone are
removed. Certificates and keys are 0600 in a 0700 directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from .compile import NginxConfig

RUNTIME_DIRS = ("logs", "run", "tmp")
MANAGED_DIRS = ("conf.d", "certs")


def _write(path: Path, text: str, mode: int) -> bool:
    data = text.encode()
    try:
        if path.read_bytes() == data:
            if path.stat().st_mode & 0o777 != mode:
                path.chmod(mode)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def write_prefix(cfg: NginxConfig, out: Path) -> list[str]:
    """Write ``cfg`` under ``out``; returns the relative paths that were (re)written or removed."""
    out.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_DIRS:
        (out / name).mkdir(exist_ok=True)
    (out / "conf.d").mkdir(exist_ok=True)
    certs = out / "certs"
    certs.mkdir(mode=0o700, exist_ok=True)
    certs.chmod(0o700)
    changed = []
    for rel, text in cfg.files.items():
        mode = 0o600 if rel.startswith("certs/") else 0o644
        if _write(out / rel, text, mode):
            changed.append(rel)
    for name in MANAGED_DIRS:
        for path in sorted((out / name).iterdir()):
            rel = f"{name}/{path.name}"
            if rel not in cfg.files and path.is_file():
                path.unlink()
                changed.append(rel)
    return changed
