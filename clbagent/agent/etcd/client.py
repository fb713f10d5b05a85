"""The agent's etcd connection: aetcd's asyncio client over a gRPC channel opened here.

aetcd surfaces compaction and connection loss as exceptions (the other Python clients hang or no
longer import), but it only opens plain TCP channels; this subclass adds TLS, ``unix://``
endpoints and keepalive pings, so that a silent network is noticed in seconds, not hours.
"""

from __future__ import annotations

import random
from pathlib import Path

import aetcd
import grpc
from aetcd import rpc

from clbagent.agent.config import AgentConfig

# Pings every 10 s (etcd refuses more often than every 5 s); no answer in 5 s drops the channel.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 << 20),
)
# What a lost, refused or timed-out connection raises (aetcd maps gRPC errors to ClientError).
ERRORS = (aetcd.ClientError, grpc.RpcError, OSError, TimeoutError)


def channel_target(endpoint: str) -> tuple[str, bool]:
    """The gRPC target of an endpoint and whether it asks for TLS."""
    if endpoint.startswith("unix://"):
        return endpoint, False
    scheme, sep, rest = endpoint.partition("://")
    return (rest, scheme == "https") if sep else (endpoint, False)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


class EtcdClient(aetcd.Client):
    """aetcd's client on one endpoint, with TLS when the endpoint or the config asks for it."""

    def __init__(self, config: AgentConfig, endpoint: str):
        super().__init__(timeout=config.etcd_timeout)  # type: ignore[arg-type] - gRPC takes float seconds
        self.endpoint = endpoint
        self._config = config

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        c = self._config
        target, tls = channel_target(self.endpoint)
        if tls or c.etcd_ca_file is not None or c.etcd_cert_file is not None:
            creds = grpc.ssl_channel_credentials(_read(c.etcd_ca_file), _read(c.etcd_key_file), _read(c.etcd_cert_file))
            self.channel = grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout)
        self._connected.set()


class Endpoints:
    """The configured endpoints, tried in turn: a failure moves on to the next one."""

    def __init__(self, config: AgentConfig):
        self.config = config
        self._next = 0

    def client(self) -> EtcdClient:
        endpoints = self.config.etcd_endpoints
        return EtcdClient(self.config, endpoints[self._next % len(endpoints)])

    def failed(self) -> None:
        self._next += 1


class Backoff:
    """Exponential delays with jitter, so that a fleet does not reconnect in lockstep."""

    def __init__(self, first: float = 0.2, cap: float = 5.0):
        self.first, self.cap, self._n = first, cap, 0

    def delay(self) -> float:
        ceiling = min(self.cap, self.first * 2**self._n)
        self._n += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._n = 0


async def close_quietly(client: aetcd.Client) -> None:
    """Close a client whose connection may already be gone."""
    try:
        await client.close()
    except (*ERRORS, RuntimeError):
        pass
