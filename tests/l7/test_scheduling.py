"""Schedulers, weights, cookie persistence with failover, and the health hook (real nginx)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from clbagent.l7 import down_key
from tests.l7.conftest import http_get, listener, load_balancer, rule

pytestmark = pytest.mark.nginx
VIP, PORT, HOST = "127.0.10.2", 18081, "www.a.test"


def one_rule(targets: list[dict], **extra) -> list[dict]:
    r = rule("loc", HOST, "/", targets, DefaultServer=True, **extra)
    return [load_balancer("lb-s", VIP, [listener("l", "HTTP", PORT, [r])])]


def spread(n: int, **kw) -> Counter:
    return Counter(http_get(VIP, PORT, HOST, **kw).backend for _ in range(n))


def test_weights_3_to_1(serve, backends):
    a, b, c = backends("a"), backends("b"), backends("zero")
    serve(one_rule([a.target(30), b.target(10), c.target(0)]))
    seen = spread(400)
    assert 270 <= seen["a"] <= 330 and seen["a"] + seen["b"] == 400, seen
    assert seen["zero"] == 0  # weight 0 = no traffic


def test_least_conn_avoids_the_busy_target(serve, backends):
    slow, fast = backends("slow", delay=0.4), backends("fast")
    serve(one_rule([slow.target(), fast.target()], Scheduler="LEAST_CONN"))
    with ThreadPoolExecutor(6) as pool:
        seen = Counter(pool.map(lambda _: http_get(VIP, PORT, HOST).backend, range(36)))
    # round robin would give the slow target 18 of 36; least_conn sends it only what arrives while
    # the fast one is busy too
    assert seen["slow"] <= 8, seen


def test_ip_hash_pins_a_client(serve, backends):
    a, b = backends("a"), backends("b")
    serve(one_rule([a.target(), b.target()], Scheduler="IP_HASH"))
    chosen = {}
    for i in range(12):  # ip_hash keys on the first three octets of an IPv4 client
        source = f"127.{30 + 17 * i}.{(i * 53) % 250}.1"
        seen = spread(8, source=source)
        assert len(seen) == 1, (source, seen)
        chosen[source] = next(iter(seen))
    assert set(chosen.values()) == {"a", "b"}, chosen  # different clients do spread


def cookie_of(reply) -> tuple[str, str]:
    raw = reply.headers["set-cookie"]
    name, _, rest = raw.partition("=")
    return name, rest.split(";")[0]


def test_cookie_persistence_failover_and_bogus_cookie(serve, backends):
    a, b = backends("a"), backends("b")
    serve(one_rule([a.target(), b.target()], SessionExpireTime=120))
    first = http_get(VIP, PORT, HOST)
    name, sid = cookie_of(first)
    assert "Max-Age=120" in first.headers["set-cookie"]
    assert a.ip not in sid and str(a.port) not in sid  # opaque, never the address
    pinned = first.backend
    # without the cookie round robin alternates; with it the client stays
    assert len(spread(6)) == 2
    assert spread(10, headers={"Cookie": f"{name}={sid}"}) == Counter({pinned: 10})
    # the pinned target dies: another one answers and the cookie follows it
    (a if pinned == "a" else b).kill()
    moved = http_get(VIP, PORT, HOST, headers={"Cookie": f"{name}={sid}"})
    survivor = "b" if pinned == "a" else "a"
    assert moved.status == 200 and moved.backend == survivor
    _, new_sid = cookie_of(moved)
    assert new_sid != sid
    assert spread(5, headers={"Cookie": f"{name}={new_sid}"}) == Counter({survivor: 5})
    # a bogus cookie is replaced by a valid one
    bogus = http_get(VIP, PORT, HOST, headers={"Cookie": f"{name}=not-a-server"})
    assert cookie_of(bogus)[1] == new_sid


def test_health_hook_marks_targets_down(serve, backends):
    a, b = backends("a"), backends("b")
    docs = one_rule([a.target(), b.target()])
    key_a = down_key("lb-s", "l", "loc", f"{a.ip}:{a.port}")
    key_b = down_key("lb-s", "l", "loc", f"{b.ip}:{b.port}")
    serve(docs, down=frozenset({key_a}))
    assert spread(6) == Counter({"b": 6})
    # all-dead-all-alive: every target down means every target gets traffic again
    serve(docs, down=frozenset({key_a, key_b}))
    assert set(spread(6)) == {"a", "b"}
