"""Each prober against real sockets on loopback: what counts as alive, what as dead, what is sent."""

from __future__ import annotations

import asyncio
import random
import select
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest

from clbagent.health.datagram import PingProber, UdpProber
from clbagent.health.spec import Check
from clbagent.health.stream import StreamProber
from clbagent.health.syn import SynProber, checksum, raw_allowed, syn_base, syn_segment
from tests.l7.conftest import pki  # noqa: F401 - fixture

Result = tuple[bool | None, str]


def run(prober_of, *probes: tuple[Check, str | None], block: float = 0.0, wait: float = 1.5) -> list[Result]:
    """Start the probes on a fresh loop (optionally blocking the loop right after) and collect."""

    async def main() -> list[Result]:
        loop = asyncio.get_running_loop()
        prober = prober_of(loop)
        results: list[Result | None] = [None] * len(probes)
        for i, (check, source) in enumerate(probes):

            def done(ok: bool | None, err: str, i: int = i) -> None:
                results[i] = (ok, err)

            assert prober.probe(check, source, done)
        if block:
            await asyncio.sleep(0.05)  # connected, request sent
            time.sleep(block)  # then the agent is busy: deadlines are handled late
        deadline = loop.time() + wait
        while None in results and loop.time() < deadline:
            await asyncio.sleep(0.02)
        prober.close()
        return results  # type: ignore[return-value]

    return asyncio.run(main())


def check(kind: str, ip: str, port: int, timeout: float = 1.0, **kw) -> Check:
    return Check(kind, ip, port, timeout, 5, 2, 2, **kw)


def http(ip: str, port: int, **kw) -> Check:
    base = {"host": "www.health.test", "path": "/", "method": "GET", "version": "HTTP/1.1", "codes": 31}
    return check(kw.pop("kind", "http"), ip, port, **{**base, **kw})


@pytest.mark.skipif(not raw_allowed(), reason="half-open probes need raw sockets (root)")
def test_syn_probe_is_half_open() -> None:
    listener = socket.socket()
    listener.bind(("127.0.50.10", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.50.10", 0))  # bound, never listening: the port refuses
    results = run(
        SynProber,
        (check("tcp", "127.0.50.10", port), None),
        (check("tcp", "127.0.50.10", closed.getsockname()[1]), None),
    )
    assert results[0] == (True, "")
    assert results[1] == (False, "Connection refused")
    # The SYN-ACK was answered with a RST: no connection ever reached the accept queue.
    assert select.select([listener], [], [], 0.2)[0] == []
    listener.close()
    closed.close()


def test_connect_probe() -> None:
    listener = socket.socket()
    listener.bind(("127.0.50.10", 0))
    listener.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.50.10", 0))
    results = run(
        StreamProber,
        (check("tcp", "127.0.50.10", listener.getsockname()[1]), "127.0.50.11"),
        (check("tcp", "127.0.50.10", closed.getsockname()[1]), None),
    )
    assert results == [(True, ""), (False, "Connection refused")]
    peer, address = listener.accept()
    assert address[0] == "127.0.50.11"  # the VIP as the source address
    peer.close()
    listener.close()
    closed.close()


def test_http_status_classes_method_host_and_path(http_backends) -> None:
    b = http_backends("127.0.50.12", "b")
    b.status = 500
    results = run(
        StreamProber,
        (http(b.ip, b.port, codes=2, path="/healthz?x=1", host="api.health.test"), "127.0.50.13"),
        (http(b.ip, b.port, codes=16, method="HEAD"), None),
        (http(b.ip, b.port, codes=15, version="HTTP/1.0"), None),
    )
    assert results == [(False, "HTTP 500"), (True, ""), (False, "HTTP 500")]
    assert ("GET", "/healthz?x=1", "api.health.test", "127.0.50.13") in b.probes
    assert sorted(p[0] for p in b.probes) == ["GET", "GET", "HEAD"]
    b.status = 302
    assert run(StreamProber, (http(b.ip, b.port, codes=4), None)) == [(True, "")]


def test_https_probe_skips_certificate_verification(http_backends, pki, tmp_path: Path) -> None:  # noqa: F811
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*pki.server_b.write(tmp_path, "b"))  # a name the check does not ask for
    b = http_backends("127.0.50.14", "tls", tls=ctx)
    b.status = 204
    plain = http_backends("127.0.50.14", "plain")
    results = run(
        StreamProber,
        (http(b.ip, b.port, kind="https", codes=2, host="www.a.test", path="/tls"), None),
        (http(plain.ip, plain.port, kind="https"), None),
    )
    assert results[0] == (True, "")
    assert results[1][0] is False and results[1][1].startswith("TLS")
    assert b.probes[0][1:3] == ("/tls", "www.a.test")


def test_slow_backend_times_out_but_a_busy_agent_does_not_fail_it(http_backends) -> None:
    b = http_backends("127.0.50.15", "slow")
    b.delay = 0.6
    assert run(StreamProber, (http(b.ip, b.port, timeout=0.3), None)) == [(False, "timed out after 0.3s")]
    # The answer came while the loop was blocked: it is read before the deadline is judged.
    assert run(StreamProber, (http(b.ip, b.port, timeout=0.3), None), block=1.0) == [(True, "")]
    # No answer and a deadline handled 1.2 s late: that says nothing about the target.
    silent = socket.socket()
    silent.bind(("127.0.50.15", 0))
    silent.listen(8)  # accepts the connection, never answers
    assert run(StreamProber, (http("127.0.50.15", silent.getsockname()[1], timeout=0.3), None), block=1.5)[0][0] is None
    silent.close()


def test_udp_custom_and_ping(udp_responders) -> None:
    r = udp_responders("127.0.50.16", bytes.fromhex("F13E01"), bytes.fromhex("F13E8180"))
    good = check("udp", r.ip, r.port, send=bytes.fromhex("F13E01"), expect=bytes.fromhex("F13E"))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.50.16", 0))
    port = closed.getsockname()[1]
    closed.close()
    results = run(UdpProber, (good, "127.0.50.17"), (check("udp", r.ip, port, send=b"x", expect=b"y"), None))
    assert results == [(True, ""), (False, "Connection refused")]
    r.wrong = True
    assert run(UdpProber, (good, None))[0][0] is False
    assert run(
        PingProber, (check("ping", "127.0.50.18", 0), None), (check("ping", "127.0.50.19", 0), "127.0.50.17")
    ) == [
        (True, ""),
        (True, ""),
    ]


def test_syn_checksum_is_the_internet_checksum() -> None:
    rng = random.Random(7)
    for _ in range(500):
        src, dst = rng.randbytes(4), rng.randbytes(4)
        sport, dport, seq = rng.randrange(1, 65536), rng.randrange(1, 65536), rng.getrandbits(32)
        segment = syn_segment(syn_base(src, dst, sport, dport), sport, dport, seq)
        assert checksum(src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20) + segment) == 0
