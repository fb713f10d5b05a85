"""Dynamic upstreams end to end: the real nginx with the Lua balancer, real backends on loopback,
changes through the real control channel (unix socket) with the agent's client."""

from __future__ import annotations

import collections
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clbagent.nginx.upstreams_channel import (
    ChannelError,
    Member,
    Sticky,
    Upstream,
    differences,
    shared_dict_size,
)
from tests.l7.conftest import Backend, _BackendServer, http_get

from .conftest import VIP, LuaNginx, free_port, wait_for

pytestmark = pytest.mark.nginx


def member(b: Backend, weight: int = 10, down: bool = False, sid: str | None = None) -> Member:
    return Member(f"{b.ip}:{b.port}", weight, down, sid)


def hits(served: LuaNginx, name: str, n: int, **kw) -> collections.Counter:
    vip, port = served.url(name)
    return collections.Counter(http_get(vip, port, "x", **kw).backend for _ in range(n))


@dataclass
class Load:
    """Clients sending requests without pause; each request noted with when it started."""

    vip: str
    port: int
    threads: int = 4
    done: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Load:
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(timeout=30)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                reply = http_get(self.vip, self.port, "x")
                if reply.status != 200:
                    self.failures.append(f"status {reply.status}")
                else:
                    self.done.append((started, reply.backend))
            except OSError as e:
                self.failures.append(repr(e))

    def after(self, t: float) -> collections.Counter:
        return collections.Counter(b for s, b in list(self.done) if s >= t)

    def first_served(self, t: float, label: str) -> tuple[int, float]:
        """Of the requests started after ``t``, the rank of the first that ``label`` answered
        (0 = the very first) and the seconds from ``t`` to its start."""
        wait_for(lambda: self.after(t)[label] > 0, f"traffic to {label}")
        started = sorted((s, b) for s, b in list(self.done) if s >= t)
        rank = next(i for i, (_, b) in enumerate(started) if b == label)
        return rank, started[rank][0] - t

    def more(self, n: int = 40) -> None:
        target = len(self.done) + n
        wait_for(lambda: len(self.done) >= target, f"{n} more requests")


def test_weights_3_to_1(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b = backends("a"), backends("b")
    served = lua_nginx({"pool": Upstream((member(a, 30), member(b, 10)))})
    got = hits(served, "pool", 400)
    assert abs(got["a"] - 300) <= 30 and got["a"] + got["b"] == 400, got


def test_changes_follow_under_load_without_reload(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b, c = backends("a"), backends("b"), backends("c")
    served = lua_nginx({"pool": Upstream((member(a), member(b)))})
    workers = sorted(served.nginx.workers())
    with served.channel() as ch, Load(*served.url("pool")) as load:
        load.more()
        # add c: each worker picks a b c a b c ... from the next request on, so one of the first
        # few requests after the acknowledgement reaches c (how soon in seconds is the load's
        # business on a shared host: bench/dynamic_bench.py measures it)
        ch.send({"pool": Upstream((member(a), member(b), member(c)))})
        acked = time.monotonic()
        rank, lag = load.first_served(acked, "c")
        assert rank < 12, (rank, lag)
        # remove b: no request started after the acknowledgement reaches it
        ch.send({"pool": Upstream((member(a), member(c)))})
        acked = time.monotonic()
        load.more()
        assert load.after(acked)["b"] == 0
        # weight change: c takes three quarters
        ch.send({"pool": Upstream((member(a, 10), member(c, 30)))})
        acked = time.monotonic()
        load.more(200)
        after = load.after(acked)
        assert 0.65 < after["c"] / (after["a"] + after["c"]) < 0.85, after
        # a marked down by health checking
        ch.send({"pool": Upstream((member(a, 10, down=True), member(c, 30)))})
        acked = time.monotonic()
        load.more()
        assert load.after(acked)["a"] == 0
    assert not load.failures, load.failures[:5]
    assert sorted(served.nginx.workers()) == workers, "no reload"


def test_a_reload_during_changes_never_brings_back_a_removed_member(
    lua_nginx: Callable[..., LuaNginx], backends
) -> None:
    """The data file rendered before the change still lists b; the reload must not revive it."""
    a, b = backends("a"), backends("b")
    stale = {"pool": Upstream((member(a), member(b)))}
    served = lua_nginx(stale)
    with served.channel() as ch, Load(*served.url("pool")) as load:
        load.more()
        ch.send({"pool": Upstream((member(a),))})
        acked = time.monotonic()
        served.write(stale)
        served.nginx.reload()
        load.more()
        assert load.after(acked)["b"] == 0
    assert not load.failures, load.failures[:5]


class _V6Backend(_BackendServer):
    address_family = socket.AF_INET6


def test_an_ipv6_member(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    try:
        v6 = _V6Backend(("::1", 0), "v6", 0.0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    threading.Thread(target=v6.serve_forever, args=(0.02,), daemon=True).start()
    try:
        a = backends("a")
        served = lua_nginx({"pool": Upstream((member(a), Member(f"[::1]:{v6.server_address[1]}", 10)))})
        assert set(hits(served, "pool", 10)) == {"a", "v6"}
    finally:
        v6.shutdown()
        v6.server_close()


def test_weight_0_down_and_all_dead_all_alive(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b, c = backends("a"), backends("b"), backends("c")
    served = lua_nginx({"pool": Upstream((member(a), member(b, 0), member(c, down=True)))})
    assert set(hits(served, "pool", 20)) == {"a"}
    with served.channel() as ch:
        ch.send({"pool": Upstream((member(a, down=True), member(b, 0), member(c, down=True)))})
        assert set(hits(served, "pool", 20)) == {"a", "c"}, "every weighted member dead: all get traffic"
        ch.send({"pool": Upstream((member(a, 0), member(b, 0)))})
        vip, port = served.url("pool")
        assert http_get(vip, port, "x").status == 502


def test_next_member_on_connection_error(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b = backends("a"), backends("b")
    dead = Member(f"127.0.20.99:{free_port('127.0.20.99')}", 10)
    served = lua_nginx({"pool": Upstream((dead, member(a), member(b)))})
    vip, port = served.url("pool")
    replies = [http_get(vip, port, "x") for _ in range(30)]
    assert {r.status for r in replies} == {200}
    assert {r.backend for r in replies} == {"a", "b"}


def test_connections_are_given_back_after_an_error_page(lua_nginx: Callable[..., LuaNginx]) -> None:
    """error_page after the last try failed is an internal redirect: the count must still drop."""
    dead = Member(f"127.0.20.99:{free_port('127.0.20.99')}", 10)
    port = free_port()
    sorry = "location / { proxy_pass http://pool; error_page 502 = /sorry; } location = /sorry { return 200; }"
    served = lua_nginx({"pool": Upstream((dead,))}, extra=f"    server {{ listen {VIP}:{port}; {sorry} }}\n")
    assert {http_get(VIP, port, "x").status for _ in range(6)} == {200}
    with served.channel() as ch:
        assert ch.held().active == {"pool": {dead.endpoint: 0}}


def test_cookie_persistence_with_failover(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b = backends("a"), backends("b")
    sticky = Sticky("clb_test", 600)

    def pool(down: str = "") -> dict[str, Upstream]:
        members = (member(a, down=down == "a", sid="sid-a"), member(b, down=down == "b", sid="sid-b"))
        return {"pool": Upstream(members, sticky=sticky)}

    served = lua_nginx(pool())
    vip, port = served.url("pool")

    def get(cookie: str) -> tuple[str, str]:
        reply = http_get(vip, port, "x", headers={"Cookie": cookie})
        assert reply.status == 200
        return reply.backend, reply.headers["set-cookie"].split(";")[0]

    first = http_get(vip, port, "x")
    pinned, other = first.backend, "b" if first.backend == "a" else "a"
    assert first.headers["set-cookie"] == f"clb_test=sid-{pinned}; Path=/; Max-Age=600; HttpOnly"
    cookie = f"clb_test=sid-{pinned}"
    assert {get(cookie) for _ in range(10)} == {(pinned, cookie)}
    # the pinned member marked down: its clients move, and their cookie with them
    with served.channel() as ch:
        ch.send(pool(down=pinned))
        assert get(cookie) == (other, f"clb_test=sid-{other}")
        ch.send(pool())
    assert get(cookie) == (pinned, cookie)
    # the pinned backend dies: the request fails over, the cookie follows the member that answered
    (a if pinned == "a" else b).kill()
    assert get(cookie) == (other, f"clb_test=sid-{other}")
    # a bogus cookie gets a fresh, valid one
    assert get("clb_test=forged") == (other, f"clb_test=sid-{other}")


def test_least_conn_counts_across_workers(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b = backends("a"), backends("b")
    served = lua_nginx({"pool": Upstream((member(a), member(b)), method="least_conn")})
    vip, port = served.url("pool")
    slow: list[str] = []
    holder = threading.Thread(target=lambda: slow.append(http_get(vip, port, "x", "/?sleep=6").backend))
    holder.start()
    with served.channel() as ch:

        def only_the_slow_one() -> bool:  # a quick request's count drops in its log phase, just after the reply
            return sum(ch.held().active["pool"].values()) == 1

        wait_for(only_the_slow_one, "one active connection")
        busy = next(e for e, n in ch.held().active["pool"].items() if n == 1)
        # the quick requests land on both workers; all avoid the member holding the slow one
        quick: collections.Counter = collections.Counter()
        for _ in range(8):
            wait_for(only_the_slow_one, "quick requests finished")
            quick[http_get(vip, port, "x").backend] += 1
        holder.join()
        idle = "a" if busy == member(b).endpoint else "b"
        assert quick == {idle: 8}, (busy, quick)
        assert slow == ["b" if idle == "a" else "a"]
        wait_for(lambda: sum(ch.held().active["pool"].values()) == 0, "connections released")


def test_ip_hash_as_nginx(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    """The Lua ip_hash maps clients exactly as nginx's own ip_hash over the same members."""
    bs = [backends(x) for x in "abc"]

    def static(down: int | None) -> str:
        servers = "".join(f"server {b.ip}:{b.port} weight=10{' down' if i == down else ''}; " for i, b in enumerate(bs))
        return (
            f"    upstream static_pool {{ ip_hash; {servers}}}\n"
            f"    server {{ listen {vip}:{sport}; location / {{ proxy_pass http://static_pool; }} }}\n"
        )

    vip, sport = "127.0.40.1", free_port()
    served = lua_nginx({"pool": Upstream(tuple(member(b) for b in bs), method="ip_hash")}, extra=static(None))
    sources = [f"127.0.{31 + i}.{7 + i}" for i in range(24)]

    def mapping(port: int) -> dict[str, str]:
        return {s: http_get(vip, port, "x", source=s).backend for s in sources}

    dynamic = mapping(served.ports["pool"])
    assert dynamic == mapping(sport)
    assert len(set(dynamic.values())) > 1
    assert {http_get(vip, served.ports["pool"], "x", source="127.0.31.200").backend} == {dynamic["127.0.31.7"]}
    # b down: its clients move as nginx moves them, the others stay
    served.extra = static(1)
    served.write({"pool": Upstream(tuple(member(b) for b in bs), method="ip_hash")})
    served.nginx.reload()
    with served.channel() as ch:
        ch.send({"pool": Upstream((member(bs[0]), member(bs[1], down=True), member(bs[2])), method="ip_hash")})
    moved = mapping(served.ports["pool"])
    assert moved == mapping(sport)
    assert all(moved[s] == dynamic[s] for s in sources if dynamic[s] != "b")
    assert "b" not in moved.values()


def test_reload_keeps_what_the_channel_sent(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b = backends("a"), backends("b")
    initial = {"pool": Upstream((member(a),))}
    served = lua_nginx(initial)
    sent = {"pool": Upstream((member(b),))}
    with served.channel() as ch:
        ch.send(sent)
        before = ch.held()
        served.nginx.reload()
        after = ch.held()
        assert after.instance == before.instance
        assert after.versions == before.versions
        assert not differences(sent, after)
    assert set(hits(served, "pool", 10)) == {"b"}


def test_workers_see_changes_through_the_gen_word_across_reloads(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    """The change counter the workers read on every request is the file nginx's master maps at
    start and at every reload: every change moves it, and a reload maps the same bytes again."""
    a, b = backends("a"), backends("b")
    served = lua_nginx({"pool": Upstream((member(a),))})
    word = served.prefix / "run" / "upstreams.gen"

    def gen() -> float:
        return struct.unpack("=d", word.read_bytes())[0]

    first = gen()
    with served.channel() as ch:
        ch.send({"pool": Upstream((member(b),))})
        assert gen() > first
        assert set(hits(served, "pool", 6)) == {"b"}
        served.nginx.reload()
        moved = gen()
        ch.send({"pool": Upstream((member(a),))})
        assert gen() > moved, "the new master mapped the same file"
        assert set(hits(served, "pool", 6)) == {"a"}


def test_changed_dict_size_loses_state_and_a_resend_restores_it(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a, b = backends("a"), backends("b")
    served = lua_nginx({"pool": Upstream((member(a),))})
    sent = {"pool": Upstream((member(b),))}
    with served.channel() as ch:
        ch.send(sent)
        before = ch.held()
        served.write({"pool": Upstream((member(a),))}, shm="8m")
        served.nginx.reload()
        lost = ch.held()
        assert lost.instance != before.instance, "the agent sees the dict was recreated"
        assert differences(sent, lost), "nginx fell back to the data file"
        assert set(hits(served, "pool", 6)) == {"a"}
        assert ch.sync(sent) == ["pool"]
        assert ch.sync(sent) == []
    assert set(hits(served, "pool", 6)) == {"b"}


def test_a_large_state_fits_the_sized_dict_and_syncs(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a = backends("a")
    served = lua_nginx({"pool": Upstream((member(a),))}, shm="4m")
    big = {
        f"u{i}": Upstream(tuple(Member(f"10.{i // 250}.{i % 250}.{j}:8080", 1 + j % 100) for j in range(100)))
        for i in range(300)
    }
    desired = {**big, "pool": Upstream((member(a),))}
    size = shared_dict_size(desired)
    assert size == "8m"
    served.write({"pool": Upstream((member(a),)), "gone": Upstream(())}, shm=size)
    served.nginx.reload()
    with served.channel() as ch:
        assert "gone" in ch.held().upstreams
        changed = ch.sync(desired)
        assert set(changed) == {*big, "gone"}
        assert not differences(desired, ch.held())
        assert set(ch.held().upstreams) == set(desired)
    assert set(hits(served, "pool", 4)) == {"a"}


def test_delete_and_unknown_upstream(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a = backends("a")
    served = lua_nginx({"pool": Upstream((member(a),))})
    vip, port = served.url("pool")
    with served.channel() as ch:
        assert ch.delete("pool") is True
        assert ch.delete("pool") is False
        assert "pool" not in ch.held().upstreams
        assert http_get(vip, port, "x").status == 502


def _one(**fields: object) -> bytes:
    """A PUT body with one upstream ``pool`` of one member with these fields."""
    return json.dumps({"upstreams": {"pool": {"members": [fields]}}}).encode()


BAD_BODIES = [
    (b"not json", ""),
    (_one(endpoint="10.0.0.1", weight=1), "upstreams.pool.members[0].endpoint"),
    (_one(endpoint="10.0.0.1:80", weight=101), "upstreams.pool.members[0].weight"),
    (_one(endpoint="10.0.0.1:80", weight=1, x=1), "upstreams.pool.members[0].x"),
    (b'{"upstreams": {"pool": {"method": "random", "members": []}}}', "upstreams.pool.method"),
    (b'{"upstreams": {"bad/name": {"members": []}}}', "upstreams.bad/name"),
    (b'{"upstreams": [1]}', "upstreams"),
    (b'{"upstreams": {"pool": {"members": [' + b"[" * 5000 + b"]" * 5000 + b"]}}}", ""),
    (b"[1, 2, 3]", ""),
    (b"false", ""),
    (b"null", ""),
    (b"", ""),
]


def test_malformed_input_is_refused_and_nothing_changes(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    a = backends("a")
    initial = {"pool": Upstream((member(a),))}
    served = lua_nginx(initial)
    workers = sorted(served.nginx.workers())
    transport = httpx.HTTPTransport(uds=str(served.prefix / "run" / "ctl.sock"))
    with httpx.Client(transport=transport, base_url="http://nginx", timeout=10) as raw:
        for body, path in BAD_BODIES:
            resp = raw.put("/upstreams", content=body)
            assert resp.status_code == 400, (body[:60], resp.text)
            assert resp.json()["path"] == path and resp.json()["error"], resp.text
        assert raw.put("/upstreams", content=b" " * (2 * 1024 * 1024)).status_code == 413
        assert raw.get("/elsewhere").status_code == 404
        assert raw.post("/upstreams/pool", content=b"{}").status_code == 405
        assert raw.delete("/upstreams/bad%20name").status_code == 400
    with served.channel() as ch:
        assert not differences(initial, ch.held())
        with pytest.raises(ChannelError) as err:
            ch.send({"pool": Upstream((Member("10.0.0.1:80", 5, sid="x y"),))})
        assert err.value.status == 400 and err.value.path == "upstreams.pool.members[0].sid"
    assert sorted(served.nginx.workers()) == workers, "no worker crashed"
    assert set(hits(served, "pool", 4)) == {"a"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to try as another user")
def test_control_socket_is_root_only(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    served = lua_nginx({"pool": Upstream((member(backends("a")),))})
    sock = served.prefix / "run" / "ctl.sock"
    probe = f"import socket; socket.socket(socket.AF_UNIX).connect({str(sock)!r})"
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe]
    proc = subprocess.run(as_nobody, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "PermissionError" in proc.stderr, proc.stderr
    with served.channel() as ch:
        assert "pool" in ch.held().upstreams


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_FIELD = st.sampled_from(["endpoint", "weight", "down", "sid", "method", "members", "sticky", "cookie", "x"])
_MEMBER = st.dictionaries(_FIELD, _JSON | st.sampled_from(["10.0.0.1:80", "[::1]:1", 0, 100, True]), max_size=5)
_UPSTREAM = st.fixed_dictionaries({"members": st.lists(_MEMBER, max_size=3)}, optional={"method": _JSON})
_BODY = st.fixed_dictionaries({"upstreams": st.dictionaries(st.text(max_size=8), _UPSTREAM | _JSON, max_size=3)})


def test_the_channel_survives_arbitrary_input(lua_nginx: Callable[..., LuaNginx], backends) -> None:
    """Any JSON is answered 200 (valid) or 400 (not), and no worker dies."""
    served = lua_nginx({"pool": Upstream((member(backends("a")),))})
    workers = sorted(served.nginx.workers())
    transport = httpx.HTTPTransport(uds=str(served.prefix / "run" / "ctl.sock"))
    with httpx.Client(transport=transport, base_url="http://nginx", timeout=10) as raw:

        @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(body=_BODY | _JSON)
        def put(body: object) -> None:
            resp = raw.put("/upstreams", content=json.dumps(body, allow_nan=True).encode())
            assert resp.status_code in (200, 400), resp.text
            if resp.status_code == 400:
                assert resp.json()["error"]

        put()
    assert sorted(served.nginx.workers()) == workers
