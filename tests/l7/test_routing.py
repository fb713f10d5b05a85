"""Domain and URL matching against the real nginx: the seed's worked examples, wildcards, regexes,
the default-domain switch, and 404 when nothing matches and there is no ``/``."""

from __future__ import annotations

import http.client

import pytest

from tests.l7.conftest import handshake, http_get, https_get, listener, load_balancer, rule

pytestmark = pytest.mark.nginx
VIP = "127.0.10.1"


def test_seed_url_matching_worked_example(serve, backends):
    """T2035-T2044: exact first, then the fuzzy rules, then the default URL; 404 without `/`."""
    rs1, rs2, rs3, rs4, dflt = (backends(n) for n in ("RS1", "RS2", "RS3", "RS4", "default"))
    host = "example.qcloud.com"
    rules = [
        rule("g1", host, "=/test1/image/index1.html", [rs1.target(), rs2.target()]),
        rule("g2", host, "~*^/test1/image/.*\\.html$", [rs2.target(), rs3.target()]),
        rule("g3", host, "^~/test2/video/", [rs4.target()]),
        rule("dflt", host, "/", [dflt.target()], DefaultServer=True),
        rule("other", "noroot.qcloud.com", "/only/", [rs1.target()]),
    ]
    serve([load_balancer("lb-seed", VIP, [listener("l80", "HTTP", 18080, rules)])])
    expected = {
        "/test1/image/index1.html": {"RS1", "RS2"},
        "/test1/image/hello.html": {"RS2", "RS3"},
        "/test2/video/mp4/": {"RS4"},
        "/test3/hello/index.html": {"default"},
        "/test2/": {"default"},
    }
    for path, allowed in expected.items():
        seen = {http_get(VIP, 18080, host, path).backend for _ in range(4)}
        assert seen <= allowed and seen, (path, seen)
    # group 1 reaches both of its backends (weights equal, round robin)
    assert {http_get(VIP, 18080, host, "/test1/image/index1.html").backend for _ in range(4)} == {"RS1", "RS2"}
    # no rule matches and there is no `/` rule: 404 (T2044)
    assert http_get(VIP, 18080, "noroot.qcloud.com", "/elsewhere").status == 404
    assert http_get(VIP, 18080, "noroot.qcloud.com", "/only/x").backend == "RS1"


def test_seed_default_domain_example(serve, backends):
    """T2014: www.example.com matches nothing on HTTP:80 of CLB1 and goes to the default www.test1.com."""
    t1, t2 = backends("test1"), backends("test2")
    rules = [
        rule("r1", "www.test1.com", "/", [t1.target()], DefaultServer=True),
        rule("r2", "www.test2.com", "/", [t2.target()]),
    ]
    serve([load_balancer("clb1", VIP, [listener("l80", "HTTP", 18080, rules)])])
    assert http_get(VIP, 18080, "www.example.com").backend == "test1"
    assert http_get(VIP, 18080, "www.test2.com").backend == "test2"
    assert http_get(VIP, 18080, "www.test1.com").backend == "test1"


def test_wildcard_and_regex_domains(serve, backends):
    exact, head, tail, regex, dflt = (backends(n) for n in ("exact", "head", "tail", "regex", "dflt"))
    rules = [
        rule("e", "www.a.test", "/", [exact.target()]),
        rule("h", "*.a.test", "/", [head.target()]),
        rule("t", "www.tail.*", "/", [tail.target()]),
        rule("x", "~^img\\d+\\.pics\\.test$", "/", [regex.target()]),
        rule("d", "default.test", "/", [dflt.target()], DefaultServer=True),
    ]
    serve([load_balancer("lb-dom", VIP, [listener("l80", "HTTP", 18080, rules)])])
    cases = {
        "www.a.test": "exact",  # exact beats the leading wildcard
        "api.a.test": "head",
        "deep.er.a.test": "head",
        "www.tail.org": "tail",
        "www.tail.co.uk": "tail",
        "img42.pics.test": "regex",
        "imgx.pics.test": "dflt",  # regex does not match: default domain
        "a.test": "dflt",  # *.a.test does not cover a.test itself
    }
    for host, want in cases.items():
        assert http_get(VIP, 18080, host).backend == want, host


def test_default_switch_off_refuses_unmatched_hosts(serve, backends, pki):
    b = backends("only")
    http_rules = [rule("h", "www.a.test", "/", [b.target()])]
    https_rules = [rule("s", "www.a.test", "/", [b.target()])]
    cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}
    serve(
        [
            load_balancer(
                "lb-off",
                VIP,
                [
                    listener("l80", "HTTP", 18080, http_rules, DefaultSerSwitch=False),
                    listener("l443", "HTTPS", 18443, https_rules, DefaultSerSwitch=False, Certificate=cert),
                ],
                Certificates=pki.certificates(),
            )
        ]
    )
    assert http_get(VIP, 18080, "www.a.test").backend == "only"
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        http_get(VIP, 18080, "unknown.test")  # 444: closed without an answer
    reply, _ = https_get(VIP, 18443, "www.a.test")
    assert reply.backend == "only"
    from tests.l7.conftest import client_context

    assert handshake(VIP, 18443, "unknown.test", client_context()) is None  # ssl_reject_handshake


def test_default_switch_on_serves_unknown_sni(serve, backends, pki):
    b = backends("dflt")
    cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}
    rules = [rule("s", "www.a.test", "/", [b.target()], DefaultServer=True)]
    serve(
        [
            load_balancer(
                "lb-on",
                VIP,
                [listener("l443", "HTTPS", 18443, rules, Certificate=cert)],
                Certificates=pki.certificates(),
            )
        ]
    )
    reply, _ = https_get(VIP, 18443, "unknown.test")
    assert reply.backend == "dflt"
