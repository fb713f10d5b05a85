"""What the agent keeps on disk so that it restarts and serves without its source: the last good
desired state (the raw documents it compiled, one content-addressed file each), the generation
that serves it, the per-load-balancer status, and the key of the sticky-cookie server ids.

Files are root-only (0600: the documents carry private keys); the directory is 0711 so that nginx
workers, which run unprivileged, can reach their temporary directories under ``nginx/`` without
being able to list anything."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GoodState:
    """The state that was last applied and verified."""

    generation: int | None = None
    documents: dict[str, Any] = field(default_factory=dict)  # source -> raw document
    status: dict[str, dict[str, Any]] = field(default_factory=dict)  # load balancer (or source) -> status


class AgentLockedError(RuntimeError):
    """Another clbagent process holds the state directory."""


class Store:
    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.file = state_dir / "state.json"
        self.docs_dir = state_dir / "documents"
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.dir.chmod(0o711)

    def lock(self) -> None:
        """Hold the state directory for this process's lifetime (one agent at a time)."""
        self.prepare()
        fd = os.open(self.dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentLockedError(f"another clbagent (pid {holder}) is using {self.dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> GoodState:
        """The good state; documents whose file is missing or unreadable are left out."""
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return GoodState()
        documents = {}
        for source, rev in data.get("documents", {}).items():
            try:
                documents[source] = json.loads((self.docs_dir / f"{rev}.json").read_text())
            except (OSError, ValueError):
                continue
        return GoodState(data.get("generation"), documents, data.get("status", {}))

    def save(self, state: GoodState, revisions: dict[str, str]) -> None:
        """Write the good state. Documents are content-addressed files (``documents/<revision>.json``)
        written once, so an apply writes only what changed; the index is replaced atomically last,
        so a crash leaves either the old or the new state, never a mix."""
        self.prepare()
        self.docs_dir.mkdir(mode=0o700, exist_ok=True)
        for source, raw in state.documents.items():
            path = self.docs_dir / f"{revisions[source]}.json"
            if not path.exists():
                _write_atomic(path, json.dumps(raw, default=str, sort_keys=True))
        index = {
            "generation": state.generation,
            "documents": {s: revisions[s] for s in state.documents},
            "status": state.status,
        }
        _write_atomic(self.file, json.dumps(index, default=str, sort_keys=True))
        keep = {f"{revisions[s]}.json" for s in state.documents}
        for path in self.docs_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def secret(self) -> bytes:
        """The key of the sticky-cookie server ids: made once, kept, so cookies survive restarts."""
        self.prepare()
        path = self.dir / "cookie.key"
        try:
            return bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError):
            key = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key.hex())
            return key


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
