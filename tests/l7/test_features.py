"""Redirects, personalized config, headers, gzip, ACLs, timeouts and the JSON access log (real nginx)."""

from __future__ import annotations

import gzip
import socket
import time

import pytest

from tests.l7.conftest import http_get, https_get, listener, load_balancer, rule

pytestmark = pytest.mark.nginx
VIP, PORT, HOST = "127.0.10.5", 18090, "www.a.test"
CERT_A = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}


def test_manual_redirects(serve, backends):
    b = backends("new")
    rules = [
        rule("new", "www.new.test", "/index", [b.target()], DefaultServer=True),
        rule("s301", "www.old.test", "/forsale", []),
        rule("s302", "www.old.test", "/keep", []),
        rule("s307", "www.old.test", "=/exact", []),
    ]
    rewrites = [
        {
            "SourceLocationId": "s301",
            "TargetLocationId": "new",
            "RewriteCode": 301,
            "TakeUrl": False,
            "SourceDomain": "www.old.test",
        },
        {
            "SourceLocationId": "s302",
            "TargetLocationId": "new",
            "RewriteCode": 302,
            "TakeUrl": True,
            "SourceDomain": "www.old.test",
        },
        {
            "SourceLocationId": "s307",
            "TargetLocationId": "new",
            "RewriteCode": 307,
            "TakeUrl": False,
            "SourceDomain": "www.old.test",
        },
    ]
    serve([load_balancer("lb-rw", VIP, [listener("l", "HTTP", PORT, rules)], Rewrites=rewrites)])
    r = http_get(VIP, PORT, "www.old.test", "/forsale/item?id=1")
    assert (r.status, r.headers["location"]) == (301, f"http://www.new.test:{PORT}/index")
    r = http_get(VIP, PORT, "www.old.test", "/keep/a?b=c")
    assert (r.status, r.headers["location"]) == (302, f"http://www.new.test:{PORT}/keep/a?b=c")
    r = http_get(VIP, PORT, "www.old.test", "/exact")
    assert (r.status, r.headers["location"]) == (307, f"http://www.new.test:{PORT}/index")
    assert http_get(VIP, PORT, "www.new.test", "/index").backend == "new"


def test_auto_redirect_https_443_to_http_80(serve, backends, pki):
    b = backends("secure")
    rules = [
        rule("a", "www.a.test", "/", [b.target()], DefaultServer=True),
        rule("w", "shop.a.test", "/", [b.target()]),
    ]
    auto = [
        {
            "ListenerId": "l443",
            "Domains": ["www.a.test", "shop.a.test"],
            "RewriteCodes": [301, 302],
            "TakeUrls": [True, False],
        }
    ]
    serve(
        [
            load_balancer(
                "lb-auto",
                VIP,
                [listener("l443", "HTTPS", 443, rules, Certificate=CERT_A)],
                AutoRewrites=auto,
                Certificates=pki.certificates(),
            )
        ]
    )
    r = http_get(VIP, 80, "www.a.test", "/path?q=1")
    assert (r.status, r.headers["location"]) == (301, "https://www.a.test/path?q=1")
    r = http_get(VIP, 80, "shop.a.test", "/path?q=1")
    assert (r.status, r.headers["location"]) == (302, "https://shop.a.test/")
    assert https_get(VIP, 443, "www.a.test", "/path")[0].backend == "secure"
    with pytest.raises(ConnectionError):
        http_get(VIP, 80, "other.test")  # the created HTTP:80 listener answers only the chosen domains


def test_personalized_config_applies_to_its_instance_only(serve, backends):
    b = backends("echo")
    conf = {
        "ConfigId": "conf-1",
        "ConfigContent": (
            'client_max_body_size 1M;\nadd_header X-Clb-Test yes;\nmore_set_headers "X-More: 1";\n'
            "proxy_set_header X-Method $request_method;\nproxy_set_header X-clb-lbid $lbid;\n"
            "proxy_set_header Stgw-request-id $stgw_request_id;\nproxy_set_header X-Forwarded-Port $vport;\n"
        ),
    }
    bound = load_balancer(
        "lb-conf",
        VIP,
        [listener("l", "HTTP", PORT, [rule("r", HOST, "/", [b.target()], DefaultServer=True)])],
        ConfigId="conf-1",
        CustomizedConfigs=[conf],
    )
    free = load_balancer(
        "lb-free", "127.0.10.6", [listener("l", "HTTP", PORT, [rule("r", HOST, "/", [b.target()], DefaultServer=True)])]
    )
    serve([bound, free])
    big = b"x" * (2 * 1024 * 1024)
    assert http_get(VIP, PORT, HOST, method="POST", body=big).status == 413
    r = http_get("127.0.10.6", PORT, HOST, method="POST", body=big)
    assert r.status == 200 and r.json()["body_len"] == len(big)
    r = http_get(VIP, PORT, HOST)
    seen = r.json()["headers"]
    assert r.headers["x-clb-test"] == "yes" and r.headers["x-more"] == "1"
    assert seen["X-Method"] == "GET" and seen["X-clb-lbid"] == "lb-conf" and seen["X-Forwarded-Port"] == str(PORT)
    assert len(seen["Stgw-request-id"]) == 32
    assert "x-clb-test" not in http_get("127.0.10.6", PORT, HOST).headers


def test_headers_seen_by_the_backend(serve, backends, pki):
    b = backends("echo")
    switches = {"XForwardedFor_SLBIP": True, "XForwardedFor_SLBID": True, "XForwardedFor_proto": True}
    serve(
        [
            load_balancer(
                "lb-hdr",
                VIP,
                [
                    listener("l", "HTTP", PORT, [rule("r", HOST, "/", [b.target()], DefaultServer=True)]),
                    listener(
                        "s",
                        "HTTPS",
                        PORT + 1,
                        [rule("t", HOST, "/", [b.target()], DefaultServer=True)],
                        Certificate=CERT_A,
                        **switches,
                    ),
                ],
                Certificates=pki.certificates(),
            )
        ]
    )
    seen = http_get(VIP, PORT, HOST, source="127.0.30.9", headers={"X-Forwarded-For": "198.51.100.1"}).json()["headers"]
    assert seen["X-Forwarded-For"] == "198.51.100.1, 127.0.30.9"
    assert seen["X-Real-IP"] == "127.0.30.9" and seen["X-Client-Proto"] == "http"
    assert seen["X-Forwarded-Port"] == str(PORT) and int(seen["X-Real-Port"]) > 0
    assert "SLB-IP" not in seen and "X-Forwarded-Proto" not in seen
    seen = https_get(VIP, PORT + 1, HOST)[0].json()["headers"]
    assert seen["X-Client-Proto"] == "https" and seen["X-Forwarded-Proto"] == "https"
    assert seen["SLB-IP"] == VIP and seen["SLB-ID"] == "lb-hdr" and seen["X-Forwarded-Port"] == str(PORT + 1)


def test_gzip_only_with_accept_encoding(serve, backends):
    b = backends("big")
    rules = [
        rule("r", HOST, "/", [b.target()], DefaultServer=True),
        rule("plain", HOST, "/nogzip/", [b.target()], HttpGzip=False),
    ]
    serve([load_balancer("lb-gz", VIP, [listener("l", "HTTP", PORT, rules)])])
    zipped = http_get(VIP, PORT, HOST, "/?pad=5000", headers={"Accept-Encoding": "gzip, deflate"})
    assert zipped.headers.get("content-encoding") == "gzip"
    assert b'"backend": "big"' in gzip.decompress(zipped.body)
    assert "content-encoding" not in http_get(VIP, PORT, HOST, "/?pad=5000").headers
    off = http_get(VIP, PORT, HOST, "/nogzip/?pad=5000", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in off.headers
    odd = http_get(VIP, PORT, HOST, "/?pad=5000&type=application/octet-stream", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in odd.headers  # not in the CLB type list


def test_acl_white_and_black_lists(serve, backends):
    b = backends("acl")
    acls = [
        {"AclId": "acl-1", "AclEntries": [{"Entry": "127.0.30.0/24"}]},
    ]
    white_rules = [
        rule("w", HOST, "/app", [b.target()], DefaultServer=True),
        rule("w-old", HOST, "/old", []),
    ]
    white = listener("w", "HTTP", PORT, white_rules, AclStatus="on", AclId="acl-1", AclType="white")
    black = listener(
        "b",
        "HTTP",
        PORT + 1,
        [rule("b", HOST, "/", [b.target()], DefaultServer=True)],
        AclStatus="on",
        AclId="acl-1",
        AclType="black",
    )
    rewrites = [
        {
            "SourceLocationId": "w-old",
            "TargetLocationId": "w",
            "RewriteCode": 302,
            "TakeUrl": False,
            "SourceDomain": HOST,
        }
    ]
    serve([load_balancer("lb-acl", VIP, [white, black], Acls=acls, Rewrites=rewrites)])
    assert http_get(VIP, PORT, HOST, "/app", source="127.0.30.5").status == 200
    assert http_get(VIP, PORT, HOST, "/app", source="127.0.31.5").status == 403
    assert http_get(VIP, PORT + 1, HOST, source="127.0.30.5").status == 403
    assert http_get(VIP, PORT + 1, HOST, source="127.0.31.5").status == 200
    # The ACL is checked before nginx answers by itself: redirects and the 404 of unmatched URLs.
    assert http_get(VIP, PORT, HOST, "/old", source="127.0.30.5").status == 302
    assert http_get(VIP, PORT, HOST, "/old", source="127.0.31.5").status == 403
    assert http_get(VIP, PORT, HOST, "/nothing", source="127.0.30.5").status == 404
    assert http_get(VIP, PORT, HOST, "/nothing", source="127.0.31.5").status == 403


def test_request_timeout_504_and_idle_timeout(serve, backends):
    b = backends("slow")
    rules = [rule("r", HOST, "/", [b.target()], DefaultServer=True)]
    serve(
        [
            load_balancer(
                "lb-to",
                VIP,
                [
                    listener("l", "HTTP", PORT, rules, RequestTimeout=1, IdleTimeout=1),
                    listener("d", "HTTP", PORT + 1, [rule("d", HOST, "/", [b.target()], DefaultServer=True)]),
                ],
            )
        ]
    )
    started = time.monotonic()
    assert http_get(VIP, PORT, HOST, "/?sleep=2.5").status == 504
    assert time.monotonic() - started < 2.4
    for port, closed in ((PORT, True), (PORT + 1, False)):
        with socket.create_connection((VIP, port), timeout=5) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            time.sleep(0.2)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(1.8)
            s.settimeout(0.5)
            try:
                data = s.recv(10)
            except TimeoutError:
                data = None  # still open (default keepalive_timeout 75s)
            assert (data == b"") == closed, port


def test_ipv6_instances_write_no_access_log(serve, backends):
    """The product writes access logs for L7 listeners of IPv4 instances only (R137): requests to an
    IPv6 instance are served and counted, but leave no line; the IPv4 one next to it still logs."""
    four, six = backends("v4"), backends("v6", ip="::1")
    home = {"DefaultServer": True}
    served = serve(
        [
            load_balancer(
                "lb-v4", VIP, [listener("l4", "HTTP", PORT, [rule("r4", HOST, "/", [four.target()], **home)])]
            ),
            load_balancer(
                "lb-v6",
                "::1",
                [listener("l6", "HTTP", PORT, [rule("r6", HOST, "/", [six.target()], **home)])],
                AddressIPVersion="IPV6",
            ),
        ]
    )
    assert http_get("::1", PORT, HOST, "/six").status == 200
    assert http_get(VIP, PORT, HOST, "/four").status == 200
    assert (four.hits, six.hits) == (1, 1)
    requests = [entry["request"] for entry in served.access_log()]
    assert requests == ["GET /four HTTP/1.1"]


def test_json_access_log(serve, backends):
    b = backends("logged")
    served = serve(
        [
            load_balancer(
                "lb-log", VIP, [listener("l", "HTTP", PORT, [rule("r", HOST, "/", [b.target()], DefaultServer=True)])]
            )
        ]
    )
    http_get(VIP, PORT, HOST, "/hello?x=1", headers={"User-Agent": "clb-test"}, source="127.0.30.7")
    entry = served.access_log()[-1]
    assert entry["server_name"] == HOST and entry["http_host"] == HOST and entry["status"] == "200"
    assert entry["remote_addr"] == "127.0.30.7" and entry["server_addr"] == VIP
    assert entry["request"] == "GET /hello?x=1 HTTP/1.1" and entry["http_user_agent"] == "clb-test"
    assert entry["upstream_addr"] == f"{b.ip}:{b.port}" and entry["protocol_type"] == "http"
    for key in ("request_time", "upstream_response_time", "remote_port", "bytes_sent", "upstream_status"):
        assert entry[key] not in ("", "-"), key
