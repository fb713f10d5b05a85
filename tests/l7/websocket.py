"""A minimal RFC 6455 WebSocket echo server and client for the tests (text frames up to 64 KiB).

Written out here rather than taken from a library so that the tests need nothing beyond the
standard library: the handshake (Sec-WebSocket-Key → Accept), masked client frames, unmasked
server frames, and a close frame.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
TEXT, CLOSE = 0x1, 0x8


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed inside a frame")
        data += chunk
    return data


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed inside the handshake")
        data += chunk
    return data


def send_frame(sock: socket.socket, opcode: int, payload: bytes, mask: bool) -> None:
    head = bytes([0x80 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    head += bytes([bit | size]) if size < 126 else bytes([bit | 126]) + struct.pack("!H", size)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    sock.sendall(head + payload)


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    first, second = _read_exact(sock, 2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", _read_exact(sock, 2))
    key = _read_exact(sock, 4) if second & 0x80 else b""
    payload = _read_exact(sock, size)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


class EchoServer:
    """Answers the upgrade with 101 and echoes each text frame back as ``<label>: <text>``.
    ``upgrade_headers`` keeps the Upgrade/Connection headers each handshake arrived with."""

    def __init__(self, ip: str, label: str):
        self.label = label
        self.sock = socket.create_server((ip, 0))
        self.ip, self.port = self.sock.getsockname()[:2]
        self.upgrade_headers: list[dict[str, str]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def target(self) -> dict[str, object]:
        return {"EniIp": self.ip, "Port": self.port, "Weight": 10}

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionError):
            head = _read_head(conn).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            self.upgrade_headers.append({k: headers.get(k, "") for k in ("upgrade", "connection")})
            key = accept_key(headers.get("sec-websocket-key", ""))
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {key}\r\n\r\n".encode()
            )
            while True:
                opcode, payload = read_frame(conn)
                if opcode == CLOSE:
                    send_frame(conn, CLOSE, payload, mask=False)
                    return
                send_frame(conn, TEXT, f"{self.label}: ".encode() + payload, mask=False)

    def close(self) -> None:
        self.sock.close()


class Client:
    """A WebSocket client over plain TCP (ws://) or TLS (wss://, any certificate accepted)."""

    def __init__(self, vip: str, port: int, host: str, path: str = "/", tls: bool = False, timeout: float = 10):
        sock = socket.create_connection((vip, port), timeout=timeout)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = _read_head(sock).decode("latin-1")
        self.status = int(head.split(" ", 2)[1])
        self.accepted = f"sec-websocket-accept: {accept_key(key)}".lower() in head.lower()

    def exchange(self, text: str) -> str:
        send_frame(self.sock, TEXT, text.encode(), mask=True)
        opcode, payload = read_frame(self.sock)
        assert opcode == TEXT, f"expected a text frame, got opcode {opcode}"
        return payload.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            send_frame(self.sock, CLOSE, b"", mask=True)
            read_frame(self.sock)
        self.sock.close()
