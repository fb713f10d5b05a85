"""The access log stays one strict JSON object per line whatever bytes a client sends (R137-R140)."""

from __future__ import annotations

import json
import socket

import pytest

from tests.l7.conftest import listener, load_balancer, rule
from tests.metrics.conftest import wait_for

VIP = "127.0.61.1"
REQUESTS = [
    # invalid UTF-8 in the path (a lone 0xff, a truncated sequence) and in a header
    b"GET /caf\xc3\xa9/\xff\xfe?q=\xc3 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: \xc0\xafbad\r\n",
    # a UTF-16 surrogate encoded as UTF-8 (not valid UTF-8) in the path, control bytes and quotes in a header
    b'GET /\xed\xa0\x80x HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: a\x01b\x7f"c\\d\r\n',
    # invalid UTF-8 in the Host header
    b"GET /plain HTTP/1.1\r\nHost: www.\xffexample.com\r\nUser-Agent: ok \xe2\x82\xac\r\n",
    # a valid request, for comparison
    b"GET /ok/\xe2\x82\xac HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: fine\r\n",
]


def _send(raw: bytes) -> bytes:
    with socket.create_connection((VIP, 8080), timeout=5) as s:
        s.sendall(raw + b"Connection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_every_line_is_strict_json_with_invalid_utf8_and_control_bytes(serve, status_backend, dynamic):
    backend = status_backend("127.0.61.2")
    root = rule("loc-log", "www.example.com", "/", [backend.target()], DefaultServer=True)
    doc = load_balancer("lb-log", VIP, [listener("lbl-log", "HTTP", 8080, [root])])
    served = serve([doc], dynamic=dynamic)
    for raw in REQUESTS:
        assert _send(raw).startswith(b"HTTP/1.1 ")
    lines = wait_for(lambda: len(served.access_log()) >= len(REQUESTS) and served.access_log(), 10, "the log lines")
    records = [json.loads(line.decode("utf-8", errors="strict")) for line in lines]  # strict: raises on any bad line
    by_path = {r["request"].split(" ")[1] if " " in r["request"] else r["request"]: r for r in records}
    # valid text is logged as it came; invalid text up to its first invalid byte, then U+FFFD
    assert records[0]["request"] == "GET /caf\u00e9/\ufffd"
    assert records[0]["http_user_agent"] == "\ufffd"
    assert records[1]["request"] == "GET /\ufffd"
    assert records[1]["http_user_agent"] == 'a\x01b\x7f"c\\d'  # control bytes and quotes escaped, not lost
    assert records[2]["http_user_agent"] == "ok \u20ac"
    assert "/ok/\u20ac" in by_path
    record_fields = {  # R138: the product's 23 record fields, remote_port, and the vip_vpcid index field
        *("server_name", "request", "remote_addr", "remote_port", "upstream_addr", "upstream_header_time"),
        *("connection_requests", "ssl_handshake_time", "ssl_cipher", "ssl_protocol", "ssl_session_reused"),
        *("time_local", "http_host", "server_addr", "bytes_sent", "upstream_status", "protocol_type"),
        *("request_time", "upstream_connect_time", "request_length", "tcpinfo_rtt", "upstream_response_time"),
        *("status", "http_user_agent", "vip_vpcid"),
    }
    for r in records:  # R140's request time, path, client IP and port, status, response time among them
        assert record_fields <= set(r)
