"""compile_nginx: desired state → nginx file set. Pure: no I/O, same input → same bytes.

Layout of the result (paths relative to the nginx prefix):
``nginx.conf`` (global settings, includes ``conf.d/*.conf``), ``conf.d/<LoadBalancerId>.conf`` (the
maps, upstreams and servers of one load balancer, so that a change to one rewrites one file),
``certs/<CertId>.crt|.key`` and ``ca/<CertId>.crt`` (written once per certificate, shared).
In dynamic mode (docs/dynamic-upstreams.md) each load balancer also has ``upstreams/<LoadBalancerId>.json``,
the members of its upstreams: a target, weight or health change rewrites that file only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clbagent.errors import Code, Issue
from clbagent.model import LoadBalancer
from clbagent.nginx import upstreams_channel as channel
from clbagent.nginx.metrics_channel import SCOPE_VAR, module_path
from clbagent.validate import DesiredState
from clbagent.validate.catalog import Catalog

from . import names
from .headers import CONNECTION_UPGRADE, DEFAULT_PROXY_HEADERS
from .personalized import personalized_for
from .quote import UnsafeTextError
from .redirects import auto_redirects, manual_redirects
from .render import render
from .server_tls import TlsRefusedError
from .servers import LbContext, auto_listener_servers, listener_servers
from .upstreams import ANSWERED, place_in_zone

DEFAULT_PREFIX = "/var/lib/clbagent/nginx"
HEADERS_MORE = "/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so"
LUA_MODULE = channel.NGINX_MODULES / "ngx_http_lua_module.so"  # dynamic mode needs it
# T2975: the types CLB compresses (text/html is compressed by nginx whenever gzip is on).
GZIP_TYPES = [
    "application/atom+xml",
    "application/javascript",
    "application/json",
    "application/rss+xml",
    "application/vnd.ms-fontobject",
    "application/x-font-ttf",
    "application/x-web-app-manifest+json",
    "application/xhtml+xml",
    "application/xml",
    "font/opentype",
    "image/svg+xml",
    "image/x-icon",
    "text/css",
    "text/plain",
    "text/x-component",
]
PROTOCOL_TYPE = names.variable("protocol_type")  # http, https, http2, ws or wss
# One UTF-8 character, strictly (no overlong forms, no surrogates), as a byte-mode PCRE: request
# text that is not UTF-8 is logged up to its first invalid byte, then U+FFFD, since nginx's
# escape=json passes bytes >= 0x80 through and such a line would not be JSON.
UTF8_CHAR = (
    r"(?:[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    r"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})"
)
# Client-supplied values of the log and the variable holding each one as valid UTF-8.
LOG_UTF8 = tuple((source, names.variable("log_utf8", source)) for source in ("$request", "$host", "$http_user_agent"))
_LOGGED = dict(LOG_UTF8)
# Digest §4.4 record fields, every one present so that log readers find the product's field set:
# $ssl_handshake_time does not exist in nginx 1.22 ("-"), and a plain host has no VPC (vip_vpcid,
# a numeric index field, is -1).
LOG_FIELDS = (
    ("time_local", "$time_local"),
    ("server_addr", "$server_addr"),
    ("server_port", "$server_port"),
    ("server_name", "$server_name"),
    ("http_host", _LOGGED["$host"]),
    ("remote_addr", "$remote_addr"),
    ("remote_port", "$remote_port"),
    ("request", _LOGGED["$request"]),
    ("status", "$status"),
    ("bytes_sent", "$bytes_sent"),
    ("request_length", "$request_length"),
    ("request_time", "$request_time"),
    ("protocol_type", PROTOCOL_TYPE),
    ("upstream_addr", "$upstream_addr"),
    ("upstream_status", "$upstream_status"),
    ("upstream_connect_time", "$upstream_connect_time"),
    ("upstream_header_time", "$upstream_header_time"),
    ("upstream_response_time", "$upstream_response_time"),
    ("connection_requests", "$connection_requests"),
    ("ssl_protocol", "$ssl_protocol"),
    ("ssl_cipher", "$ssl_cipher"),
    ("ssl_session_reused", "$ssl_session_reused"),
    ("ssl_handshake_time", "-"),
    ("tcpinfo_rtt", "$tcpinfo_rtt"),
    ("http_user_agent", _LOGGED["$http_user_agent"]),
    ("request_id", "$request_id"),
    ("vip_vpcid", "-1"),
)


@dataclass
class NginxConfig:
    """The compiled file set (relative path → text) and what the operator should know about it."""

    files: dict[str, str]
    warnings: list[Issue] = field(default_factory=list)


@dataclass(frozen=True)
class LuaText:
    """What dynamic mode adds to nginx.conf: module loading, http-level Lua, the control channel."""

    main: str
    http: str
    channel: str


def lua_text(prefix: str, conf_dir: str, upstreams: Mapping[str, channel.Upstream]) -> LuaText:
    """The shared dict is sized from ``upstreams`` in power-of-two steps: a new size empties it at
    the next reload (the agent then re-sends), so it should rarely change. The cookie's header
    filter is there only when some upstream has cookie persistence (the first one reloads)."""
    size = channel.shared_dict_size(upstreams)
    sticky = any(u.sticky for u in upstreams.values())
    return LuaText(
        channel.main_directives(),
        channel.http_directives(Path(conf_dir) / channel.DATA_DIR, size, sticky=sticky),
        channel.channel_server(Path(prefix)),
    )


def main_conf(
    prefix: str,
    worker_shutdown_timeout: str = "60s",
    *,
    dynamic: bool = False,
    upstreams: Mapping[str, channel.Upstream] | None = None,
    conf_dir: str | None = None,
    nginx: str | None = None,
) -> str:
    """``nginx.conf``: global settings and the include of every load balancer's file.
    ``worker_shutdown_timeout`` bounds how long old workers drain after a reload. ``dynamic``:
    load the Lua balancer, the data files of ``<conf_dir>/upstreams`` (``conf_dir``: the directory
    nginx.conf is served from, default ``prefix``; the agent's is ``<root>/current``) and serve the
    control channel on ``<prefix>/run/ctl.sock``; ``upstreams`` (all of them, see
    ``upstreams_of``) sizes the shared memory. ``nginx``: the binary that will serve it (default
    the one clbagent runs), which decides whether clbagent's metrics module can be loaded."""
    prefix = prefix.rstrip("/") or "/"
    lua = lua_text(prefix, conf_dir or prefix, upstreams or {}) if dynamic else None
    return render(
        "nginx.conf.j2",
        prefix=prefix,
        lua=lua,
        metrics_module=module_path(nginx=nginx) if dynamic else None,
        worker_shutdown_timeout=worker_shutdown_timeout,
        headers_more=HEADERS_MORE,
        proxy_headers=DEFAULT_PROXY_HEADERS,
        gzip_types=GZIP_TYPES,
        log_fields=LOG_FIELDS,
        log_utf8=LOG_UTF8,
        utf8_valid=f"~^{UTF8_CHAR}*$",
        utf8_prefix=f"~^({UTF8_CHAR}*)",
        protocol_type=PROTOCOL_TYPE,
        connection_upgrade=CONNECTION_UPGRADE,
        answered=ANSWERED,
    )


def compile_lb(
    lb: LoadBalancer,
    catalog: Catalog,
    down: frozenset[str],
    secret: bytes,
    *,
    legacy_tls: bool = False,
    dynamic: bool = False,
) -> tuple[str, dict[str, str], list[Issue]]:
    """The include file of one load balancer, the other files it needs (certificates; its data
    file in dynamic mode), its warnings.

    Raises ``UnsafeTextError`` or ``TlsRefusedError`` when the load balancer cannot be served."""
    pers = personalized_for(lb, catalog)
    ctx = LbContext(lb, catalog, pers, down, secret, manual_redirects(lb), legacy_tls, dynamic)
    auto = auto_redirects(lb)
    servers = []
    http80 = next((lis for lis in lb.listeners if lis.protocol == "HTTP" and lis.port == 80), None)
    for lis in lb.listeners:
        if lis.is_l4:
            continue
        servers.extend(listener_servers(ctx, lis, auto if lis is http80 else []))
    if auto and http80 is None:
        servers.extend(auto_listener_servers(ctx, auto))
    upstreams = [u for p in ctx.pools for u in p.upstreams]
    balancers = []
    if dynamic:
        balancers = [channel.upstream_block(u.name, u.keepalive) for u in upstreams]
        data = {p.target: p.dynamic for p in ctx.pools if p.dynamic is not None}
        ctx.files[names.data_file(lb.id)] = channel.render_data_file(data)
        upstreams = []
    place_in_zone(upstreams, names.zone_name(lb.id))
    text = render(
        "loadbalancer.conf.j2",
        lb_id=lb.id,
        maps=[m for p in ctx.pools for m in p.maps] + ctx.geos,
        upstreams=upstreams,
        balancers=balancers,
        servers=servers,
        scope_var=SCOPE_VAR,
        no_access_log=lb.is_ipv6,  # the product logs L7 requests of IPv4 instances only (R137)
    )
    return text, ctx.files, ctx.warnings


def compile_unit(
    lb: LoadBalancer,
    catalog: Catalog,
    down: frozenset[str],
    secret: bytes,
    *,
    legacy_tls: bool = False,
    dynamic: bool = False,
) -> tuple[dict[str, str], list[Issue]]:
    """What one load balancer adds to the prefix: its include file and the certificates it uses
    (and, ``dynamic``, its data file ``upstreams/<LoadBalancerId>.json``), with its warnings. One
    that cannot be served adds no file, and its issues say why (errors)."""
    try:
        text, files, warnings = compile_lb(lb, catalog, down, secret, legacy_tls=legacy_tls, dynamic=dynamic)
    except UnsafeTextError as exc:
        return {}, [Issue(lb.id, Code.FORMAT_ERROR, f"not rendered, unsafe text: {exc}")]
    except TlsRefusedError as exc:
        return {}, [Issue(f"{lb.id}/{exc.path}", exc.code, f"not rendered: {exc}")]
    return {names.lb_file(lb.id): text, **files}, warnings


def compile_nginx(
    state: DesiredState,
    down: frozenset[str] = frozenset(),
    *,
    prefix: str = DEFAULT_PREFIX,
    secret: bytes = b"",
    dynamic: bool = False,
) -> NginxConfig:
    """Compile every valid load balancer with HTTP/HTTPS listeners.

    ``down``: health-hook keys ``<LoadBalancerId>/<ListenerId>/<LocationId>/<ip:port>`` of targets
    to render ``down`` (all-dead-all-alive applies per rule). ``prefix``: the directory the file set
    is installed in (only ``nginx.conf`` names it). ``secret``: key of the sticky-cookie server ids.
    ``dynamic``: upstream members as data for the Lua balancer (docs/dynamic-upstreams.md).
    """
    files: dict[str, str] = {}
    warnings: list[Issue] = []
    for _lb_id, lb in sorted(state.load_balancers().items()):
        if all(lis.is_l4 for lis in lb.listeners):
            continue
        lb_files, lb_issues = compile_unit(
            lb, state.catalog, down, secret, legacy_tls=state.settings.legacy_tls_default, dynamic=dynamic
        )
        files.update(lb_files)
        warnings.extend(lb_issues)
    upstreams = channel.upstreams_of(files) if dynamic else None
    files["nginx.conf"] = main_conf(prefix, dynamic=dynamic, upstreams=upstreams)
    return NginxConfig(dict(sorted(files.items())), warnings)
