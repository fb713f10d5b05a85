"""etcd as the agent's source of desired state (a fleet), with each agent's results written back.

:class:`EtcdFeed` is what the daemon talks to: ``read`` gives the documents (or ``None`` before
etcd was ever listed), ``run`` keeps the watch and the status writer going, ``applied`` hands each
apply's outcome to the writer. See docs/fleet.md.
"""

from __future__ import annotations

import os

# gRPC's own log lines (a failed TLS handshake, at info level) would interleave with the agent's
# JSON event lines on standard error; its errors are raised as exceptions the agent logs. gRPC
# reads this when it is first imported, which the modules below do.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from clbagent.agent.config import AgentConfig
from clbagent.agent.etcd.source import EtcdSource, Log
from clbagent.agent.etcd.status import StatusWriter
from clbagent.agent.source import Snapshot
from clbagent.settings import Settings


class EtcdFeed:
    def __init__(self, config: AgentConfig, settings: Settings, log: Log):
        self.config = config
        self.log = log
        self.source = EtcdSource(config, settings, log)
        self.writer = StatusWriter(config, log)

    def read(self) -> Snapshot | None:
        return self.source.read()

    async def run(self, mark: Callable[[str], None]) -> None:
        await asyncio.gather(
            self._forever("watch", lambda: self.source.run(mark)), self._forever("status", self.writer.run)
        )

    async def _forever(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        """Both tasks handle etcd's errors themselves; anything else is logged and they start
        again, so that the agent never silently stops following etcd."""
        while True:
            try:
                await task()
            except Exception as exc:  # the fleet link must survive anything
                self.log("etcd_task_error", task=name, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1)

    def applied(self, report: Any, status: dict[str, dict[str, Any]]) -> None:
        self.writer.update(report, status, self.source.last_read)

    def describe(self) -> dict[str, Any]:
        """The source part of `clbagent status`."""
        s = self.source
        return {
            "kind": "etcd",
            "endpoints": self.config.etcd_endpoints,
            "prefix": self.config.etcd_prefix,
            "agent": self.writer.agent,
            "revision": s.revision,
            "connected": s.connected,
            "error": s.error or None,
        }

    def reconfigure(self, settings: Settings) -> None:
        """New validation settings (SIGHUP): every value is read again under them."""
        self.source.settings = settings
        self.source.forget()
