"""TLS against the real nginx: the five named policies, a personalized policy, the forced-off list,
SNI certificate selection, mutual TLS and HTTP/2 through ALPN."""

from __future__ import annotations

import socket
import ssl

import pytest
from cryptography import x509

from tests.l7.conftest import (
    client_context,
    curl,
    handshake,
    https_get,
    listener,
    load_balancer,
    openssl_connect,
    rule,
)

pytestmark = [pytest.mark.nginx, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
VIP, HOST = "127.0.10.3", "www.a.test"
V = ssl.TLSVersion
POLICIES = {
    "tls_cipher_policy_1_0": {V.TLSv1, V.TLSv1_1, V.TLSv1_2},
    "tls_cipher_policy_1_1": {V.TLSv1_1, V.TLSv1_2},
    "tls_cipher_policy_1_2": {V.TLSv1_2},
    "tls_cipher_policy_1_2_strict": {V.TLSv1_2},
    "tls_cipher_policy_1_2_strict_with_1_3": {V.TLSv1_2, V.TLSv1_3},
}
CERT_A = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}


def https_listener(lid: str, port: int, backend, **extra) -> dict:
    rules = [rule(f"{lid}-r", HOST, "/", [backend.target()], DefaultServer=True)]
    return listener(lid, "HTTPS", port, rules, Certificate=CERT_A, **extra)


@pytest.fixture
def policies(serve, backends, pki):
    b = backends("tls")
    listeners = [https_listener(f"p{i}", 18441 + i, b, TLSCipherPolicy=name) for i, name in enumerate(sorted(POLICIES))]
    custom = [
        https_listener("custom", 18450, b),
        https_listener("wins", 18451, b, TLSCipherPolicy="tls_cipher_policy_1_2_strict"),
    ]
    conf = {
        "ConfigId": "conf-tls",
        "ConfigContent": "ssl_protocols TLSv1.2;\nssl_ciphers AES256-GCM-SHA384:kEDH+AESGCM;\n",
    }
    return serve(
        [
            load_balancer("lb-tls", VIP, listeners, Certificates=pki.certificates()),
            load_balancer("lb-tls-custom", "127.0.10.4", custom, ConfigId="conf-tls", CustomizedConfigs=[conf]),
        ]
    )


def test_named_policies_versions_and_ciphers(policies):
    for i, name in enumerate(sorted(POLICIES)):
        port = 18441 + i
        for version in (V.TLSv1, V.TLSv1_1, V.TLSv1_2, V.TLSv1_3):
            got = handshake(VIP, port, HOST, client_context(version))
            assert (got is not None) == (version in POLICIES[name]), (name, version, got)
        strict = "strict" in name

        def tls12(cipher: str, port: int = port) -> bool:
            try:
                ctx = client_context(V.TLSv1_2, cipher + ":@SECLEVEL=0")
            except ssl.SSLError:  # this OpenSSL cannot even offer it (DES-CBC3-SHA)
                return False
            return handshake(VIP, port, HOST, ctx) is not None

        assert tls12("ECDHE-RSA-AES128-GCM-SHA256"), name
        assert tls12("AES128-SHA256") != strict, name  # RSA key exchange: only the non-strict lists
        assert not tls12("ECDHE-RSA-CHACHA20-POLY1305"), name  # in no CLB list
        assert not tls12("DHE-RSA-AES128-GCM-SHA256"), name  # forced off (!DHE)
        assert not tls12("DES-CBC3-SHA"), name  # listed by 1_0-1_2 but unservable: warned about


def test_tls13_ccm_suite_needs_ssl_conf_command(policies):
    port = 18441 + sorted(POLICIES).index("tls_cipher_policy_1_2_strict_with_1_3")
    ok = openssl_connect(VIP, port, HOST, "-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256")
    assert ok.returncode == 0 and b"TLS_AES_128_CCM_SHA256" in ok.stdout, ok.stderr
    other = 18441 + sorted(POLICIES).index("tls_cipher_policy_1_2")
    assert openssl_connect(VIP, other, HOST, "-tls1_3").returncode != 0


def test_warnings_for_what_openssl_cannot_serve(policies):
    text = "\n".join(str(w) for w in policies.config.warnings)
    assert "lb-tls/Listeners[0]/TLSCipherPolicy" in text  # tls_cipher_policy_1_0
    assert "TLSv1 and TLSv1.1 enabled" in text and "DES-CBC3-SHA cannot be negotiated" in text


def test_personalized_policy_and_precedence(policies):
    vip = "127.0.10.4"
    assert handshake(vip, 18450, HOST, client_context(V.TLSv1_2, "AES256-GCM-SHA384")) is not None
    assert handshake(vip, 18450, HOST, client_context(V.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256")) is None
    assert handshake(vip, 18450, HOST, client_context(V.TLSv1_2, "DHE-RSA-AES128-GCM-SHA256")) is None
    assert handshake(vip, 18450, HOST, client_context(V.TLSv1_1)) is None
    assert handshake(vip, 18450, HOST, client_context(V.TLSv1_3)) is None
    # the listener's TLSCipherPolicy wins over the personalized config
    assert handshake(vip, 18451, HOST, client_context(V.TLSv1_2, "AES256-GCM-SHA384")) is None
    assert handshake(vip, 18451, HOST, client_context(V.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256")) is not None


def peer_cn(vip: str, port: int, sni: str) -> str:
    with (
        socket.create_connection((vip, port), timeout=5) as raw,
        client_context().wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value


def test_sni_selects_the_certificate(serve, backends, pki):
    a, b = backends("a"), backends("b")
    cert_b = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-b"}
    rules = [
        rule("ra", "www.a.test", "/", [a.target()], Certificate=CERT_A, DefaultServer=True),
        rule("rb", "www.b.test", "/", [b.target()], Certificate=cert_b),
    ]
    serve(
        [
            load_balancer(
                "lb-sni", VIP, [listener("sni", "HTTPS", 18460, rules, SniSwitch=1)], Certificates=pki.certificates()
            )
        ]
    )
    assert peer_cn(VIP, 18460, "www.a.test") == "a.test"
    assert peer_cn(VIP, 18460, "www.b.test") == "b.test"
    assert https_get(VIP, 18460, "www.b.test")[0].backend == "b"
    assert https_get(VIP, 18460, "www.a.test")[0].backend == "a"


def test_mutual_tls(serve, backends, pki, tmp_path):
    b = backends("secure")
    mutual = {"SSLMode": "MUTUAL", "CertId": "cert-a", "CertCaId": "ca-1"}
    rules = [rule("m", HOST, "/", [b.target()], DefaultServer=True)]
    serve(
        [
            load_balancer(
                "lb-mtls",
                VIP,
                [listener("m", "HTTPS", 18470, rules, Certificate=mutual)],
                Certificates=pki.certificates(),
            )
        ]
    )
    good = pki.client.write(tmp_path, "client")
    foreign = pki.foreign_client.write(tmp_path, "foreign")
    reply, _ = https_get(VIP, 18470, HOST, ctx=client_context(cert=good))
    assert reply.status == 200 and reply.backend == "secure"
    for ctx in (client_context(), client_context(cert=foreign)):
        try:
            reply, _ = https_get(VIP, 18470, HOST, ctx=ctx)
        except (ssl.SSLError, ConnectionError):
            continue  # refused during the handshake
        assert reply.status == 400 and b"secure" not in reply.body
    assert b.hits == 1


def test_http2_negotiated_where_enabled(serve, backends, pki):
    b = backends("h2")
    h2 = [rule("h2", HOST, "/", [b.target()], DefaultServer=True, Http2=True)]
    h1 = [rule("h1", HOST, "/", [b.target()], DefaultServer=True)]
    serve(
        [
            load_balancer(
                "lb-h2",
                VIP,
                [
                    listener("h2", "HTTPS", 18480, h2, Certificate=CERT_A),
                    listener("h1", "HTTPS", 18481, h1, Certificate=CERT_A),
                ],
                Certificates=pki.certificates(),
            )
        ]
    )
    for port, want in ((18480, "2"), (18481, "1.1")):
        out = curl(
            "-k",
            "--http2",
            "--resolve",
            f"{HOST}:{port}:{VIP}",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            f"https://{HOST}:{port}/",
        )
        assert out.stdout == want, (port, out.stdout, out.stderr)
