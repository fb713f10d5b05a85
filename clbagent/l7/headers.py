"""Request headers towards backends and response headers towards clients.

The default request headers are set once at ``http{}`` level in ``nginx.conf``; a location renders
its own complete list only when it differs (Alibaba switches, personalized ``proxy_set_header``,
"get client IP" off). nginx replaces, never merges, inherited ``proxy_set_header``/``add_header``
lists, so each level that has any renders all of them.
"""

from __future__ import annotations

from clbagent.model import Listener, Rule

from . import names
from .personalized import Personalized

# "upgrade" when the client asked for a protocol upgrade (WebSocket), else empty (keep-alive).
CONNECTION_UPGRADE = names.variable("connection_upgrade")
# (header, value). Values are nginx expressions chosen here, not user text.
DEFAULT_PROXY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Host", "$host"),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Client-Proto", "$scheme"),
    ("X-Real-Port", "$remote_port"),
    ("X-Forwarded-Port", "$server_port"),
    ("Upgrade", "$http_upgrade"),
    ("Connection", CONNECTION_UPGRADE),
)


def proxy_headers(lb_id: str, lis: Listener, rule: Rule, pers: Personalized) -> list[tuple[str, str]] | None:
    """The request headers of one location, or None when the ``http{}`` defaults apply unchanged."""
    headers = dict(DEFAULT_PROXY_HEADERS)
    if not rule.x_forwarded_for:
        del headers["X-Forwarded-For"]
    extra: list[tuple[str, str]] = []
    if lis.x_forwarded_for_slbip:
        extra.append(("SLB-IP", "$server_addr"))
    if lis.x_forwarded_for_slbid:
        extra.append(("SLB-ID", lb_id))
    if lis.x_forwarded_for_proto:
        extra.append(("X-Forwarded-Proto", "$scheme"))
    out = list(headers.items())
    for name, value in [*extra, *pers.proxy_headers]:
        at = next((i for i, (old, _) in enumerate(out) if old.lower() == name.lower()), None)
        if at is None:
            out.append((name, value))
        else:
            out[at] = (name, value)
    return None if out == list(DEFAULT_PROXY_HEADERS) else out


def response_headers(pers: Personalized, set_cookie: str | None) -> list[tuple[str, str, bool]]:
    """``add_header`` lines of a location: (name, value, value-is-a-variable-we-made)."""
    out = [(name, value, False) for name, value in pers.add_headers]
    if set_cookie:
        out.append(("Set-Cookie", set_cookie, True))
    return out
