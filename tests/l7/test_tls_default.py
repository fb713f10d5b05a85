"""The TLS default against the real nginx with real clients: TLS 1.2+ at OpenSSL's normal security
level unless the ``legacy_tls_default`` setting asks for the documented CLB default; mutual TLS
never accepts weak client keys, and an explicit legacy policy on a mutual-TLS listener is refused."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml

from clbagent.cli import main
from clbagent.settings import Settings
from tests.l7.conftest import client_context, handshake, https_get, listener, load_balancer, rule

pytestmark = [pytest.mark.nginx, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
VIP, HOST = "127.0.10.41", "www.a.test"
ONE_WAY, MUTUAL = 18490, 18491
V = ssl.TLSVersion


def _doc(pki, backend, **policy) -> dict:
    def https(lid: str, port: int, cert: dict) -> dict:
        rules = [rule(f"{lid}-r", HOST, "/", [backend.target()], DefaultServer=True)]
        return listener(lid, "HTTPS", port, rules, Certificate=cert, **policy)

    one_way = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}
    mutual = {"SSLMode": "MUTUAL", "CertId": "cert-a", "CertCaId": "ca-1"}
    listeners = [https("one-way", ONE_WAY, one_way), https("mutual", MUTUAL, mutual)]
    return load_balancer("lb-tls-default", VIP, listeners, Certificates=pki.certificates())


def _versions(port: int) -> set[V]:
    versions = (V.TLSv1, V.TLSv1_1, V.TLSv1_2, V.TLSv1_3)
    return {v for v in versions if handshake(VIP, port, HOST, client_context(v)) is not None}


def _client_reaches_backend(pki_dir: Path, pem, backend) -> bool:
    """Whether a request with this client certificate reaches the backend (2xx from it)."""
    cert = pem.write(pki_dir, "client")
    before = backend.hits
    try:
        reply, _ = https_get(VIP, MUTUAL, HOST, ctx=client_context(V.TLSv1_2, cert=cert))
    except (ssl.SSLError, ConnectionError):
        return False
    return reply.status == 200 and backend.hits == before + 1


@pytest.fixture(scope="module")
def weak_client(pki):
    return pki.ca.issue("weak-client", client=True, bits=768)


def test_no_policy_means_tls12_and_13_and_weak_client_keys_refused(serve, backends, pki, weak_client, tmp_path):
    b = backends("tls-default")
    served = serve([_doc(pki, b)])
    assert _versions(ONE_WAY) == {V.TLSv1_2, V.TLSv1_3}
    assert _versions(MUTUAL) == {V.TLSv1_2, V.TLSv1_3}
    assert "SECLEVEL" not in served.config.files["conf.d/lb-tls-default.conf"]
    assert _client_reaches_backend(tmp_path, pki.client, b)
    assert not _client_reaches_backend(tmp_path, weak_client, b)
    assert not served.config.warnings


def test_legacy_default_is_one_setting_and_spares_mutual_tls(serve, backends, pki, weak_client, tmp_path):
    b = backends("tls-legacy")
    served = serve([_doc(pki, b)], settings=Settings(legacy_tls_default=True))
    assert _versions(ONE_WAY) == {V.TLSv1, V.TLSv1_1, V.TLSv1_2}
    assert _versions(MUTUAL) == {V.TLSv1_2, V.TLSv1_3}
    assert not _client_reaches_backend(tmp_path, weak_client, b)
    messages = [w.message for w in served.config.warnings]
    assert any("security level lowered to 0" in m for m in messages)
    assert any("3DES cannot be negotiated" in m for m in messages)


def _validate(tmp_path: Path, docs: list[dict], capsys) -> tuple[int, str]:
    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


def test_explicit_legacy_policy_on_mutual_tls_is_refused(backends, pki, tmp_path, capsys):
    code, err = _validate(tmp_path, [_doc(pki, backends("x"), TLSCipherPolicy="tls_cipher_policy_1_0")], capsys)
    assert code == 2
    assert "InvalidParameter: lb-tls-default/Listeners[1]/TLSCipherPolicy: not rendered: listener mutual" in err
    assert "needs TLS 1.2 or later" in err and "Traceback" not in err


@pytest.mark.parametrize("ciphers", ["!AES", "kEDH+AESGCM", "!HIGH:!AES"])
def test_cipher_lists_openssl_cannot_use_are_refused(backends, pki, tmp_path, capsys, ciphers):
    conf = {"ConfigId": "conf-ciphers", "ConfigContent": f"ssl_ciphers {ciphers};"}
    doc = {**_doc(pki, backends("x")), "ConfigId": "conf-ciphers", "CustomizedConfigs": [conf]}
    code, err = _validate(tmp_path, [doc], capsys)
    assert code == 2 and "selects no TLS 1.2 cipher" in err and "Traceback" not in err


def test_tls13_only_policy_is_refused(backends, pki, tmp_path, capsys):
    policy = {"TLSCipherPolicyId": "only-13", "TLSVersions": ["TLSv1.3"], "Ciphers": ["TLS_AES_128_GCM_SHA256"]}
    doc = {**_doc(pki, backends("x"), TLSCipherPolicy="only-13"), "TLSPolicies": [policy]}
    doc["Listeners"] = doc["Listeners"][:1]
    code, err = _validate(tmp_path, [doc], capsys)
    assert code == 2 and "TLS 1.3-only policy cannot be served" in err
