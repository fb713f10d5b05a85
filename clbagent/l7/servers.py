"""``server{}`` blocks of one HTTP/HTTPS listener: one per domain, plus the default handling.

- One server per (listener, domain); ``listen VIP:PORT`` on every VIP of the instance, with ``ssl``
  and (if any domain of the listener asks) ``http2`` — both are properties of the listen socket in
  nginx 1.22, so HTTP/2 on one domain means HTTP/2 for the whole listener (a warning says so).
- Default-domain switch on: the default domain's server is ``default_server``. Off: a separate
  default server refuses unmatched hosts (HTTP ``return 444``, HTTPS ``ssl_reject_handshake on``).
- One ``location`` per URL rule with its own modifier; without a ``/`` rule, ``location /``
  answers 404 (T2044).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv6Address

from clbagent.errors import Code, Issue
from clbagent.model import Listener, LoadBalancer, Rule
from clbagent.model.syntax import Url
from clbagent.nginx.metrics_channel import scope
from clbagent.personalized_config import Directive
from clbagent.validate.catalog import Catalog

from . import headers, names, server_tls
from .personalized import Personalized, without
from .redirects import AutoRedirect, auto_location
from .upstreams import MapBlock, Pool, build_pool
from .views import Listen, Location, ServerBlock

NO_TARGETS = "503"


@dataclass
class LbContext:
    """Everything compiling one load balancer needs and produces."""

    lb: LoadBalancer
    catalog: Catalog
    personalized: Personalized
    down: frozenset[str]
    secret: bytes
    manual: dict[str, tuple[str, str]]
    legacy_tls: bool = False  # the legacy_tls_default setting
    dynamic: bool = False  # upstream members as data for the Lua balancer (docs/dynamic-upstreams.md)
    pools: list[Pool] = field(default_factory=list)
    geos: list[MapBlock] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[Issue] = field(default_factory=list)

    def scope(self, listener: str, rule: str = "", domain: str = "") -> str | None:
        """The metrics scope of a server or location; None without the Lua module (nothing counts)."""
        return scope(self.lb.id, listener, rule, domain) if self.dynamic else None

    def warn(self, path: str, code: Code, message: str) -> None:
        issue = Issue(f"{self.lb.id}/{path}", code, message, "warning")
        if issue not in self.warnings:
            self.warnings.append(issue)


def addresses(lb: LoadBalancer, port: int) -> list[str]:
    return [f"[{v}]:{port}" if isinstance(v, IPv6Address) else f"{v}:{port}" for v in lb.load_balancer_vips]


def _listens(lb: LoadBalancer, port: int, default: bool, ssl: bool = False, http2: bool = False) -> list[Listen]:
    return [Listen(a, default, ssl, http2) for a in addresses(lb, port)]


def _domains(rules: list[Rule]) -> dict[str, list[Rule]]:
    groups: dict[str, list[Rule]] = {}
    for rule in rules:
        groups.setdefault(rule.domain, []).append(rule)
    return groups


def _server_directives(ctx: LbContext, lis: Listener) -> list[Directive]:
    """Personalized server-level directives; the listener's own timeouts win over them."""
    own: list[Directive] = []
    if lis.idle_timeout:
        own.append(Directive("keepalive_timeout", (f"{lis.idle_timeout}s",)))
    if lis.request_timeout:
        own.append(Directive("proxy_read_timeout", (f"{lis.request_timeout}s",)))
    return without(ctx.personalized.server, {d.name for d in own}) + own


def _access(ctx: LbContext, lis: Listener) -> str | None:
    """The variable that is "1" for clients the listener's ACL refuses (white list: everyone not
    listed; black list: everyone listed), or None without an ACL. A ``geo`` variable tested at the
    top of the server, in the rewrite phase, refuses them before any ``return`` (redirects, 404)
    runs; ``allow``/``deny`` would only act after those."""
    if lis.acl_status != "on" or not lis.acl_id:
        return None
    acl = ctx.catalog.acls[lis.acl_id]
    listed, rest = ("0", "1") if lis.acl_type == "white" else ("1", "0")
    var = names.variable("acl", ctx.lb.id, lis.id, lis.path)
    entries = tuple((str(e.entry), listed) for e in acl.acl_entries)
    ctx.geos.append(MapBlock("$remote_addr", var, rest, entries, kind="geo"))
    return var


def _location(ctx: LbContext, lis: Listener, rule: Rule, url: Url) -> Location:
    if url.kind == "prefix" and not url.pattern.startswith("/"):
        raise ValueError(f"prefix location {url.pattern!r} must start with '/'")
    scope = ctx.scope(lis.id, rule.id, rule.domain)
    loc = Location(url.modifier, url.pattern, comment=rule.id, gzip_off=not rule.http_gzip, scope=scope)
    redirect = ctx.manual.get(rule.id)
    pers = ctx.personalized
    if redirect is not None:
        loc.returns = redirect
        loc.add_headers = headers.response_headers(pers, None)
        return loc
    pool = build_pool(ctx.lb.id, lis, rule, ctx.down, ctx.secret, lis.keepalive_enable != 0, ctx.dynamic)
    if pool is None:
        loc.returns = (NO_TARGETS,)
        loc.add_headers = headers.response_headers(pers, None)
        return loc
    ctx.pools.append(pool)
    scheme = "https" if rule.forward_type == "HTTPS" else "http"
    loc.proxy_pass = f"{scheme}://{pool.target}"
    loc.proxy_headers = headers.proxy_headers(ctx.lb.id, lis, rule, pers)
    loc.add_headers = headers.response_headers(pers, pool.set_cookie)
    return loc


def _fallback(ctx: LbContext) -> Location:
    return Location(
        "", "/", "no rule for /", returns=("404",), add_headers=headers.response_headers(ctx.personalized, None)
    )


def _has_root(urls: list[Url]) -> bool:
    return any(u.kind in ("prefix", "prefix_stop") and u.pattern == "/" for u in urls)


def _tls(ctx: LbContext, lis: Listener, rules: list[Rule], policy) -> server_tls.TlsBlock:
    slot = next((r.certificate for r in rules if r.certificate is not None), None) if lis.sni else lis.certificate
    assert slot is not None, "validation guarantees a certificate for every HTTPS server"
    block, files = server_tls.tls_block(slot, policy, ctx.catalog, ctx.personalized.verify_depth)
    ctx.files.update(files)
    return block


def listener_servers(ctx: LbContext, lis: Listener, auto: list[AutoRedirect]) -> list[ServerBlock]:
    """Every server block of one listener (``auto``: redirect domains this HTTP:80 listener answers)."""
    lb = ctx.lb
    https = lis.protocol == "HTTPS"
    rules = lis.rules or []
    groups = _domains(rules)
    http2 = https and any(r.http2 for r in rules)
    if http2 and not all(r.http2 for r in rules):
        ctx.warn(
            lis.at("Rules"),
            Code.INVALID_PARAMETER,
            "HTTP/2 is a property of the listen socket in nginx 1.22: every domain of this listener "
            "negotiates h2, including those with Http2 off",
        )
    policy = None
    if https:
        policy, where = server_tls.listener_policy(lis, ctx.catalog, ctx.personalized.directives, ctx.legacy_tls)
        for message in policy.warnings:
            ctx.warn(where, Code.UNSUPPORTED_OPERATION, message)
    default_domain = next((r.domain for r in rules if r.default_server), None)
    if lis.default_ser_switch and default_domain is None and groups:
        default_domain = next(iter(groups))  # "the first domain loaded" (T2010)
    out: list[ServerBlock] = []
    refuse = not lis.default_ser_switch or not groups
    if refuse:
        out.append(
            ServerBlock(
                f"listener {lis.id}: unmatched hosts are refused",
                _listens(lb, lis.port, True, https, http2),
                reject_handshake=https,
                returns=("444",),
                scope=ctx.scope(lis.id),
            )
        )
    deny_var = _access(ctx, lis)
    directives = _server_directives(ctx, lis)
    for domain, group in groups.items():
        server = ServerBlock(
            f"listener {lis.id} domain {domain}",
            _listens(lb, lis.port, domain == default_domain and not refuse, https, http2),
            [domain],
            deny_var=deny_var,
            directives=directives,
            scope=ctx.scope(lis.id, "", domain),
        )
        if https:
            server.tls = _tls(ctx, lis, group, policy)
        urls = [r.parsed_url for r in group]
        server.locations = [_location(ctx, lis, r, u) for r, u in zip(group, urls, strict=True)]
        if not _has_root(urls):
            server.locations.append(_fallback(ctx))
        out.append(server)
    out.extend(redirect_servers(ctx, lis.port, auto, lis.id))
    return out


def redirect_servers(ctx: LbContext, port: int, auto: list[AutoRedirect], listener: str = "") -> list[ServerBlock]:
    """Servers of the HTTP:80 side of auto-redirects, one per domain (``listener``: the HTTP:80
    listener's ID, "" for one created for the redirects)."""
    owner = listener or "auto-created HTTP:80"
    out = []
    for redirect in auto:
        loc = Location("", "/", "auto redirect to HTTPS:443", returns=auto_location(redirect))
        out.append(
            ServerBlock(
                f"{owner}: auto redirect {redirect.domain}",
                _listens(ctx.lb, port, False),
                [redirect.domain],
                locations=[loc],
                scope=ctx.scope(listener, "", redirect.domain),
            )
        )
    return out


def auto_listener_servers(ctx: LbContext, auto: list[AutoRedirect]) -> list[ServerBlock]:
    """An HTTP:80 listener created for auto-redirects: refusing default plus one server per domain."""
    refuse = ServerBlock(
        "auto-created HTTP:80 listener: unmatched hosts are refused",
        _listens(ctx.lb, 80, True),
        returns=("444",),
        scope=ctx.scope(""),
    )
    return [refuse, *redirect_servers(ctx, 80, auto)]
