"""The L7 counters nginx keeps in shared memory (``clbagent/lua/clb/metrics.lua``, docs/metrics.md).

Every server and location the compiler writes sets ``SCOPE_VAR`` to a scope made of configuration
IDs only, ``<LoadBalancerId>/<ListenerId>/<LocationId>/<domain>`` (the domain percent-encoded, so
that a regex domain's ``$`` or ``"`` never reaches the nginx file as such); the Lua log phase
counts each request under its scope and its backend member. The agent reads the counters over the
control channel (``POST /metrics``) at scrape time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from urllib.parse import quote

from clbagent.nginx.process import NGINX

# Longer than 32 characters: no named capture of a user's regex can set them (see l7/names.py).
SCOPE_VAR = "clb_scope_" + hashlib.sha256(b"metrics scope").hexdigest()[:32]
LOG_VAR = "clb_log_" + hashlib.sha256(b"metrics log").hexdigest()[:25]
# clbagent's own nginx module (clbagent/nginx/module, built by scripts/build-nginx-module.sh): it
# hands the log phase the values of LOG_FIELDS as numbers. Next to it, "<nginx version>
# <module signature>" of the nginx it was built for.
MODULE = Path(__file__).resolve().parent / "module" / "ngx_http_clb_metrics_module.so"
# Without the module, what the log phase reads, in one variable (clb.metrics parses it in this order): one read of
# nginx's variables costs as much as the Lua that buffers the request. The times are "%T.%03M"
# per try; the scope comes last, so nothing it holds can shift the other values. The status and
# the request's time come from the Lua module's FFI calls, which format no text.
LOG_FIELDS = "|".join(
    (
        "$request_length",
        "$bytes_sent",
        "$connection_requests",
        "$upstream_header_time",
        "$upstream_response_time",
        "$upstream_addr",
        f"${SCOPE_VAR}",
    )
)
SHARED_DICT = "clb_metrics"
DICT_SIZE = "32m"  # a fixed size: a changed size would empty the counters at the next reload
_DOMAIN_SAFE = "*._-"  # kept as they are (with letters and digits); everything else is %XX


def scope(load_balancer: str, listener: str, rule: str, domain: str) -> str:
    """The scope of one location (``rule`` = LocationId) or of a server's own answers (``rule`` "")."""
    return f"{load_balancer}/{listener}/{rule}/{quote(domain, safe=_DOMAIN_SAFE)}"


def module_path(module: Path | None = None, nginx: str | None = None) -> Path | None:
    """``module`` (default ``MODULE``) when it was built for the ``nginx`` binary (default the one
    clbagent runs), else None (the log phase then reads the joined variable). nginx refuses to
    start with a module built for another version or with other build options, so a module
    reaches nginx.conf only when the version and the signature it was built with are both in that
    binary, as nginx itself compares them."""
    module, nginx = module or MODULE, nginx or NGINX
    try:
        version, signature = (module.parent / (module.name + ".abi")).read_text().split()
        st = os.stat(nginx)
    except (OSError, ValueError):
        return None
    if not module.is_file():
        return None
    return module if _binary_has(nginx, st.st_mtime_ns, st.st_size, f"nginx/{version}", signature) else None


@cache
def _binary_has(nginx: str, mtime_ns: int, size: int, *strings: str) -> bool:
    """Whether the binary holds each of ``strings`` as a C string; cached per version of the file."""
    try:
        data = Path(nginx).read_bytes()
    except OSError:
        return False
    return all(s.encode() + b"\0" in data for s in strings)


class MetricsUnavailableError(Exception):
    """nginx did not answer the counters (not running, no Lua module, a failed request)."""


def read_text(socket_path: Path, served: Iterable[str] | None = None, timeout: float = 5.0) -> bytes:
    """``/metrics`` on the control channel (``<prefix>/run/ctl.sock``): the Prometheus text of the
    L7 counters, written by nginx (``clb.metrics_text``), of the ``served`` load balancers only
    (None: all). It ends with the header and the L7 samples of ``clb_instance_bytes_total``, so
    that the L4 samples of that family can follow. The bytes are passed on as they are: at 1,000
    load balancers they are ~10 MB, and decoding them would cost the scrape time."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        body = None if served is None else json.dumps({"served": sorted(served)})
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request("GET" if body is None else "POST", "/metrics", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise MetricsUnavailableError(f"nginx control channel: {e}") from e
    finally:
        conn.close()
    if resp.status != 200:
        raise MetricsUnavailableError(f"nginx control channel: {resp.status} {data[:200].decode(errors='replace')}")
    return data


class _UnixConnection(http.client.HTTPConnection):
    """Plain HTTP/1.1 over a unix socket: no TLS context, no client pool (a scrape makes one request)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("nginx", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def http_lines() -> tuple[str, str, str, str]:
    """The http-level pieces of counting: the dict, the default of the scope variable and the
    variable that joins the log phase's values (read where nginx runs without ``MODULE``), the
    Lua module loaded in the master, the flush timer of each worker, and the log-phase call."""
    return (
        # the scope is "" wherever no server or location of ours sets it (no warning, not counted);
        # a map's value is computed when it is read: in the log phase, once per request
        f'    lua_shared_dict {SHARED_DICT} {DICT_SIZE};\n    map "" ${SCOPE_VAR} {{ default ""; }}\n'
        f'    map "" ${LOG_VAR} {{ default "{LOG_FIELDS}"; }}\n',
        'require("clb.metrics")',
        '    init_worker_by_lua_block { require("clb.metrics").start() }\n',
        f'require("clb.metrics").log("{LOG_VAR}", "{SCOPE_VAR}")',
    )


# The channel's location of the counters.
CHANNEL_LINES = '        location = /metrics { content_by_lua_block { require("clb.metrics").dump() } }\n'
