"""The state of one check (Unknown → Alive/Dead after HealthNum/UnHealthNum consecutive results)
and its persistence in the agent's state directory, so that a restart never flips a known state."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALIVE, DEAD, UNKNOWN = "Alive", "Dead", "Unknown"


@dataclass
class Health:
    """Consecutive results decide; a single result never flips a known state."""

    state: str = UNKNOWN
    since: float = 0.0  # wall-clock time of the last transition (or of the first sight)
    successes: int = 0
    failures: int = 0
    last_error: str = ""
    last_probe: float = 0.0

    def record(self, ok: bool, error: str, rise: int, fall: int, now: float | None = None) -> str | None:
        """Count one result; the new state when it changes, else None."""
        now = time.time() if now is None else now
        self.last_probe = now
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            target = ALIVE if self.successes >= rise else None
        else:
            self.successes, self.failures = 0, self.failures + 1
            self.last_error = error
            target = DEAD if self.failures >= fall else None
        if target is None or target == self.state:
            return None
        self.state, self.since = target, now
        return target

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "last_error": self.last_error}

    @classmethod
    def restored(cls, saved: dict[str, Any] | None) -> Health:
        """A persisted state (counters start again), or a new Unknown one."""
        if not saved or saved.get("state") not in (ALIVE, DEAD, UNKNOWN):
            return cls(since=time.time())
        return cls(
            saved["state"], float(saved.get("since") or time.time()), last_error=str(saved.get("last_error", ""))
        )


class HealthStore:
    """``health.json`` in the state directory: the state of every check and the down keys applied."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "health.json"

    def load(self) -> tuple[dict[str, dict[str, Any]], frozenset[str]]:
        try:
            data = json.loads(self.path.read_text())
            return dict(data.get("checks", {})), frozenset(data.get("down", []))
        except (OSError, ValueError, AttributeError, TypeError):
            return {}, frozenset()

    def save(self, checks: dict[str, dict[str, Any]], down: frozenset[str]) -> None:
        """Replace the file atomically (written, synced, renamed): a crash leaves old or new."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"checks": checks, "down": sorted(down)}, sort_keys=True))  # the C encoder
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
