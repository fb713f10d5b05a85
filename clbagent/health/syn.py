"""The TCP check as the product describes it: a SYN to the check port, alive when a SYN-ACK comes
back (R55). The SYN goes out on a raw socket; the kernel answers the SYN-ACK with a RST by itself
(no socket of ours owns the source port), so the target never sees a connection: one packet each
way, no descriptor, no handshake per probe.

IPv4 only and root only (raw sockets); everything else uses the connect() prober.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import random
import socket
import struct
from collections import deque

from clbagent.health.probe import LATE, TICK, Done, Start
from clbagent.health.spec import Check

SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
IP_MTU_DISCOVER, IP_PMTUDISC_PROBE = 10, 3  # linux/in.h: DF set, the path MTU not consulted
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
    """A classic BPF program for an IPv4 raw socket: keep only SYN-ACKs and RSTs to ``port`` that
    are long enough to read (a load past the end drops the packet)."""
    code = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): the IP header length
        (0x48, 0, 0, 2),  # ldh [x+2]: the TCP destination port
        (0x15, 0, 5, port),  # jeq #port, else drop
        (0x50, 0, 0, 13),  # ldb [x+13]: the TCP flags
        (0x45, 2, 0, RST),  # jset #RST: keep
        (0x54, 0, 0, SYN | ACK),  # and #SYN|ACK
        (0x15, 0, 1, SYN | ACK),  # jeq #SYN|ACK: keep, else drop
        (0x06, 0, 0, 0xFFFF),  # ret: keep
        (0x06, 0, 0, 0),  # ret: drop
    ]
    return b"".join(struct.pack("HBBI", *c) for c in code)


DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # ret 0: a sending socket keeps no copy of the traffic


class SynProber:
    """Half-open probes: one receiving raw socket for every answer, one sending raw socket per source.

    Each check's SYN is built once (its sequence number is fixed and unique among the checks), so a
    probe is one ``sendto``. Answers are matched by the acknowledged sequence alone, then checked
    against the target's address and port. Answers and deadlines are handled every ``TICK``
    seconds in one go rather than on a wake-up per packet: a health result a few milliseconds later
    costs nothing, a wake-up per probe would cost more than the probe. Deadlines are kept in one
    queue per timeout, in the order the probes were sent: no timer and no heap per probe."""

    descriptors = 0

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        # Hold a port no socket listens or connects on: SYN-ACKs to it get the kernel's RST.
        self._hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._hold.bind(("0.0.0.0", 0))
        self.port = self._hold.getsockname()[1]
        self._rx = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
        _attach(self._rx, port_filter(self.port))
        self._rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        _dont_fragment(self._rx)
        self._tx: dict[str | None, socket.socket] = {None: self._rx}  # unbound: it sends from any address
        self._routes: dict[str, bytes] = {}
        self.pending: dict[bytes, _Probe] = {}  # by the acknowledgement number its answer carries
        self._queues: dict[float, deque[tuple[float, _Probe]]] = {}
        self._isn = (random.getrandbits(32), random.getrandbits(32) | 1)  # start and odd step: no repeats
        self._built = 0
        self.generation = 0  # bumped when routes may have moved: every probe is built again
        with contextlib.suppress(BlockingIOError):
            while True:
                self._rx.recv(128)  # what arrived before the filter
        self._timer: asyncio.TimerHandle | None = None

    def prepare(self, check: Check, source: str | None, done: Done) -> Start:
        return _Probe(self, check, source, done).start

    def probe(self, check: Check, source: str | None, done: Done) -> bool:
        return self.prepare(check, source, done)()

    def build(self, probe: _Probe) -> None:
        """The SYN of one check: its addresses, ports and sequence number never change until routes do."""
        check, source = probe.check, probe.source
        dst = socket.inet_aton(check.address)
        src = socket.inet_aton(source) if source else self._route(check.address)
        probe.sock = self._tx.get(source) or self._sender(source)
        start, step = self._isn
        seq = (start + self._built * step) & 0xFFFFFFFF
        self._built += 1
        probe.packet = syn_segment(syn_base(src, dst, self.port, check.port), self.port, check.port, seq)
        probe.to, probe.peer, probe.sport = (check.address, 0), dst, check.port.to_bytes(2, "big")
        probe.key = ((seq + 1) & 0xFFFFFFFF).to_bytes(4, "big")
        probe.queue = self._queues.get(check.timeout) or self._queues.setdefault(check.timeout, deque())
        probe.generation = self.generation

    def _sender(self, source: str | None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
        _attach(sock, DROP_ALL)  # it only sends: the answers go to the receiving socket
        _dont_fragment(sock)
        try:
            sock.bind((source, 0))
        except OSError:
            sock.close()
            raise
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

    def arm(self) -> None:
        """Poll at the next multiple of ``TICK``: the scheduler ticks on the same grid, so one
        wake-up serves both."""
        self._timer = self.loop.call_at((self.loop.time() // TICK + 1) * TICK, self._poll)

    def _poll(self) -> None:
        """Answers first (a SYN-ACK the loop had no time to read is an answer), then deadlines."""
        self._timer = None
        self._drain()
        now, pending = self.loop.time(), self.pending
        for seconds, queue in self._queues.items():
            while queue and queue[0][0] <= now:
                deadline, probe = queue.popleft()
                if probe.deadline == deadline and pending.get(probe.key) is probe:
                    del pending[probe.key]
                    probe.done(None if now - deadline > LATE else False, f"no SYN-ACK within {seconds:g}s")
        if pending:
            self.arm()
        else:
            for queue in self._queues.values():
                queue.clear()

    def _drain(self) -> None:
        """Read every queued answer (the filter passed only SYN-ACKs and RSTs); a SYN-ACK answers
        a probe, a RST refuses it."""
        recv, pending = self._rx.recv, self.pending
        while True:
            try:
                packet = recv(128)
            except (BlockingIOError, InterruptedError):
                return
            ihl = (packet[0] & 0x0F) << 2
            probe = pending.get(packet[ihl + 8 : ihl + 12])
            if probe is None or packet[12:16] != probe.peer or packet[ihl : ihl + 2] != probe.sport:
                continue
            del pending[probe.key]
            if packet[ihl + 13] & RST:
                probe.done(False, REFUSED)
            else:
                probe.done(True, "")

    def forget_routes(self) -> None:
        """Addresses moved: the kernel's choice of source may have changed."""
        self._routes.clear()
        self.generation += 1

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.pending.clear()
        self._queues.clear()
        for sock in {id(s): s for s in (self._rx, self._hold, *self._tx.values())}.values():
            sock.close()
        self._tx.clear()


class _Probe:
    """The half-open probe of one check from one source, built once (see :meth:`SynProber.build`)."""

    __slots__ = (
        "check",
        "deadline",
        "done",
        "generation",
        "key",
        "packet",
        "peer",
        "prober",
        "queue",
        "sock",
        "source",
        "sport",
        "timeout",
        "to",
    )

    def __init__(self, prober: SynProber, check: Check, source: str | None, done: Done):
        self.prober, self.check, self.source, self.done = prober, check, source, done
        self.generation, self.deadline, self.timeout = -1, 0.0, check.timeout
        self.packet, self.key, self.peer, self.sport = b"", b"", b"", b""
        self.to: tuple[str, int] = (check.address, 0)
        self.sock: socket.socket | None = None
        self.queue: deque[tuple[float, _Probe]] = deque()

    def start(self) -> bool:
        prober = self.prober
        try:
            if self.generation != prober.generation:
                prober.build(self)
            self.sock.sendto(self.packet, self.to)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return False  # the send queue is full: sent later, not failed
        except OSError as exc:  # no route, the source address gone, a firewall's refusal
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                return False
            prober.loop.call_soon(self.done, False, exc.strerror or str(exc))
            return True
        self.deadline = deadline = prober.loop.time() + self.timeout
        prober.pending[self.key] = self
        self.queue.append((deadline, self))
        if prober._timer is None:
            prober.arm()
        return True


def _dont_fragment(sock: socket.socket) -> None:
    """SYNs with DF set, as the kernel's own: no IP identification to draw for each one."""
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)


def _attach(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (the kernel copies it)."""
    buf = ctypes.create_string_buffer(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program) // 8, ctypes.addressof(buf)))


def raw_allowed() -> bool:
    """Whether this process may open raw sockets (root or CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except PermissionError:
        return False
    return True
