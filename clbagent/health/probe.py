"""What every prober shares: the verdict callback, deadlines that tell a late loop from a slow
target, and the socket options of a probe socket.

A prober starts a probe with callbacks only (no task per probe): thousands of probes a second must
cost little. A probe ends with ``done(ok, error)``, where ``ok`` is None when the result says
nothing about the target: its deadline passed while the agent itself was too busy to look.

The scheduler asks a prober once per check for a ``Start``: a call that starts the next probe of
that check. A prober that can build something ahead (the half-open prober builds the packet) does
it there; the others start each probe from scratch.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from clbagent.health.spec import Check

Done = Callable[[bool | None, str], None]
Start = Callable[[], bool]  # starts one probe; False when it could not be sent now
LATE = 0.5  # a deadline handled this late was the agent's fault, not the target's
TICK = 0.05  # the checker's clock: probes start, answers are read and deadlines expire on this grid
IP_BIND_ADDRESS_NO_PORT = 24


class Prober(Protocol):
    descriptors: int  # file descriptors one running probe holds (the scheduler keeps a margin)

    def probe(self, check: Check, source: str | None, done: Done) -> bool:
        """Start one probe; False when it could not be sent now (retried later, not a failure)."""
        ...

    def prepare(self, check: Check, source: str | None, done: Done) -> Start:
        """What starts each probe of ``check`` from ``source``, reporting to ``done``."""
        ...

    def close(self) -> None: ...


class OneShot:
    """A prober with nothing to build ahead: each start is a :meth:`probe` call."""

    descriptors = 1

    def probe(self, check: Check, source: str | None, done: Done) -> bool:
        raise NotImplementedError

    def prepare(self, check: Check, source: str | None, done: Done) -> Start:
        return functools.partial(self.probe, check, source, done)


def late(loop: asyncio.AbstractEventLoop, deadline: float) -> bool:
    return loop.time() - deadline > LATE


def family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def bind_source(sock: socket.socket, source: str | None) -> None:
    """Bind to the source address without taking a port before connect() picks one."""
    if source is None:
        return
    if sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


def abortive(sock: socket.socket) -> None:
    """Close with a RST: no TIME_WAIT left behind by thousands of probes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
