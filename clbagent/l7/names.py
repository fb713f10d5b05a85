"""Stable names derived from IDs: files, upstreams, zones, map variables, cookies, server ids.

Names are a readable part (the ID with anything outside ``[A-Za-z0-9]`` folded to ``_``) plus a
short hash of the full identity, so that ``lb-1`` and ``lb_1`` never collide and the same input
always gives the same name (byte-identical output).
"""

from __future__ import annotations

import hashlib
import hmac
import re

_FOLD = re.compile(r"[^A-Za-z0-9]+")


def digest(*parts: str, size: int = 8) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:size]


def token(text: str, limit: int = 32) -> str:
    """A readable, nginx-identifier-safe rendering of an ID."""
    return _FOLD.sub("_", text).strip("_")[:limit] or "x"


def rule_key(lb: str, listener: str, location: str) -> str:
    return f"{lb}/{listener}/{location}"


def down_key(lb: str, listener: str, location: str, endpoint: str) -> str:
    """Health-hook key of one target of one rule: ``<lb>/<listener>/<location>/<ip:port>``."""
    return f"{rule_key(lb, listener, location)}/{endpoint}"


def upstream_name(lb: str, listener: str, location: str) -> str:
    return f"u_{token(location)}_{digest(lb, listener, location)}"


def zone_name(lb: str) -> str:
    return f"z_{token(lb)}_{digest(lb)}"


def sticky_suffix(lb: str, listener: str, location: str) -> str:
    return digest("sticky", lb, listener, location, size=10)


def server_id(secret: bytes, key: str, endpoint: str) -> str:
    """Opaque cookie value naming one target: a truncated HMAC of ``ip:port``, never the IP."""
    return hmac.new(secret or b"clbagent", f"{key}\0{endpoint}".encode(), hashlib.sha256).hexdigest()[:16]


def lb_file(lb: str) -> str:
    return f"conf.d/{lb}.conf"


def cert_files(cert_id: str) -> tuple[str, str]:
    return f"certs/{cert_id}.crt", f"certs/{cert_id}.key"


def ca_file(cert_id: str) -> str:
    return f"certs/{cert_id}.ca.crt"
