"""Validation rules: grammar, cross-object checks, certificates, personalized config, settings."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from clbagent import loader
from clbagent.errors import Code
from clbagent.model.syntax import parse_domain, parse_url
from clbagent.personalized_config import parse_customized
from clbagent.settings import Settings
from clbagent.tls_policies import FORCED_OFF, default_tls, named
from clbagent.validate import check_transition, validate_documents
from tests.helpers import FIXTURES

BASE: dict[str, Any] = {
    "LoadBalancerId": "lb-t",
    "LoadBalancerVips": ["127.0.70.1"],
    "Listeners": [
        {
            "ListenerId": "lbl-h",
            "Protocol": "HTTP",
            "Port": 8080,
            "Rules": [
                {
                    "LocationId": "loc-1",
                    "Domain": "a.example.com",
                    "Url": "/",
                    "DefaultServer": True,
                    "Targets": [{"EniIp": "127.0.71.1", "Port": 80}],
                }
            ],
        },
    ],
}


def issues_of(doc: dict[str, Any], settings: Settings | None = None) -> list[tuple[str, str]]:
    state = validate_documents([("doc", doc)], settings or Settings())
    return [(i.code, i.path) for i in state.issues if i.severity == "error"]


def with_(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["Listeners"][0]["Rules"][0].update(changes)
    return doc


def test_base_document_is_valid() -> None:
    assert issues_of(BASE) == []


def test_all_errors_of_a_document_are_reported_at_once() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"][0]["Rules"][0]["Targets"][0]["Weight"] = 500  # structural
    doc["Listeners"].append({"ListenerId": "lbl-t", "Protocol": "TCP", "Port": 8080})  # port conflict
    doc["Listeners"].append({"ListenerId": "lbl-u", "Protocol": "UDP", "Port": 3389})  # reserved port
    doc["Rewrites"] = [{"SourceLocationId": "loc-1", "TargetLocationId": "loc-x"}]  # unknown rule
    found = issues_of(doc)
    assert (Code.RANGE, "lb-t/Listeners[0]/Rules[0]/Targets[0]/Weight") in found
    assert (Code.PORT_CHECK_FAILED, "lb-t/Listeners[1]/Port") in found
    assert (Code.PORT_CHECK_FAILED, "lb-t/Listeners[2]/Port") in found
    assert (Code.LOCATION_NOT_FOUND, "lb-t/Rewrites[0]/TargetLocationId") in found


def test_a_bad_document_does_not_block_the_others() -> None:
    bad = with_(Domain="bad domain")
    good = copy.deepcopy(BASE)
    good["LoadBalancerId"] = "lb-good"
    good["LoadBalancerVips"] = ["127.0.70.2"]
    state = validate_documents([("bad", bad), ("good", good)])
    assert list(state.load_balancers()) == ["lb-good"]
    assert [d.ok for d in state.documents] == [False, True]


def test_tcp_and_udp_may_share_a_port_but_nothing_else() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [{"Protocol": "TCP", "Port": 9000}, {"Protocol": "UDP", "Port": 9000}]
    assert issues_of(doc) == []
    doc["Listeners"].append({"Protocol": "HTTP", "Port": 9000})
    assert issues_of(doc) == [(Code.PORT_CHECK_FAILED, "lb-t/Listeners[2]/Port")]


@pytest.mark.parametrize("first,second", [("UDP", "HTTP"), ("HTTPS", "UDP"), ("UDP", "UDP"), ("TCP", "TCP")])
def test_udp_shares_a_port_with_tcp_only(first: str, second: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [{"Protocol": first, "Port": 9000}, {"Protocol": second, "Port": 9000}]
    found = issues_of(doc)
    assert (Code.PORT_CHECK_FAILED, "lb-t/Listeners[1]/Port") in found


@pytest.mark.parametrize("field,value", [("Port", 0), ("Port", 65536), ("EndPort", 70000)])
def test_listener_port_out_of_range_is_a_port_check_failure(field: str, value: int) -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [{"Protocol": "TCP", "Port": 9000, field: value}]
    assert issues_of(doc) == [(Code.PORT_CHECK_FAILED, f"lb-t/Listeners[0]/{field}")]


def test_custom_check_payload_needs_check_type_custom() -> None:
    doc = copy.deepcopy(BASE)
    check = {"ContextType": "TEXT", "SendContext": "ping", "RecvContext": "pong"}
    doc["Listeners"] = [{"Protocol": "UDP", "Port": 53, "HealthCheck": check}]
    assert issues_of(doc) == [(Code.MISSING_PARAMETER, "lb-t/Listeners[0]/HealthCheck/CheckType")]
    check["CheckType"] = "CUSTOM"
    assert issues_of(doc) == []


@pytest.mark.parametrize(
    "domain,kind",
    [
        ("www.example.com", "exact"),
        ("*.example.com", "wildcard_head"),
        ("www.example.*", "wildcard_tail"),
        ("~^www\\d+\\.example\\.com$", "regex"),
        ("a_b.example.com", "exact"),
        ("10.0.0.1", "exact"),
    ],
)
def test_domain_forms(domain: str, kind: str) -> None:
    assert parse_domain(domain).kind == kind


@pytest.mark.parametrize(
    "domain,code",
    [
        ("www.*.com", Code.FORMAT_ERROR),
        ("*.*.com", Code.FORMAT_ERROR),
        ("WWW.example.com", Code.FORMAT_ERROR),
        ("a;b.com", Code.FORMAT_ERROR),
        ("a b.com", Code.FORMAT_ERROR),
        ("~^a{2}$", Code.FORMAT_ERROR),
        ('~^a"b', Code.FORMAT_ERROR),
        ("~(", Code.FORMAT_ERROR),
        ("a..com", Code.FORMAT_ERROR),
        ("a" * 121, Code.LENGTH),
        ("", Code.LENGTH),
        ("~", Code.FORMAT_ERROR),
        ("é.com", Code.FORMAT_ERROR),
    ],
)
def test_bad_domains(domain: str, code: Code) -> None:
    assert issues_of(with_(Domain=domain))[0][0] == code


def test_domain_length_follows_the_setting() -> None:
    domain = "a" * 40 + "." + "b" * 45 + ".com"  # 90 characters
    assert issues_of(with_(Domain=domain)) == []
    assert issues_of(with_(Domain=domain), Settings(domain_max_length=80))[0][0] == Code.LENGTH


@pytest.mark.parametrize(
    "url,kind,pattern",
    [
        ("/", "prefix", "/"),
        ("=/a/b.html", "exact", "/a/b.html"),
        ("^~/img/", "prefix_stop", "/img/"),
        ("~\\.(gif|jpg|bmp)$", "regex", "\\.(gif|jpg|bmp)$"),
        ("~*^/API/", "regex_nocase", "^/API/"),
        ("/a?b=c", "prefix", "/a?b=c"),
    ],
)
def test_url_forms(url: str, kind: str, pattern: str) -> None:
    parsed = parse_url(url)
    assert (parsed.kind, parsed.pattern) == (kind, pattern)


@pytest.mark.parametrize("url", ["a/b", "/a b", "/a;b", "/a{b}", "=a", "~a;b", "/$x", "/a\nb", "~^a'b"])
def test_bad_urls(url: str) -> None:
    assert issues_of(with_(Url=url))[0][0] == Code.FORMAT_ERROR


def test_same_location_twice_in_a_domain_is_a_duplicate() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"][0]["Rules"].append({"Domain": "a.example.com", "Url": "^~/"})
    assert issues_of(doc) == [(Code.DUPLICATE, "lb-t/Listeners[0]/Rules[1]/Url")]


def test_default_server_rules() -> None:
    two = copy.deepcopy(BASE)
    two["Listeners"][0]["Rules"].append({"Domain": "b.example.com", "DefaultServer": True})
    assert issues_of(two) == [(Code.DUPLICATE, "lb-t/Listeners[0]/Rules[1]/DefaultServer")]
    none = with_(DefaultServer=False)
    assert issues_of(none) == [(Code.MISSING_PARAMETER, "lb-t/Listeners[0]/Rules")]
    assert issues_of(none, Settings(require_default_server=False)) == []


def test_persistence_needs_wrr() -> None:
    assert issues_of(with_(SessionExpireTime=600, Scheduler="IP_HASH")) == [
        (Code.INVALID_PARAMETER, "lb-t/Listeners[0]/Rules[0]/SessionExpireTime")
    ]
    assert issues_of(with_(SessionExpireTime=20))[0][0] == Code.RANGE
    assert issues_of(with_(SessionExpireTime=3601))[0][0] == Code.RANGE


def test_wildcard_domain_needs_a_health_check_domain() -> None:
    assert issues_of(with_(Domain="*.example.com")) == [
        (Code.MISSING_PARAMETER, "lb-t/Listeners[0]/Rules[0]/HealthCheck/HttpCheckDomain")
    ]
    assert issues_of(with_(Domain="*.example.com", HealthCheck={"HttpCheckDomain": "x.example.com"})) == []


@pytest.mark.parametrize(
    "hc,code,field",
    [
        ({"TimeOut": 5, "IntervalTime": 5}, Code.RANGE, "TimeOut"),
        ({"CheckType": "HTTP"}, Code.MISSING_PARAMETER, "HttpVersion"),
        ({"CheckType": "HTTP", "HttpVersion": "HTTP/1.1", "HttpCode": 3}, Code.RANGE, "HttpCode"),
        (
            {"CheckType": "CUSTOM", "ContextType": "HEX", "SendContext": "ABC", "RecvContext": "AB"},
            Code.FORMAT_ERROR,
            "SendContext",
        ),
        ({"CheckType": "CUSTOM", "ContextType": "TEXT", "SendContext": "ping"}, Code.MISSING_PARAMETER, "RecvContext"),
        ({"IntervalTime": 4}, Code.RANGE, "IntervalTime"),
        ({"HealthNum": 11}, Code.RANGE, "HealthNum"),
        ({"HttpCheckPath": "no-slash"}, Code.FORMAT_ERROR, "HttpCheckPath"),
        ({"SendContext": "a" * 501}, Code.LENGTH, "SendContext"),
    ],
)
def test_l4_health_check_rules(hc: dict[str, Any], code: Code, field: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [{"Protocol": "TCP", "Port": 9000, "HealthCheck": hc}]
    assert (code, f"lb-t/Listeners[0]/HealthCheck/{field}") in issues_of(doc)


def test_udp_accepts_only_custom_checks() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [{"Protocol": "UDP", "Port": 53, "HealthCheck": {"CheckType": "TCP"}}]
    assert issues_of(doc) == [(Code.INVALID_VALUE, "lb-t/Listeners[0]/HealthCheck/CheckType")]


def test_http_codes_accept_names_and_bits() -> None:
    state = validate_documents([("doc", with_(HealthCheck={"HttpCode": "http_2xx,http_3xx"}))])
    rule = state.documents[0].load_balancer.listeners[0].rules[0]
    assert rule.health_check.http_code == 6


def test_v2_spellings_are_accepted() -> None:
    doc = {
        "loadBalancerId": "lb-v2",
        "LoadBalancerVips": ["127.0.70.9"],
        "Listeners": [
            {
                "protocol": 2,
                "loadBalancerPort": 9000,
                "scheduler": "least_conn",
                "Targets": [{"eniIp": "127.0.71.1", "port": 9000, "weight": 5}],
            },
            {
                "protocol": 1,
                "loadBalancerPort": 8080,
                "Rules": [
                    {
                        "domain": "a.example.com",
                        "url": "/",
                        "httpHash": "ip_hash",
                        "DefaultServer": True,
                        "HealthCheck": {"healthSwitch": 1, "intervalTime": 10, "httpCode": 31},
                    }
                ],
            },
        ],
    }
    state = validate_documents([("v2", doc)])
    assert state.ok, [str(i) for i in state.issues]
    lb = state.load_balancers()["lb-v2"]
    assert (lb.listeners[0].protocol, lb.listeners[0].scheduler) == ("TCP", "LEAST_CONN")
    assert lb.listeners[1].rules[0].scheduler == "IP_HASH"


def test_targets_identity_and_family() -> None:
    two_ids = with_(Targets=[{"EniIp": "127.0.71.1", "InstanceId": "ins-1", "Port": 80}])
    assert issues_of(two_ids) == [(Code.INVALID_PARAMETER, "lb-t/Listeners[0]/Rules[0]/Targets[0]")]
    no_addr = with_(Targets=[{"InstanceId": "ins-1", "Port": 80}])
    assert issues_of(no_addr) == [(Code.MISSING_PARAMETER, "lb-t/Listeners[0]/Rules[0]/Targets[0]/PrivateIpAddresses")]
    v6 = with_(Targets=[{"EniIp": "fd00::1", "Port": 80}])
    assert issues_of(v6) == [(Code.INVALID_PARAMETER, "lb-t/Listeners[0]/Rules[0]/Targets[0]/EniIp")]


def test_https_certificate_requirements() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [
        {
            "Protocol": "HTTPS",
            "Port": 8443,
            "Certificate": {"SSLMode": "MUTUAL", "CertId": "c"},
            "Rules": [{"Domain": "a.example.com", "DefaultServer": True}],
        }
    ]
    found = issues_of(doc)
    assert (Code.MISSING_PARAMETER, "lb-t/Listeners[0]/Certificate/CertCaId") in found
    assert (Code.RESOURCE_NOT_FOUND, "lb-t/Listeners[0]/Certificate/CertId") in found
    doc["Listeners"][0]["Rules"][0]["Certificate"] = {"SSLMode": "UNIDIRECTIONAL", "CertId": "c"}
    assert (Code.INVALID_PARAMETER, "lb-t/Listeners[0]/Rules[0]/Certificate") in issues_of(doc)


def test_sni_cannot_be_switched_off() -> None:
    def state(sni: int):
        doc = copy.deepcopy(BASE)
        lis = {
            "ListenerId": "lbl-s",
            "Protocol": "HTTPS",
            "Port": 8443,
            "SniSwitch": sni,
            "Rules": [
                {
                    "Domain": "www.example.com",
                    "DefaultServer": True,
                    "Certificate": {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-www"},
                }
            ],
        }
        if not sni:
            lis["Certificate"] = lis["Rules"][0].pop("Certificate")
        doc["Listeners"] = [lis]
        doc["Certificates"] = [
            {
                "CertId": "cert-www",
                "CertContent": (FIXTURES / "certs/www.example.com.crt").read_text(),
                "CertKey": (FIXTURES / "certs/www.example.com.key").read_text(),
            }
        ]
        return validate_documents([("doc", doc)])

    before, after = state(1), state(0)
    assert before.ok and after.ok
    assert [(i.code, i.path) for i in check_transition(before, after)] == [
        (Code.INVALID_PARAMETER, "lb-t/Listeners[0]/SniSwitch")
    ]
    assert check_transition(after, before) == []


def test_redirect_graph_rules() -> None:
    doc = copy.deepcopy(BASE)
    rules = doc["Listeners"][0]["Rules"]
    rules += [
        {"LocationId": "loc-2", "Domain": "a.example.com", "Url": "/2"},
        {"LocationId": "loc-3", "Domain": "a.example.com", "Url": "/3"},
    ]
    doc["Rewrites"] = [
        {"SourceLocationId": "loc-1", "TargetLocationId": "loc-2"},
        {"SourceLocationId": "loc-2", "TargetLocationId": "loc-3"},
    ]  # B -> X after A -> B
    assert issues_of(doc) == [(Code.REWRITE_ALREADY_EXIST, "lb-t/Rewrites[1]/SourceLocationId")]
    doc["Rewrites"] = [
        {
            "SourceLocationId": "loc-1",
            "TargetLocationId": "loc-2",
            "RewriteCode": 302,
            "TakeUrl": True,
            "SourceDomain": "b.example.com",
        }
    ]
    assert issues_of(doc) == [(Code.INVALID_PARAMETER, "lb-t/Rewrites[0]/SourceDomain")]
    doc["Rewrites"][0]["RewriteCode"] = 303
    assert (Code.RANGE, "lb-t/Rewrites[0]/RewriteCode") in issues_of(doc)


def test_auto_rewrite_needs_https_443_and_a_free_port_80() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [
        {
            "ListenerId": "lbl-s",
            "Protocol": "HTTPS",
            "Port": 8443,
            "Certificate": {"SSLMode": "UNIDIRECTIONAL", "CertId": "c"},
            "Rules": [{"Domain": "a.example.com", "DefaultServer": True}],
        },
        {"Protocol": "TCP", "Port": 80},
    ]
    doc["AutoRewrites"] = [{"ListenerId": "lbl-s"}]
    assert (Code.PROTOCOL_CHECK_FAILED, "lb-t/AutoRewrites[0]/ListenerId") in issues_of(doc)
    doc["Listeners"][0]["Port"] = 443
    assert (Code.PORT_CHECK_FAILED, "lb-t/AutoRewrites[0]/ListenerId") in issues_of(doc)


# --- personalized config -------------------------------------------------------------------------

DOC_DEFAULT = (
    "ssl_protocols TLSv1 TLSv1.1 TLSv1.2; client_header_timeout 60s; client_header_buffer_size 4k; "
    "client_body_timeout 60s; client_max_body_size 60M; keepalive_timeout 75s; add_header xxx yyy; "
    'more_set_headers "A:B"; proxy_connect_timeout 4s; proxy_read_timeout 60s; proxy_send_timeout 60s;'
)


def test_documented_default_config_is_accepted() -> None:
    directives, problems = parse_customized(DOC_DEFAULT)
    assert problems == [] and len(directives) == 11


@pytest.mark.parametrize(
    "text,code",
    [
        ("server_tokens off;", Code.INVALID_PARAMETER),
        ("client_max_body_size 300M;", Code.INVALID_PARAMETER),
        ("client_max_body_size 10241M;", Code.RANGE),
        ("proxy_buffer_size 8k;", Code.MISSING_PARAMETER),
        ("proxy_buffers 9 8k;", Code.RANGE),
        ("keepalive_timeout 3601s;", Code.RANGE),
        ("proxy_set_header Host $host;", Code.INVALID_VALUE),
        ("ssl_protocols TLSv1.3;", Code.INVALID_VALUE),
        ("ssl_ciphers RC4-MD5;", Code.INVALID_VALUE),
        ("error_page 404 index.html;", Code.FORMAT_ERROR),
        ('add_header X "$request_uri";', Code.FORMAT_ERROR),
        ("location / { return 200; }", Code.FORMAT_ERROR),
        ("keepalive_timeout 75s", Code.FORMAT_ERROR),
        ("send_timeout 60s; send_timeout 70s;", Code.DUPLICATE),
        ("x" * 70000, Code.LENGTH),
    ],
)
def test_bad_personalized_configs(text: str, code: Code) -> None:
    _, problems = parse_customized(text)
    assert code in [c for c, _ in problems]


def test_big_body_with_unbuffered_requests_is_accepted() -> None:
    assert parse_customized("client_max_body_size 300M; proxy_request_buffering off;")[1] == []


# --- certificates --------------------------------------------------------------------------------


def _cert_doc(content: str, key: str | None) -> dict[str, Any]:
    return {"Certificates": [{"CertId": "c1", "CertContent": content, "CertKey": key}]}


def _cert_issues(content: str, key: str | None, now: dt.datetime | None = None):
    state = validate_documents([("certs", _cert_doc(content, key))], now=now)
    return [(i.code, i.message, i.severity) for i in state.issues]


CERT = (FIXTURES / "certs/www.example.com.crt").read_text()
KEY = (FIXTURES / "certs/www.example.com.key").read_text()


def test_fixture_certificate_and_pkcs8_key_are_accepted() -> None:
    assert _cert_issues(CERT, KEY) == []
    ecc = (FIXTURES / "certs/ecc.example.com.crt").read_text()
    assert "BEGIN PRIVATE KEY" in (FIXTURES / "certs/ecc.example.com.key").read_text()
    assert _cert_issues(ecc, (FIXTURES / "certs/ecc.example.com.key").read_text()) == []


@pytest.mark.parametrize(
    "mangle,needle",
    [
        (lambda c: c.replace("-----BEGIN CERTIFICATE-----\n", ""), "PEM"),
        (lambda c: c.replace("\n", "\n\n", 3), "blank lines"),
        (
            lambda c: c.replace("\n", "", 2).replace("-----BEGIN CERTIFICATE-----", "-----BEGIN CERTIFICATE-----\n"),
            "64",
        ),
        (lambda c: "junk\n" + c, "PEM"),
    ],
)
def test_certificate_format_rules(mangle, needle: str) -> None:
    found = _cert_issues(mangle(CERT), KEY)
    assert found and found[0][0] == Code.FORMAT_ERROR and needle in found[0][1]


def test_key_must_match_and_exist() -> None:
    other = (FIXTURES / "certs/wildcard.example.net.key").read_text()
    assert _cert_issues(CERT, other)[0][1] == "private key does not match the certificate"
    assert _cert_issues(CERT, None)[0][0] == Code.MISSING_PARAMETER


def test_chain_order_is_checked() -> None:
    ca = (FIXTURES / "certs/ca.crt").read_text()
    assert _cert_issues(CERT + ca, KEY) == []
    assert "chain order" in _cert_issues(ca + CERT, KEY)[0][1]


def test_expiry_is_reported_as_a_warning() -> None:
    later = dt.datetime(2130, 1, 1, tzinfo=dt.UTC)
    found = _cert_issues(CERT, KEY, now=later)
    assert found and found[0][2] == "warning" and "expired" in found[0][1]


def test_rsa_key_with_wrong_label_is_rejected(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    assert _cert_issues(pem, key_pem) == []
    assert _cert_issues(pem, key_pem.replace("RSA PRIVATE KEY", "DSA PRIVATE KEY"))[0][0] == Code.FORMAT_ERROR


# --- TLS -----------------------------------------------------------------------------------------


def test_every_cipher_string_ends_with_the_forced_off_list() -> None:
    for tls in [default_tls(), *(named(p) for p in ("tls_cipher_policy_1_0", "tls_cipher_policy_1_2_strict"))]:
        assert tls is not None
        assert ":".join(FORCED_OFF) in tls.ciphers


def test_legacy_tls_and_3des_are_explicit_warnings() -> None:
    tls = named("tls_cipher_policy_1_0")
    assert tls is not None and tls.ciphers.endswith("@SECLEVEL=0")
    assert any("DES-CBC3-SHA" in w for w in tls.warnings) and any("TLSv1" in w for w in tls.warnings)
    strict = named("tls_cipher_policy_1_2_strict")
    assert strict is not None and strict.warnings == () and "@SECLEVEL" not in strict.ciphers


def test_stopped_listener_keeps_its_port_but_is_not_served() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"][0]["ListenerStatus"] = "stopped"
    doc["Listeners"].append({"ListenerId": "lbl-t", "Protocol": "TCP", "Port": 9000})
    state = validate_documents([("doc", doc)])
    assert state.ok
    assert [lis.id for lis in state.load_balancers()["lb-t"].listeners] == ["lbl-t"]
    doc["Listeners"][1]["Port"] = 8080
    assert issues_of(doc) == [(Code.PORT_CHECK_FAILED, "lb-t/Listeners[1]/Port")]


def test_a_load_balancer_using_an_invalid_certificate_is_refused() -> None:
    doc = copy.deepcopy(BASE)
    doc["Listeners"] = [
        {
            "Protocol": "HTTPS",
            "Port": 8443,
            "Certificate": {"SSLMode": "UNIDIRECTIONAL", "CertId": "broken"},
            "Rules": [{"Domain": "a.example.com", "DefaultServer": True}],
        }
    ]
    shared = {"Certificates": [{"CertId": "broken", "CertContent": "not pem", "CertKey": KEY}]}
    state = validate_documents([("doc", doc), ("shared", shared)])
    assert [(i.code, i.path) for i in state.documents[0].issues] == [
        (Code.INVALID_PARAMETER, "lb-t/Listeners[0]/Certificate/CertId")
    ]
    assert state.load_balancers() == {}


def test_documents_are_parsed_by_libyaml() -> None:
    """PyYAML's C parser reads every document (the pure-Python one is ten times slower): setup must
    install a PyYAML built with libyaml."""
    assert yaml.__with_libyaml__
    assert loader.SafeLoader is yaml.CSafeLoader


def test_v2_health_fields_written_flat_on_listeners_and_rules() -> None:
    """V2 carries health-check fields beside the listener's or rule's own fields."""
    doc = copy.deepcopy(BASE)
    doc["Listeners"][0]["Rules"][0].update(httpCheckPath="/hc", healthNum=3, httpCode=2)
    doc["Listeners"].append({"listenerId": "lbl-t", "protocol": 2, "loadBalancerPort": 81, "intervalTime": 10})
    state = validate_documents([("doc", doc)], Settings())
    assert state.issues == []
    (lb,) = state.load_balancers().values()
    rule_check = lb.listeners[0].rules[0].health_check
    assert (rule_check.http_check_path, rule_check.health_num, rule_check.http_code) == ("/hc", 3, 2)
    assert lb.listeners[1].health_check.interval_time == 10
    doc["Listeners"][1]["timeOut"] = 200
    assert issues_of(doc) == [(Code.RANGE, "lb-t/Listeners[1]/HealthCheck/TimeOut")]


def test_describe_output_fields_are_accepted_and_dropped() -> None:
    """A control plane may pass its Describe* objects over unchanged: times, states and names the
    data plane does not use are accepted; a target group (which the document cannot carry) is not."""
    doc = copy.deepcopy(BASE)
    doc.update(Status=1, CreateTime="2024-01-01 00:00:00", VpcId="vpc-1", Tags=[], Forward=1)
    listener = doc["Listeners"][0]
    listener.update(CreateTime="2024-01-01 00:00:00", TargetType="NODE", SessionType="NORMAL", Toa=False)
    listener["Rules"][0].update(BeAutoCreated=False, ListenerId="lbl-h", QuicStatus="", TargetType="NODE")
    listener["Rules"][0]["Targets"][0].update(InstanceName="web-1", RegisteredTime="2024", PublicIpAddresses=[])
    doc["Listeners"].append(
        {"Protocol": "HTTPS", "Port": 443, "SniSwitch": "ON", "Rules": []},
    )
    assert issues_of(doc) == []
    listener["TargetType"] = "TARGETGROUP"
    assert issues_of(doc) == [(Code.UNSUPPORTED_OPERATION, "lb-t/Listeners[0]/TargetType")]
