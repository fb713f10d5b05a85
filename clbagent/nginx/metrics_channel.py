"""The L7 counters nginx keeps in shared memory (``clbagent/lua/clb/metrics.lua``, docs/metrics.md).

Every server and location the compiler writes sets ``SCOPE_VAR`` to a scope made of configuration
IDs only, ``<LoadBalancerId>/<ListenerId>/<LocationId>/<domain>`` (the domain percent-encoded, so
that a regex domain's ``$`` or ``"`` never reaches the nginx file as such); the Lua log phase
counts each request under its scope and its backend member. The agent reads the counters over the
control channel (``GET /metrics``) at scrape time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import httpx

# Longer than 32 characters: no named capture of a user's regex can set it (see l7/names.py).
SCOPE_VAR = "clb_scope_" + hashlib.sha256(b"metrics scope").hexdigest()[:32]
SHARED_DICT = "clb_metrics"
DICT_SIZE = "32m"  # a fixed size: a changed size would empty the counters at the next reload
_DOMAIN_SAFE = "*._-"  # kept as they are (with letters and digits); everything else is %XX


def scope(load_balancer: str, listener: str, rule: str, domain: str) -> str:
    """The scope of one location (``rule`` = LocationId) or of a server's own answers (``rule`` "")."""
    return f"{load_balancer}/{listener}/{rule}/{quote(domain, safe=_DOMAIN_SAFE)}"


class MetricsUnavailableError(Exception):
    """nginx did not answer the counters (not running, no Lua module, a failed request)."""


def read_text(socket_path: Path, served: Iterable[str] | None = None, timeout: float = 5.0) -> str:
    """``/metrics`` on the control channel (``<prefix>/run/ctl.sock``): the Prometheus text of the
    L7 counters, written by nginx (``clb.metrics_text``), of the ``served`` load balancers only
    (None: all). It ends with the header and the L7 samples of ``clb_instance_bytes_total``, so
    that the L4 samples of that family can follow. Plain HTTP over a unix socket: no TLS context
    (building one costs ~0.1 s per scrape)."""
    transport = httpx.HTTPTransport(uds=str(socket_path), verify=False)
    try:
        with httpx.Client(transport=transport, base_url="http://nginx", timeout=timeout, verify=False) as http:
            body = None if served is None else {"served": sorted(served)}
            resp = http.request("GET" if body is None else "POST", "/metrics", json=body)
    except httpx.HTTPError as e:
        raise MetricsUnavailableError(f"nginx control channel: {e}") from e
    if resp.status_code != 200:
        raise MetricsUnavailableError(f"nginx control channel: {resp.status_code} {resp.text[:200]}")
    return resp.text


def http_lines() -> tuple[str, str, str, str]:
    """The http-level pieces of counting: the dict and the scope's default, the module loaded in
    the master, the flush timer of each worker, and the log-phase call."""
    return (
        # the scope is "" wherever no server or location of ours sets it (no warning, not counted)
        f'    lua_shared_dict {SHARED_DICT} {DICT_SIZE};\n    map "" ${SCOPE_VAR} {{ default ""; }}\n',
        'require("clb.metrics")',
        '    init_worker_by_lua_block { require("clb.metrics").start() }\n',
        f'require("clb.metrics").log("{SCOPE_VAR}")',
    )


# The channel's location of the counters.
CHANNEL_LINES = '        location = /metrics { content_by_lua_block { require("clb.metrics").dump() } }\n'
