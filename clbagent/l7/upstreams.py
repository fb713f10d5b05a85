"""Upstreams of one rule: the weighted pool and, with cookie persistence, one pinned pool per target.

Scheduler: WRR is nginx's weighted round robin, LEAST_CONN ``least_conn``, IP_HASH ``ip_hash``.
Weight 0 means no traffic (``down``). Targets the health checker reports dead (the ``down`` keys)
are also ``down`` unless every live target of the rule is dead: then all get traffic again
(all-dead-all-alive, T1642).

Cookie insertion on stock nginx (ARCHITECTURE §4): requests without a valid cookie go to the
weighted pool; a ``map`` sends a known cookie to the pinned pool of its target, where that target
is primary and the others are ``backup``; the cookie is then set from ``$upstream_addr``, i.e. the
server that really answered, so it follows a failover. The cookie value is an opaque server id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clbagent.model import Listener, Rule

from . import names
from .quote import regex_escape

KEEPALIVE = 32
METHODS = {"WRR": None, "LEAST_CONN": "least_conn", "IP_HASH": "ip_hash"}


@dataclass(frozen=True)
class Member:
    endpoint: str
    weight: int  # 0 = no weight parameter (down)
    down: bool = False
    backup: bool = False


@dataclass
class Upstream:
    name: str
    method: str | None
    members: list[Member]
    keepalive: int
    zone: str = ""
    zone_size: str = ""


@dataclass(frozen=True)
class MapBlock:
    """``map source var { default ...; key value; }``; a key starting with ``~`` is a regex.
    With ``kind="geo"`` the keys are CIDR blocks matched against the source address."""

    source: str
    var: str
    default: str
    entries: tuple[tuple[str, str], ...]
    kind: str = "map"


@dataclass
class Pool:
    """What a location proxies to: ``target`` is an upstream name or a map variable."""

    target: str
    upstreams: list[Upstream]
    maps: list[MapBlock] = field(default_factory=list)
    set_cookie: str | None = None  # variable holding the Set-Cookie value


def dead_endpoints(key: str, weighted: list[tuple[str, int]], down: frozenset[str]) -> set[str]:
    """Endpoints to mark down for health, after all-dead-all-alive."""
    if not down:
        return set()
    live = {e for e, w in weighted if w > 0}
    dead = {e for e in live if f"{key}/{e}" in down}
    return set() if dead == live else dead


def build_pool(
    lb_id: str, lis: Listener, rule: Rule, down: frozenset[str], secret: bytes, keepalive: bool
) -> Pool | None:
    """The upstreams (and maps) of one rule, or None when it has no targets."""
    if not rule.targets:
        return None
    key = names.rule_key(lb_id, lis.id, rule.id)
    weighted = [(t.endpoint, t.weight) for t in rule.targets]
    dead = dead_endpoints(key, weighted, down)
    base = names.upstream_name(lb_id, lis.id, rule.id)
    conns = KEEPALIVE if keepalive else 0
    members = [Member(e, w, w == 0 or e in dead) for e, w in weighted]
    pool = Pool(base, [Upstream(base, METHODS[rule.scheduler], members, conns)])
    if rule.session_expire_time:
        _add_sticky(pool, lb_id, lis, rule, [m for m in members if not m.down], secret, conns)
    return pool


def _add_sticky(
    pool: Pool, lb_id: str, lis: Listener, rule: Rule, alive: list[Member], secret: bytes, conns: int
) -> None:
    suffix = names.sticky_suffix(lb_id, lis.id, rule.id)
    cookie = f"clb_{suffix}"
    key = names.rule_key(lb_id, lis.id, rule.id)
    pins: list[tuple[str, str]] = []
    answers: list[tuple[str, str]] = []
    for m in alive:
        sid = names.server_id(secret, key, m.endpoint)
        name = f"{pool.target}_{sid[:8]}"
        others = [Member(o.endpoint, o.weight, backup=True) for o in alive if o is not m]
        pool.upstreams.append(Upstream(name, None, [m, *others], conns))
        pins.append((sid, name))
        value = f"{cookie}={sid}; Path=/; Max-Age={rule.session_expire_time}; HttpOnly"
        answers.append((f"~(^|, ){regex_escape(m.endpoint)}$", value))
    pin_var, cookie_var = f"$clb_pin_{suffix}", f"$clb_cookie_{suffix}"
    pool.maps.append(MapBlock(f"$cookie_{cookie}", pin_var, pool.target, tuple(pins)))
    pool.maps.append(MapBlock("$upstream_addr", cookie_var, "", tuple(answers)))
    pool.target = pin_var
    pool.set_cookie = cookie_var


def place_in_zone(upstreams: list[Upstream], zone: str) -> None:
    """All upstreams of a load balancer share one zone, sized once on the first (nginx allows it)."""
    if not upstreams:
        return
    lines = sum(len(u.members) for u in upstreams)
    kib = 64 + (lines * 512 + len(upstreams) * 1024) // 1024
    for u in upstreams:
        u.zone = zone
    upstreams[0].zone_size = f"{kib}k"
