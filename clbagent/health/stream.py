"""Probes over one TCP connection, driven by readiness callbacks: plain connect (the fallback TCP
check), HTTP and HTTPS (status class against the HttpCode bitmask; targets' certificates are not
verified) and TCP custom (a payload sent, the reply compared)."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import ssl
from collections.abc import Callable
from urllib.parse import quote

from clbagent.health.probe import Done, OneShot, abortive, bind_source, family, late
from clbagent.health.spec import Check

Verdict = tuple[bool, str] | None
Judge = Callable[[bytes, bool], Verdict]
MAX_REPLY = 16384


def http_request(check: Check) -> bytes:
    """The request line and headers of an HTTP check; ``Connection: close``, nothing else."""
    host = check.host or (f"[{check.address}]" if ":" in check.address else check.address)
    path = quote(check.path or "/", safe="/?=&%:;@!$'()*+,~-._")
    head = f"{check.method} {path} {check.version}\r\nHost: {host}\r\n"
    return f"{head}User-Agent: clbagent-health\r\nConnection: close\r\n\r\n".encode("ascii", "replace")


def http_judge(codes: int) -> Judge:
    """Healthy when the status class is in ``codes`` (1 = 1xx, 2 = 2xx, 4 = 3xx, 8 = 4xx, 16 = 5xx)."""

    def judge(buf: bytes, eof: bool) -> Verdict:
        end = buf.find(b"\n")
        if end < 0:
            if eof or len(buf) > MAX_REPLY:
                return False, "no HTTP status line"
            return None
        parts = buf[:end].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
            return False, "no HTTP status line"
        status = int(parts[1])
        bit = 1 << (status // 100 - 1) if 1 <= status // 100 <= 5 else 0
        return (True, "") if bit & codes else (False, f"HTTP {status}")

    return judge


def reply_judge(expect: bytes) -> Judge:
    """Healthy when the reply starts with the expected bytes."""

    def judge(buf: bytes, eof: bool) -> Verdict:
        if len(buf) >= len(expect):
            return (True, "") if buf.startswith(expect) else (False, f"unexpected reply {buf[:16].hex()}")
        return (False, "closed before the expected reply") if eof else None

    return judge


class StreamProber(OneShot):
    """connect, then (optionally) TLS, one request and a judged reply; all on callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE  # targets' certificates are not checked

    def probe(self, check: Check, source: str | None, done: Done) -> bool:
        if check.kind in ("http", "https"):
            request, judge = http_request(check), http_judge(check.codes)
        elif check.kind == "tcp-custom":
            request, judge = check.send, reply_judge(check.expect)
        else:
            request, judge = None, None
        tls = self.tls if check.kind == "https" else None
        try:
            sock = socket.socket(family(check.address), socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                return False  # out of descriptors: this probe waits, it does not fail
            raise
        _Connection(self.loop, sock, check, source, done, request, judge, tls)
        return True

    def close(self) -> None:
        return None


class _Connection:
    __slots__ = (
        "bio",
        "buf",
        "check",
        "deadline",
        "done",
        "fd",
        "judge",
        "loop",
        "request",
        "sock",
        "ssl",
        "stage",
        "timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        check: Check,
        source: str | None,
        done: Done,
        request: bytes | None,
        judge: Judge | None,
        tls: ssl.SSLContext | None,
    ):
        self.loop, self.sock, self.fd, self.check, self.done = loop, sock, sock.fileno(), check, done
        self.request, self.judge, self.buf, self.stage = request, judge, b"", "connect"
        self.ssl: ssl.SSLObject | None = None
        self.bio: tuple[ssl.MemoryBIO, ssl.MemoryBIO] | None = None
        self.deadline = loop.time() + check.timeout
        self.timer = loop.call_at(self.deadline, self._timeout)
        try:
            abortive(sock)
            bind_source(sock, source)
            err = sock.connect_ex((check.address, check.port))
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err not in (0, errno.EINPROGRESS):
            self._finish(False, os.strerror(err))
            return
        if tls is not None:
            self.bio = (ssl.MemoryBIO(), ssl.MemoryBIO())
            self.ssl = tls.wrap_bio(*self.bio, server_hostname=check.host or None)
        loop.add_writer(self.fd, self._connected)

    def _connected(self) -> None:
        self.loop.remove_writer(self.fd)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._finish(False, os.strerror(err))
            return
        if self.judge is None:
            self._finish(True, "")
            return
        self.stage = "reply"
        self.loop.add_reader(self.fd, self._readable)
        if self.ssl is None:
            self._send(self.request or b"")
        else:
            self._tls()

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)  # a request of a few hundred bytes fits a fresh socket's buffer
        except OSError as exc:
            self._finish(False, exc.strerror or str(exc))

    def _readable(self) -> None:
        try:
            data = self.sock.recv(MAX_REPLY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(False, exc.strerror or str(exc))
            return
        if self.ssl is not None and self.bio is not None:
            if data:
                self.bio[0].write(data)
            else:
                self.bio[0].write_eof()
            self._tls()
            return
        self._judge(data, not data)

    def _tls(self) -> None:
        """Advance the handshake, send the request once it is done, and read what is decrypted."""
        assert self.ssl is not None and self.bio is not None
        plain, eof = b"", False
        try:
            if self.request is not None:
                self.ssl.do_handshake()
                self.ssl.write(self.request)
                self.request = None
            while chunk := self.ssl.read(MAX_REPLY):
                plain += chunk
            eof = True
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            eof = True
        except (ssl.SSLError, OSError) as exc:
            self._finish(False, f"TLS: {exc.__class__.__name__}: {getattr(exc, 'reason', None) or exc}")
            return
        out = self.bio[1].read()
        if out:
            self._send(out)
        if self.sock.fileno() >= 0 and (plain or eof):
            self._judge(plain, eof)

    def _judge(self, data: bytes, eof: bool) -> None:
        assert self.judge is not None
        self.buf += data
        verdict = self.judge(self.buf, eof)
        if verdict is not None:
            self._finish(*verdict)

    def _timeout(self) -> None:
        self.timer = None
        # A reply the loop had no time to read is a reply: look once before giving up.
        poller = select.poll()
        poller.register(self.fd, select.POLLIN if self.stage == "reply" else select.POLLOUT)
        if poller.poll(0) and self.stage == "reply":
            self._readable()
        elif poller.poll(0):
            self._connected()
        if self.sock.fileno() < 0:
            return
        self._finish(None if late(self.loop, self.deadline) else False, f"timed out after {self.check.timeout:g}s")

    def _finish(self, ok: bool | None, error: str) -> None:
        if self.sock.fileno() < 0:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.loop.remove_writer(self.fd)
        self.loop.remove_reader(self.fd)
        self.sock.close()
        self.done(ok, error)
