"""Each agent's results, written back to etcd under a lease.

Layout (one key per load balancer, so an apply writes only what it changed, and a host with a
thousand load balancers never approaches etcd's request size limit)::

    <etcd_status_prefix><agent>                    the agent: etcd revision seen, last apply, counts
    <etcd_status_prefix><agent>/<LoadBalancerId>   one load balancer: revisions, generation, errors

Every key is attached to one lease kept alive by the agent: when the host dies, or loses etcd for
longer than ``etcd_lease_ttl``, its keys expire. A new lease (after a restart or an expiry)
rewrites every key and deletes those left over from before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aetcd

from clbagent.agent.config import AgentConfig
from clbagent.agent.etcd.client import ERRORS, Backoff, Endpoints, close_quietly
from clbagent.agent.etcd.source import Log, ReadInfo

BATCH = 100  # operations per transaction (etcd allows 128 by default)


class LeaseLostError(Exception):
    """etcd no longer knows the lease: the keys attached to it are gone."""


def agent_name(config: AgentConfig) -> str:
    return config.agent_name or socket.gethostname()


def lb_key(status_prefix: str, agent: str, root: str) -> str:
    """The status key of one load balancer (a root that is not an ID, such as a key that does not
    parse, is percent-encoded so that it stays one path segment)."""
    return f"{status_prefix}{agent}/{quote(root, safe='')}"


class StatusWriter:
    """Turns each apply's outcome into status values and keeps etcd holding them."""

    def __init__(self, config: AgentConfig, log: Log):
        self.config = config
        self.log = log
        self.agent = agent_name(config)
        self.base = f"{config.etcd_status_prefix}{self.agent}"
        self._desired: dict[str, str] = {}
        self._written: dict[str, str | None] = {}
        self._wake = asyncio.Event()
        self._applied_file = config.state_dir / "etcd-applied.json"
        self._applied: dict[str, int] = _load(self._applied_file)
        self._last: tuple[Any, dict[str, dict[str, Any]], ReadInfo] | None = None
        # The health monitor's rows, when the agent checks targets: each load balancer's value then
        # carries its targets counted by state, refreshed at every keepalive.
        self.health: Callable[[], Iterable[dict[str, Any]]] | None = None

    def update(self, report: Any, status: dict[str, dict[str, Any]], info: ReadInfo | None) -> None:
        """The values after one apply (called in the event loop; the writer task sends them)."""
        if info is None:
            return
        self._last = (report, status, info)
        self._compose()
        self._wake.set()

    def _compose(self) -> None:
        if self._last is None:
            return
        report, status, info = self._last
        health = _health_counts(self.health()) if self.health is not None else None
        values: dict[str, str] = {}
        applied: dict[str, int] = {}
        for root, st in status.items():
            key, mod, content = info.roots.get(root, ("", 0, ""))
            rev = mod if key and st.get("revision") == content else self._applied.get(root)
            if rev is not None:
                applied[root] = rev
            values[lb_key(self.config.etcd_status_prefix, self.agent, root)] = _dump(
                {
                    "agent": self.agent,
                    "load_balancer": root,
                    "key": key or st.get("source"),
                    "applied_revision": rev,
                    "desired_revision": mod or None,
                    "generation": st.get("generation"),
                    "result": st.get("result"),
                    "errors": st.get("errors", []),
                    **({} if health is None else {"health": health.get(root, {})}),
                }
            )
        quarantined = sum(1 for st in status.values() if st.get("result") == "quarantined")
        values[self.base] = _dump(
            {
                "agent": self.agent,
                "pid": os.getpid(),
                "seen_revision": info.revision,
                "generation": report.generation,
                "last_apply": {"result": report.result, "error": report.error or None},
                "load_balancers": len(status),
                "quarantined": quarantined,
            }
        )
        if applied != self._applied:
            self._applied = applied
            _save(self._applied_file, applied)
        self._desired = values

    async def run(self) -> None:
        """Hold a lease, write what changed, keep the lease alive; start over when etcd is lost."""
        endpoints, backoff = Endpoints(self.config), Backoff()
        ttl = self.config.etcd_lease_ttl
        while True:
            client = endpoints.client()
            try:
                lease = await client.lease(ttl)
                existing = await client.get_prefix(f"{self.base}/".encode(), keys_only=True)
                self._written = {kv.key.decode(): None for kv in existing}
                backoff.reset()
                while True:
                    self._wake.clear()
                    if self._last is not None:  # nothing is known before the first apply: keep what is there
                        if self.health is not None:
                            self._compose()
                        await self._flush(client, lease)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), ttl / 3)
                    reply = await client.refresh_lease(lease.id)
                    if reply is None or reply.TTL <= 0:
                        raise LeaseLostError(f"lease {lease.id:x} expired")
            except (*ERRORS, LeaseLostError) as exc:
                delay = backoff.delay()
                self.log("etcd_status_error", endpoint=client.endpoint, error=f"{type(exc).__name__}: {exc}")
                endpoints.failed()
                await asyncio.sleep(delay)
            finally:
                await close_quietly(client)

    async def _flush(self, client: aetcd.Client, lease: aetcd.Lease) -> None:
        desired = self._desired
        t = client.transactions
        ops: list[Any] = [
            t.put(k.encode(), v.encode(), lease=lease) for k, v in desired.items() if self._written.get(k) != v
        ]
        ops += [t.delete(k.encode()) for k in self._written if k not in desired]
        for i in range(0, len(ops), BATCH):
            await client.transaction(compare=[], success=ops[i : i + BATCH], failure=[])
        self._written = dict(desired)


def _health_counts(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per load balancer, its targets counted by health state (Alive, Dead, Unknown)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = out.setdefault(row["load_balancer"], {})
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return out


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _load(path: Path) -> dict[str, int]:
    """The etcd revision each load balancer's served version came from (kept across restarts, so
    a quarantined load balancer still names the revision it serves)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}


def _save(path: Path, applied: dict[str, int]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(applied, f, sort_keys=True)
        os.replace(tmp, path)
