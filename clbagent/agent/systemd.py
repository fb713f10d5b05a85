"""systemd's notify protocol (READY, WATCHDOG, STATUS, STOPPING): one datagram to
``$NOTIFY_SOCKET``. Outside systemd every call does nothing."""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(fields).encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for (``WatchdogSec=``), if it asked, for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
