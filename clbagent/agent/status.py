"""The status of the running agent, served on a root-only unix socket and read by `status`.

The protocol is one JSON document per connection: the client sends a request line (``status``,
``upstreams`` for the members nginx holds, ``health`` for every target's health) and reads the
answer until the server closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any


async def serve(path: Path, snapshot: Callable[[str], dict[str, Any]]) -> asyncio.AbstractServer:
    """Listen on ``path`` (0600, in a 0700-or-stricter directory we create) and answer requests."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    path.unlink(missing_ok=True)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await asyncio.wait_for(reader.readline(), 5)).decode(errors="replace").strip()
            try:
                # In a worker thread: a snapshot does blocking I/O (netlink for IPVS, HTTP to nginx),
                # which must not stall the agent's loop, and pyroute2's blocking calls refuse to run
                # in a thread whose event loop is running.
                answer = await asyncio.to_thread(snapshot, request or "status")
            except Exception as exc:  # the status must answer whatever one part of it does
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(answer, default=str).encode())
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


class StatusUnavailableError(RuntimeError):
    """No agent answers on the socket."""


def request(path: Path, what: str = "status", timeout: float = 10.0) -> dict[str, Any]:
    """Ask the running agent (blocking client used by the CLI)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(f"{what}\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError):
        raise StatusUnavailableError(f"no agent is running (nothing answers on {path})") from None
    except PermissionError:
        raise StatusUnavailableError(f"permission denied on {path} (the status socket is root-only)") from None
    except OSError as exc:
        raise StatusUnavailableError(f"cannot read the status from {path}: {exc.strerror or exc}") from None
    answer = json.loads(b"".join(chunks) or b'{"error": "the agent closed the connection without an answer"}')
    if "error" in answer:
        raise StatusUnavailableError(f"the agent could not answer: {answer['error']}")
    return answer
