"""The TCP check as the product describes it: a SYN to the check port, alive when a SYN-ACK comes
back (R55). The SYN goes out on a raw socket; the kernel answers the SYN-ACK with a RST by itself
(no socket of ours owns the source port), so the target never sees a connection: one packet each
way, no descriptor, no handshake per probe.

IPv4 only and root only (raw sockets); everything else uses the connect() prober.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import heapq
import os
import random
import socket
import struct

from clbagent.health.probe import LATE, Done
from clbagent.health.spec import Check

SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SYN, RST, ACK = 0x02, 0x04, 0x10
REFUSED = os.strerror(errno.ECONNREFUSED)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an even-length buffer."""
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def syn_base(src: bytes, dst: bytes, sport: int, dport: int) -> int:
    """The one's-complement sum of a SYN's pseudo-header and fixed fields (all but the sequence)."""
    fixed = src + dst + struct.pack("!BBHHHIBBHHH", 0, socket.IPPROTO_TCP, 20, sport, dport, 0, 5 << 4, SYN, 1024, 0, 0)
    return sum(struct.unpack(f"!{len(fixed) // 2}H", fixed))


def syn_segment(base: int, sport: int, dport: int, seq: int) -> bytes:
    """A 20-byte TCP SYN; ``base`` from :func:`syn_base` (the checksum then costs two additions)."""
    total = base + (seq >> 16) + (seq & 0xFFFF)
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, SYN, 1024, ~total & 0xFFFF, 0)


def port_filter(port: int) -> bytes:
    """A classic BPF program for an IPv4 raw socket: keep only segments to ``port``."""
    code = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): the IP header length
        (0x48, 0, 0, 2),  # ldh [x+2]: the TCP destination port
        (0x15, 0, 1, port),  # jeq #port
        (0x06, 0, 0, 0xFFFF),  # ret: keep
        (0x06, 0, 0, 0),  # ret: drop
    ]
    return b"".join(struct.pack("HBBI", *c) for c in code)


class SynProber:
    """Half-open probes over one receiving raw socket and one sending raw socket per source.

    Answers and deadlines are handled every ``POLL`` seconds in one go rather than on a wake-up
    per packet: a health result a few milliseconds later costs nothing, a wake-up per probe would
    cost more than the probe."""

    POLL = 0.01

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        # Hold a port no socket listens or connects on: SYN-ACKs to it get the kernel's RST.
        self._hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._hold.bind(("0.0.0.0", 0))
        self.port = self._hold.getsockname()[1]
        self._rx = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
        program = ctypes.create_string_buffer(port_filter(self.port))
        fprog = struct.pack("HL", len(program.raw) // 8, ctypes.addressof(program))
        self._rx.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self._rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        self._tx: dict[str | None, socket.socket] = {}
        self._routes: dict[str, bytes] = {}
        self._targets: dict[tuple[str, int, str | None], tuple[bytes, int, socket.socket]] = {}
        self._pending: dict[tuple[bytes, int, int], tuple[Done, float]] = {}
        self._drain(keep=False)  # what arrived before the filter
        self._deadlines: list[tuple[float, tuple[bytes, int, int], float]] = []
        self._timer: asyncio.TimerHandle | None = None

    def probe(self, check: Check, source: str | None, done: Done) -> bool:
        target = self._targets.get((check.address, check.port, source))
        if target is None:
            target = self._target(check.address, check.port, source)
        dst, base, sock = target
        seq = random.getrandbits(32)
        try:
            sock.sendto(syn_segment(base, self.port, check.port, seq), (check.address, 0))
        except (BlockingIOError, InterruptedError):
            return False  # the send queue is full: sent later, not failed
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                return False
            self.loop.call_soon(done, False, exc.strerror or str(exc))
            return True
        key = (dst, check.port, (seq + 1) & 0xFFFFFFFF)
        deadline = self.loop.time() + check.timeout
        self._pending[key] = (done, deadline)
        heapq.heappush(self._deadlines, (deadline, key, check.timeout))
        if self._timer is None:
            self._timer = self.loop.call_later(self.POLL, self._poll)
        return True

    def _target(self, address: str, port: int, source: str | None) -> tuple[bytes, int, socket.socket]:
        """What every probe of one target reuses: its address, its checksum base, the socket."""
        dst = socket.inet_aton(address)
        src = socket.inet_aton(source) if source else self._route(address)
        sock = self._tx.get(source) or self._sender(source)
        target = self._targets[(address, port, source)] = (dst, syn_base(src, dst, self.port, port), sock)
        return target

    def _sender(self, source: str | None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
        if source:
            sock.bind((source, 0))
        self._tx[source] = sock
        return sock

    def _route(self, address: str) -> bytes:
        """The source address the kernel picks towards ``address`` (what a raw send will carry)."""
        src = self._routes.get(address)
        if src is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((address, 9))
                src = socket.inet_aton(probe.getsockname()[0])
            self._routes[address] = src
        return src

    def _poll(self) -> None:
        """Answers first (a SYN-ACK the loop had no time to read is an answer), then deadlines."""
        self._timer = None
        self._drain()
        now, heap = self.loop.time(), self._deadlines
        while heap and heap[0][0] <= now:
            deadline, key, seconds = heapq.heappop(heap)
            pending = self._pending.pop(key, None)
            if pending is not None:
                pending[0](None if now - deadline > LATE else False, f"no SYN-ACK within {seconds:g}s")
        if self._pending:
            self._timer = self.loop.call_later(self.POLL, self._poll)
        else:
            heap.clear()

    def _drain(self, keep: bool = True) -> None:
        """Read every queued segment; a SYN-ACK answers a probe, a RST refuses it."""
        recv, pending = self._rx.recv, self._pending
        while True:
            try:
                packet = recv(128)
            except (BlockingIOError, InterruptedError):
                return
            if not keep or len(packet) < 20:
                continue
            ihl = (packet[0] & 0x0F) * 4
            if len(packet) < ihl + 14:
                continue
            sport, _, _, ack, _, flags = struct.unpack_from("!HHIIBB", packet, ihl)
            answered = pending.pop((packet[12:16], sport, ack), None)
            if answered is None:
                continue
            if flags & SYN and flags & ACK:
                answered[0](True, "")
            elif flags & RST:
                answered[0](False, REFUSED)

    def forget_routes(self) -> None:
        """Addresses moved: the kernel's choice of source may have changed."""
        self._routes.clear()
        self._targets.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._pending.clear()
        self._deadlines.clear()
        for sock in (self._rx, self._hold, *self._tx.values()):
            sock.close()
        self._tx.clear()


def raw_allowed() -> bool:
    """Whether this process may open raw sockets (root or CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except PermissionError:
        return False
    return True
