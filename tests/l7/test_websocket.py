"""WebSocket (ws://) and secure WebSocket (wss://) through the real nginx to a real WebSocket
backend, and backend keep-alive intact for ordinary requests on the same rules."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.l7.conftest import listener, load_balancer, rule
from tests.l7.websocket import Client, EchoServer

pytestmark = pytest.mark.nginx
VIP, HOST, HTTP_PORT, HTTPS_PORT = "127.0.10.40", "www.a.test", 18480, 18481


@pytest.fixture
def echo():
    servers: list[EchoServer] = []

    def make(label: str, ip: str) -> EchoServer:
        servers.append(EchoServer(ip, label))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def site(serve, backends, pki, echo):
    ws, plain = echo("ws", "127.0.20.140"), backends("plain")
    rules = [
        rule("ws", HOST, "/chat", [ws.target()], DefaultServer=True),
        rule("plain", HOST, "/", [plain.target()]),
    ]
    cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}
    doc = load_balancer(
        "lb-ws",
        VIP,
        [
            listener("http", "HTTP", HTTP_PORT, rules),
            listener(
                "https",
                "HTTPS",
                HTTPS_PORT,
                [{**r, "LocationId": f"s-{r['LocationId']}"} for r in rules],
                Certificate=cert,
            ),
        ],
        Certificates=pki.certificates(),
    )
    return serve([doc]), ws, plain


@pytest.mark.parametrize(("port", "tls"), [(HTTP_PORT, False), (HTTPS_PORT, True)], ids=["ws", "wss"])
def test_websocket_messages_cross_the_proxy(site, port, tls):
    _, ws, _ = site
    client = Client(VIP, port, HOST, "/chat", tls=tls)
    try:
        assert client.status == 101 and client.accepted
        assert client.exchange("hello") == "ws: hello"
        assert client.exchange("x" * 5000) == "ws: " + "x" * 5000
    finally:
        client.close()
    assert ws.upgrade_headers[-1] == {"upgrade": "websocket", "connection": "upgrade"}


def test_ordinary_requests_keep_backend_connections_alive(site):
    """No Upgrade header: an empty Connection header goes to the backend, which keeps the
    connection, so two requests on one client connection reuse one backend connection."""
    _, _, plain = site
    conn = http.client.HTTPConnection(VIP, HTTP_PORT, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/", headers={"Host": HOST})
            resp = conn.getresponse()
            seen = {k.lower(): v for k, v in json.loads(resp.read())["headers"].items()}
            assert resp.status == 200
            assert "connection" not in seen and "upgrade" not in seen
    finally:
        conn.close()
    assert len(plain.server.conns) == 1
