"""Upstreams of one rule: the weighted pool and, with cookie persistence, one pinned pool per target.

Scheduler: WRR is nginx's weighted round robin, LEAST_CONN ``least_conn``, IP_HASH ``ip_hash``.
Weight 0 means no traffic (``down``). Targets the health checker reports dead (the ``down`` keys)
are also ``down`` unless every live target of the rule is dead: then all get traffic again
(all-dead-all-alive, T1642).

Cookie insertion on stock nginx (ARCHITECTURE §4): requests without a valid cookie go to the
weighted pool; a ``map`` sends a known cookie to the pinned pool of its target, where that target
is primary and the next ``BACKUPS`` live targets (in document order, wrapping round) are
``backup``; the cookie is then set from the last address of ``$upstream_addr``, i.e. the server
that really answered, so it follows a failover (an exact-match map: no regex per response).
The cookie value is an opaque server id. A bounded number of backups keeps a rule with n targets
at about (BACKUPS + 2) * n server lines instead of n * n.

In dynamic mode (docs/dynamic-upstreams.md) a rule has one upstream with no member address: its
members, weights, down flags and cookie go to nginx as data (``Pool.dynamic``), which the Lua
balancer reads at run time; a target change then changes the data only, never the configuration.

Every (static) upstream of a load balancer lives in one shared-memory zone, sized from what it really holds
(measured against nginx 1.22's slab allocator: under 1 KiB per server line, a few hundred bytes per
upstream, 32 KiB minimum).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clbagent.model import Listener, Rule
from clbagent.nginx import upstreams_channel as channel

from . import names

# The server that really answered: the last address of $upstream_addr (after ", " between tries
# and " : " between upstream groups). One regex in nginx.conf; the sticky maps are exact lookups.
ANSWERED = names.variable("answered")
KEEPALIVE = 32
KEEPALIVE_PINNED = 4  # a pinned pool serves one target; idle connections cost worker memory
BACKUPS = 2
ZONE_BASE_KIB, ZONE_PER_SERVER, ZONE_PER_UPSTREAM = 64, 1024, 512
METHODS = {"WRR": None, "LEAST_CONN": "least_conn", "IP_HASH": "ip_hash"}
LUA_METHODS = {"WRR": "wrr", "LEAST_CONN": "least_conn", "IP_HASH": "ip_hash"}


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
    dynamic: channel.Upstream | None = None  # dynamic mode: the members nginx gets as data


def dead_endpoints(key: str, weighted: list[tuple[str, int]], down: frozenset[str]) -> set[str]:
    """Endpoints to mark down for health, after all-dead-all-alive."""
    if not down:
        return set()
    live = {e for e, w in weighted if w > 0}
    dead = {e for e in live if f"{key}/{e}" in down}
    return set() if dead == live else dead


def build_pool(
    lb_id: str, lis: Listener, rule: Rule, down: frozenset[str], secret: bytes, keepalive: bool, dynamic: bool = False
) -> Pool | None:
    """The upstreams (and maps) of one rule, or None when it has no targets."""
    if not rule.targets:
        return None
    key = names.rule_key(lb_id, lis.id, rule.id)
    identity = (lb_id, lis.id, rule.id, rule.path)
    weighted = [(t.endpoint, t.weight) for t in rule.targets]
    dead = dead_endpoints(key, weighted, down)
    base = names.upstream_name(identity, rule.id)
    conns = KEEPALIVE if keepalive else 0
    if dynamic:
        return Pool(base, [Upstream(base, None, [], conns)], dynamic=_data(identity, key, rule, weighted, dead, secret))
    members = [Member(e, w, w == 0 or e in dead) for e, w in weighted]
    pool = Pool(base, [Upstream(base, METHODS[rule.scheduler], members, conns)])
    if rule.session_expire_time:
        alive = [m for m in members if not m.down]
        _add_sticky(pool, identity, key, rule, alive, secret, KEEPALIVE_PINNED if keepalive else 0)
    return pool


def _data(
    identity: tuple[str, ...], key: str, rule: Rule, weighted: list[tuple[str, int]], dead: set[str], secret: bytes
) -> channel.Upstream:
    """A rule's upstream as the Lua balancer takes it. Weight 0 stays weight 0 (no traffic); the
    cookie values are the server ids of the static rendering, so cookies survive a mode change."""
    sticky = None
    if rule.session_expire_time:
        sticky = channel.Sticky(names.cookie_name(*identity[:3]), rule.session_expire_time)
    members = tuple(
        channel.Member(e, w, e in dead, names.server_id(secret, key, e) if sticky else None) for e, w in weighted
    )
    return channel.Upstream(members, LUA_METHODS[rule.scheduler], sticky)


def _add_sticky(
    pool: Pool, identity: tuple[str, ...], key: str, rule: Rule, alive: list[Member], secret: bytes, conns: int
) -> None:
    cookie = names.cookie_name(*identity[:3])
    pins: list[tuple[str, str]] = []
    answers: list[tuple[str, str]] = []
    for i, m in enumerate(alive):
        sid = names.server_id(secret, key, m.endpoint)
        name = names.pinned_name(identity, sid)
        ring = [alive[(i + k) % len(alive)] for k in range(1, min(BACKUPS, len(alive) - 1) + 1)]
        backups = [Member(o.endpoint, o.weight, backup=True) for o in ring]
        pool.upstreams.append(Upstream(name, None, [m, *backups], conns))
        pins.append((sid, name))
        value = f"{cookie}={sid}; Path=/; Max-Age={rule.session_expire_time}; HttpOnly"
        answers.append((m.endpoint, value))
    pin_var, cookie_var = names.variable("pin", *identity), names.variable("cookie", *identity)
    pool.maps.append(MapBlock(f"$cookie_{cookie}", pin_var, pool.target, tuple(pins)))
    pool.maps.append(MapBlock(ANSWERED, cookie_var, "", tuple(answers)))
    pool.target = pin_var
    pool.set_cookie = cookie_var


def place_in_zone(upstreams: list[Upstream], zone: str) -> None:
    """All upstreams of a load balancer share one zone, sized once on the first (nginx allows it)."""
    if not upstreams:
        return
    lines = sum(len(u.members) for u in upstreams)
    kib = ZONE_BASE_KIB + -(-(lines * ZONE_PER_SERVER + len(upstreams) * ZONE_PER_UPSTREAM) // 1024)
    for u in upstreams:
        u.zone = zone
    upstreams[0].zone_size = f"{kib}k"
