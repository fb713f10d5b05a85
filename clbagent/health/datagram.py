"""UDP custom checks (the decoded request sent, the reply compared; a port unreachable fails at
once) and ICMP echo (UDP listeners without a custom check)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct

from clbagent.health.probe import Done, OneShot, bind_source, family, late
from clbagent.health.spec import Check
from clbagent.health.syn import checksum

ICMP_ECHO, ICMP_ECHO_REPLY, ICMP6_ECHO, ICMP6_ECHO_REPLY = 8, 0, 128, 129


class UdpProber(OneShot):
    """One connected datagram socket per probe: a reply or an ICMP error comes back on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def probe(self, check: Check, source: str | None, done: Done) -> bool:
        try:
            sock = socket.socket(family(check.address), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                return False
            raise
        loop, fd = self.loop, sock.fileno()
        deadline = loop.time() + check.timeout

        def finish(ok: bool | None, error: str) -> None:
            if sock.fileno() < 0:
                return
            timer.cancel()
            loop.remove_reader(fd)
            sock.close()
            done(ok, error)

        def readable() -> None:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ECONNREFUSED: the ICMP port unreachable of the target
                finish(False, exc.strerror or str(exc))
                return
            if data.startswith(check.expect):
                finish(True, "")
            else:
                finish(False, f"unexpected reply {data[:16].hex()}")

        def timeout() -> None:
            readable()
            finish(None if late(loop, deadline) else False, f"no reply within {check.timeout:g}s")

        timer = loop.call_at(deadline, timeout)
        try:
            bind_source(sock, source)
            sock.connect((check.address, check.port))
            sock.send(check.send)
        except OSError as exc:
            finish(False, exc.strerror or str(exc))
            return True
        loop.add_reader(fd, readable)
        return True

    def close(self) -> None:
        return None


class PingProber(OneShot):
    """ICMP echo over one raw socket per family (root), or the kernel's unprivileged ping sockets."""

    descriptors = 0  # one socket per family and source, shared by every probe

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._socks: dict[tuple[int, str | None], tuple[socket.socket, bool]] = {}
        self._pending: dict[tuple[str, int], tuple[Done, asyncio.TimerHandle, float]] = {}
        self._seq = 0
        self._ident = os.getpid() & 0xFFFF

    def _socket(self, fam: socket.AddressFamily, source: str | None) -> tuple[socket.socket, bool]:
        key = (int(fam), source)
        if key not in self._socks:
            proto = socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6
            try:
                sock, raw = socket.socket(fam, socket.SOCK_RAW | socket.SOCK_NONBLOCK, proto), True
            except PermissionError:
                sock, raw = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, proto), False
            if source:
                sock.bind((source, 0))
            self.loop.add_reader(sock.fileno(), self._drain, sock, fam, raw)
            self._socks[key] = (sock, raw)
        return self._socks[key]

    def probe(self, check: Check, source: str | None, done: Done) -> bool:
        fam = family(check.address)
        try:
            sock, raw = self._socket(fam, source)
        except OSError as exc:  # no raw socket and no ping socket for this user: nothing can be said
            self.loop.call_soon(done, None, f"cannot send ICMP: {exc.strerror or exc}")
            return True
        self._seq = (self._seq + 1) & 0xFFFF
        kind = ICMP_ECHO if fam == socket.AF_INET else ICMP6_ECHO
        body = struct.pack("!BBHHH", kind, 0, 0, self._ident, self._seq) + b"clbagent-health!"
        if fam == socket.AF_INET:  # the kernel fills in the ICMPv6 checksum itself
            body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        try:
            sock.sendto(body, (check.address, 0))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.loop.call_soon(done, False, exc.strerror or str(exc))
            return True
        key = (socket.inet_pton(fam, check.address).hex(), self._seq)
        deadline = self.loop.time() + check.timeout
        self._pending[key] = (
            done,
            self.loop.call_at(deadline, self._timeout, key, (sock, fam, raw), check.timeout),
            deadline,
        )
        return True

    def _drain(self, sock: socket.socket, fam: socket.AddressFamily, raw: bool) -> None:
        reply = ICMP_ECHO_REPLY if fam == socket.AF_INET else ICMP6_ECHO_REPLY
        while True:
            try:
                packet, peer = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            offset = (packet[0] & 0x0F) * 4 if raw and fam == socket.AF_INET else 0
            if len(packet) < offset + 8 or packet[offset] != reply:
                continue
            ident, seq = struct.unpack_from("!HH", packet, offset + 4)
            if raw and ident != self._ident:
                continue  # another process's ping (unprivileged sockets get only their own)
            pending = self._pending.pop((socket.inet_pton(fam, peer[0]).hex(), seq), None)
            if pending is not None:
                pending[1].cancel()
                pending[0](True, "")

    def _timeout(
        self, key: tuple[str, int], via: tuple[socket.socket, socket.AddressFamily, bool], seconds: float
    ) -> None:
        self._drain(*via)  # a reply the loop had no time to read is a reply
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending[0](None if late(self.loop, pending[2]) else False, f"no echo reply within {seconds:g}s")

    def close(self) -> None:
        for _done, timer, _ in self._pending.values():
            timer.cancel()
        self._pending.clear()
        for sock, _ in self._socks.values():
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
