"""Desired-state documents from etcd: the values under a key prefix, kept current by one watch.

The prefix is listed at one revision R (in pages, every page at R), then watched from R + 1; a lost
connection resumes the watch at the last revision seen (its events are applied again, which
changes nothing), so no event is skipped. Only a compacted revision, or a watch that stopped
delivering without an error (found by a periodic audit), forces a new listing. Until
the first listing succeeds, :meth:`EtcdSource.read` returns ``None`` and the agent keeps serving
the state it has on disk; after that, an unreachable etcd leaves the last values in place.

A value is read exactly like a document file (same bounds, same parser, same error codes); its key
is the document's source name. ``CertFile`` names are resolved inside ``cert_dir`` (there is no
document directory), and refused when no ``cert_dir`` is set.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from clbagent.agent.config import AgentConfig
from clbagent.agent.engine import revision
from clbagent.agent.etcd.client import ERRORS, Backoff, Endpoints, close_quietly
from clbagent.agent.source import Snapshot
from clbagent.errors import Code, Issue
from clbagent.loader import read_cert_files, read_documents, shown
from clbagent.settings import Settings

PAGE = 500  # keys per listing request
AUDIT_EVERY, AUDIT_GRACE = 60.0, 10.0  # seconds: how often the watch is checked, how long it may lag


class WatchStalledError(Exception):
    """The watch stopped delivering events without an error."""


Log = Callable[..., None]


@dataclass
class Parsed:
    """One value as documents, with what the status needs to name its revision."""

    mod_revision: int
    docs: list[tuple[str, Any]]
    issues: list[Issue]
    hashes: dict[str, str]  # load balancer (or source) -> content revision
    uses_files: bool  # reads certificate files: parsed again on every read


@dataclass
class ReadInfo:
    """What one :meth:`EtcdSource.read` handed to the engine: etcd's revision and, per load
    balancer, the key, its mod_revision and the content revision of its document."""

    revision: int
    roots: dict[str, tuple[str, int, str]] = field(default_factory=dict)


def root_of(source: str, raw: Any) -> str:
    """The load balancer a document defines, else its source (as the engine names it)."""
    if isinstance(raw, dict):
        ident = raw.get("LoadBalancerId") or raw.get("loadBalancerId")
        if isinstance(ident, str) and ident:
            return ident
    return source


def parse_value(source: str, data: bytes, cert_dir: Path | None, settings: Settings) -> tuple[list, list[Issue]]:
    """The documents of one etcd value and the issues that keep it from being read."""
    if len(data) > settings.max_document_bytes:
        return [], [
            Issue(source, Code.LIMIT_EXCEEDED, f"document refused: larger than {settings.max_document_bytes} bytes")
        ]
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return [], [Issue(source, Code.FORMAT_ERROR, "not UTF-8 text")]
    found, issues = read_documents(text, source, settings)
    for src, raw in found:
        if cert_dir is not None:
            issues.extend(read_cert_files(raw, cert_dir, cert_dir, src, settings))
        else:
            issues.extend(_files_refused(raw, src))
    return found, issues


def _files_refused(raw: Any, source: str) -> list[Issue]:
    certs = raw.get("Certificates") if isinstance(raw, dict) else None
    return [
        Issue(
            f"{source}/Certificates[{i}]/{name}",
            Code.INVALID_PARAMETER,
            "a document from etcd may name a certificate file only when the agent config sets cert_dir",
        )
        for i, cert in enumerate(certs if isinstance(certs, list) else [])
        if isinstance(cert, dict)
        for name in ("CertFile", "CertKeyFile")
        if isinstance(cert.get(name), str)
    ]


def _uses_files(raw: Any) -> bool:
    certs = raw.get("Certificates") if isinstance(raw, dict) else None
    return isinstance(certs, list) and any(
        isinstance(c, dict) and ("CertFile" in c or "CertKeyFile" in c) for c in certs
    )


def key_name(key: bytes) -> str:
    """A key as a printable source name (bytes that are not UTF-8 become escapes)."""
    return shown(key.decode("utf-8", "surrogateescape"))


class EtcdSource:
    """The values under ``etcd_prefix``: filled by :meth:`run` (in the event loop), read by
    :meth:`read` (in the applier's worker thread)."""

    def __init__(self, config: AgentConfig, settings: Settings, log: Log):
        self.config = config
        self.settings = settings
        self.cert_dir = config.cert_dir or settings.cert_dir
        self.log = log
        self.prefix = config.etcd_prefix.encode()
        self.revision = 0  # every event up to this revision is in _values
        self.synced = False
        self.connected = False
        self.error = ""
        self.last_read: ReadInfo | None = None
        self._lock = threading.Lock()
        self._values: dict[str, tuple[int, bytes]] = {}
        self._parsed: dict[str, Parsed] = {}

    # ------------------------------------------------------------------ the applier's side

    def forget(self) -> None:
        self._parsed = {}

    def read(self) -> Snapshot | None:
        """Every document under the prefix; ``None`` before the first listing."""
        with self._lock:
            if not self.synced:
                return None
            values, rev = dict(self._values), self.revision
        snap = Snapshot()
        info = ReadInfo(rev)
        parsed: dict[str, Parsed] = {}
        for key in sorted(values):
            mod, data = values[key]
            entry = self._parsed.get(key)
            if entry is None or entry.mod_revision != mod or entry.uses_files:
                docs, issues = parse_value(key, data, self.cert_dir, self.settings)
                hashes = {root_of(s, raw): revision(raw) for s, raw in docs}
                entry = Parsed(mod, docs, issues, hashes, any(_uses_files(raw) for _, raw in docs))
                snap.files_read += 1
            parsed[key] = entry
            snap.docs.extend(entry.docs)
            snap.issues.extend(entry.issues)
            if entry.issues and not entry.docs:
                snap.failed_files.add(key)
            info.roots.update({root: (key, mod, h) for root, h in entry.hashes.items()})
        self._parsed = parsed
        self.last_read = info
        return snap

    # ------------------------------------------------------------------ the event loop's side

    async def run(self, mark: Callable[[str], None]) -> None:
        """List, watch, and on any loss of etcd try again (next endpoint, jittered backoff)."""
        endpoints, backoff = Endpoints(self.config), Backoff()
        listed = False
        while True:
            client = endpoints.client()
            try:
                if not listed:
                    await self._list(client, mark)
                    listed = True
                backoff.reset()
                await self._watch(client, mark)
            except aetcd.RevisionCompactedError as exc:  # the values held keep serving meanwhile
                self.log("etcd_compacted", revision=self.revision, compacted=exc.compacted_revision, action="list")
                listed = False
            except WatchStalledError:
                self.log("etcd_watch_stalled", revision=self.revision, action="list")
                listed = False
            except ERRORS as exc:
                await self._lost(exc, client, endpoints, backoff)
            finally:
                await close_quietly(client)

    async def _lost(self, exc: BaseException, client: Any, endpoints: Endpoints, backoff: Backoff) -> None:
        delay = backoff.delay()
        self.connected, self.error = False, f"{type(exc).__name__}: {exc}"
        self.log("etcd_unreachable", endpoint=client.endpoint, error=self.error, retry_in=round(delay, 2))
        endpoints.failed()
        await asyncio.sleep(delay)

    async def _list(self, client: aetcd.Client, mark: Callable[[str], None]) -> None:
        """Every key under the prefix at one revision, page by page."""
        await client.connect()
        values: dict[str, tuple[int, bytes]] = {}
        at, start, end = 0, self.prefix, prefix_range_end(self.prefix)
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=PAGE, revision=at)
            try:
                response = await client.kvstub.Range(request, timeout=self.config.etcd_timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # compacted between two pages
                    raise aetcd.RevisionCompactedError(at) from exc
                raise
            at = at or response.header.revision
            values.update({key_name(kv.key): (kv.mod_revision, kv.value) for kv in response.kvs})
            if not response.more or not response.kvs:
                break
            start = response.kvs[-1].key + b"\0"
        with self._lock:
            changed = not self.synced or values != self._values
            self._values, self.revision, self.synced = values, at, True
        self.connected, self.error = True, ""
        self.log("etcd_listed", revision=at, keys=len(values))
        if changed:
            mark("etcd")

    async def _watch(self, client: aetcd.Client, mark: Callable[[str], None]) -> None:
        """Events from the revision held on (inclusive: applying one twice changes nothing)."""
        watch = await client.watch_prefix(self.prefix, start_revision=max(self.revision, 1))
        self.connected, self.error = True, ""
        audit = asyncio.create_task(self._audit(client, watch))
        try:
            async for event in watch:
                kv = event.kv
                with self._lock:
                    if event.kind == aetcd.EventKind.PUT:
                        self._values[key_name(kv.key)] = (kv.mod_revision, kv.value)
                    else:
                        self._values.pop(key_name(kv.key), None)
                    self.revision = max(self.revision, kv.mod_revision)
                mark("etcd")
        finally:
            audit.cancel()
        if audit.done() and not audit.cancelled() and audit.result():
            raise WatchStalledError
        raise aetcd.ConnectionFailedError("the watch ended without an error")  # retried with backoff

    async def _audit(self, client: aetcd.Client, watch: aetcd.Watch) -> bool:
        """Every ``AUDIT_EVERY`` seconds, the keys and revisions under the prefix at etcd's current
        revision H: within ``AUDIT_GRACE`` the values held must reach that state, or a later
        revision. If they do not, the watch has stopped delivering (etcd can cancel a watch in ways
        aetcd does not report), so it is cancelled and True is returned: a new listing follows.
        A failed read returns False; the watch notices a lost connection itself."""
        end = prefix_range_end(self.prefix)
        while True:
            await asyncio.sleep(AUDIT_EVERY)
            request = rpc.RangeRequest(key=self.prefix, range_end=end, keys_only=True)
            try:
                response = await client.kvstub.Range(request, timeout=self.config.etcd_timeout)
            except ERRORS:
                return False
            at, expected = response.header.revision, {key_name(kv.key): kv.mod_revision for kv in response.kvs}
            deadline = asyncio.get_running_loop().time() + AUDIT_GRACE
            while not self._reached(at, expected):
                if asyncio.get_running_loop().time() > deadline:
                    await watch.cancel()
                    return True
                await asyncio.sleep(0.1)

    def _reached(self, at: int, expected: dict[str, int]) -> bool:
        with self._lock:
            return self.revision >= at or {k: mod for k, (mod, _) in self._values.items()} == expected
