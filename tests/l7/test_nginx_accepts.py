"""Whatever ``validate`` accepts, ``nginx -t`` accepts: a corpus of documents at the edges of what
is valid (documented maxima, ranges, policies, personalized configs), each checked through the
same path as the CLI (validation, then both compilers) and then by the real ``nginx -t`` on that
load balancer's file alone; and what nginx would refuse is refused by ``validate`` first."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from clbagent.commands import compile_state
from clbagent.l7 import NginxConfig, write_prefix
from clbagent.nginx.process import NGINX, check_config
from clbagent.personalized_config import parse_customized
from clbagent.tls_policies import NAMED_POLICIES
from clbagent.validate import validate_documents
from tests.l7.conftest import NGINX_AVAILABLE, listener, load_balancer, rule, target

pytestmark = pytest.mark.nginx
VIP = "127.0.10.42"


def _targets(n: int, base: int = 0) -> list[dict]:
    return [target(f"10.{(base + i) // 250 % 250}.{(base + i) % 250}.{1 + i % 200}", 8000 + i) for i in range(n)]


def _rules(count: int, targets: int, **extra) -> list[dict]:
    return [
        rule(f"r{i}", f"d{i}.edge.test", "/", _targets(targets, i * targets), DefaultServer=i == 0, **extra)
        for i in range(count)
    ]


def check_config_file(conf: Path) -> bool:
    return subprocess.run([NGINX, "-t", "-q", "-c", str(conf)], capture_output=True, timeout=60).returncode == 0


def _lb(name: str, listeners: list[dict], **extra) -> dict:
    return load_balancer(name, VIP, listeners, **extra)


def _http(rules: list[dict], port: int = 18500, **extra) -> dict:
    return listener("l", "HTTP", port, rules, **extra)


EDGE_CONFIGS = {
    "low-edges": "client_header_timeout 30s; client_header_buffer_size 1k; client_body_timeout 30s; "
    "client_max_body_size 1M; keepalive_timeout 0s; proxy_connect_timeout 4s; proxy_read_timeout 30s; "
    "proxy_send_timeout 30s; keepalive_requests 1; send_timeout 1s; proxy_buffers 3 4k; "
    "http2_max_field_size 1k; proxy_redirect off; proxy_request_buffering on; proxy_ignore_client_abort off;",
    "high-edges": "client_header_timeout 120s; client_header_buffer_size 256k; client_body_timeout 120s; "
    "client_max_body_size 10240M; proxy_request_buffering off; keepalive_timeout 3600s; "
    "proxy_connect_timeout 120s; proxy_read_timeout 3600s; proxy_send_timeout 3600s; keepalive_requests 10000; "
    "send_timeout 3600s; proxy_buffer_size 32k; proxy_buffers 8 16k; http2_max_field_size 256k; "
    "proxy_redirect http:// https://; error_page 404 500 502 =200 /error.html; error_page 599 /x;",
    "buffers-together": "proxy_buffer_size 16k; proxy_buffers 3 16k;",
    "headers": 'add_header X-A "a b"; more_set_headers "X-B: c"; proxy_set_header X-Real-Port $remote_port; '
    "proxy_set_header Stgw-request-id $stgw_request_id; proxy_set_header X-clb-lbid $lbid;",
}


def corpus(pki) -> dict[str, dict]:
    cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}
    mutual = {"SSLMode": "MUTUAL", "CertId": "cert-a", "CertCaId": "ca-1"}
    certs = {"Certificates": pki.certificates()}
    docs = {
        "sticky-20-targets": _lb("e-sticky20", [_http(_rules(1, 20, SessionExpireTime=30))]),
        "10-rules-100-targets": _lb("e-10x100", [_http(_rules(10, 100))]),
        "50-rules-100-sticky-targets": _lb("e-50x100", [_http(_rules(50, 100, SessionExpireTime=3600))]),
        "mutual-tls-no-policy": _lb(
            "e-mutual", [listener("m", "HTTPS", 18501, _rules(1, 2), Certificate=mutual)], **certs
        ),
    }
    for i, name in enumerate(sorted(NAMED_POLICIES)):
        https = listener("t", "HTTPS", 18510 + i, _rules(2, 2), Certificate=cert, TLSCipherPolicy=name)
        docs[f"policy-{name}"] = _lb(f"e-{name.replace('_', '-')}", [https], **certs)
    for name, text in EDGE_CONFIGS.items():
        conf = {"ConfigId": f"c-{name}", "ConfigContent": text}
        docs[f"config-{name}"] = _lb(
            f"e-c-{name}", [_http(_rules(2, 3))], ConfigId=conf["ConfigId"], CustomizedConfigs=[conf]
        )
    return docs


def _accepted(doc: dict, prefix: str = "/tmp/clb-edge") -> NginxConfig:
    """The CLI's path: validation, then both compilers; no error anywhere."""
    state = validate_documents([("doc", json.loads(json.dumps(doc)))])
    nginx, ipvs = compile_state(state, prefix)
    errors = [i for i in state.issues + nginx.warnings + ipvs.warnings if i.severity == "error"]
    assert not errors, "\n".join(map(str, errors))
    return nginx


@pytest.fixture(scope="module")
def prefix_dir():
    base = Path(tempfile.mkdtemp(prefix="clb-edge-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def edge_corpus(pki):
    return corpus(pki)


@pytest.mark.parametrize(
    "case",
    [
        "sticky-20-targets",
        "10-rules-100-targets",
        "50-rules-100-sticky-targets",
        "mutual-tls-no-policy",
        *(f"policy-{n}" for n in sorted(NAMED_POLICIES)),
        *(f"config-{n}" for n in EDGE_CONFIGS),
    ],
)
def test_what_validate_accepts_nginx_accepts_alone(edge_corpus, prefix_dir, case):
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    doc, out = edge_corpus[case], prefix_dir / case
    cfg = _accepted(doc, str(out))
    lb_file = f"conf.d/{doc['LoadBalancerId']}.conf"
    alone = {p: t for p, t in cfg.files.items() if p == lb_file or not p.startswith("conf.d/")}
    write_prefix(NginxConfig(alone), out)
    result = check_config(out)
    assert result.ok, result.output


def test_sticky_persistence_grows_linearly(edge_corpus):
    """50 rules x 100 sticky targets: the include file stays within ten times the document (it
    used to be about 120 times larger: one backup line per pair of targets)."""
    doc = edge_corpus["50-rules-100-sticky-targets"]
    size = len(json.dumps(doc))
    text = _accepted(doc).files["conf.d/e-50x100.conf"]
    assert len(text) < 10 * size, (len(text), size)
    assert text.count("backup;") == 50 * 100 * 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("client_max_body_size \uff16\uff10M;", "client_max_body_size takes a value like"),
        ("error_page \u00b3\u2070\u2074 /x;", "error_page codes must be status codes"),
        ("keepalive_requests \u0661\u0660;", "keepalive_requests takes a value like"),
        ("proxy_buffer_size 32k; proxy_buffers 3 4k;", "do not fit together"),
        ("proxy_buffers 8 4k; proxy_buffer_size 16k;", "do not fit together"),
    ],
)
def test_what_nginx_would_refuse_is_refused_first(text, fragment):
    _, problems = parse_customized(text)
    assert any(fragment in message for _, message in problems), problems


@pytest.mark.parametrize("buffer_size", ["1k", "4k", "16k", "32k"])
def test_proxy_buffer_rule_is_nginx_rule(prefix_dir, buffer_size):
    """The rule validation applies to proxy_buffer_size with proxy_buffers gives nginx's verdict."""
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    conf = prefix_dir / f"buffers-{buffer_size}.conf"
    for count in ("3", "4", "8"):
        for size in ("4k", "8k", "16k"):
            text = f"proxy_buffer_size {buffer_size}; proxy_buffers {count} {size};"
            server = f"server {{ listen {VIP}:18599; {text} location / {{ proxy_pass http://{VIP}:1; }} }}"
            conf.write_text(f"pid {prefix_dir}/b.pid; error_log stderr; events {{}} http {{ {server} }}")
            nginx_ok = check_config_file(conf)
            assert (not parse_customized(text)[1]) == nginx_ok, text


@pytest.fixture(scope="module")
def weak_leaves(pki, prefix_dir) -> dict[str, object]:
    work = prefix_dir / "weak-pki"
    work.mkdir()
    return {
        "rsa-1024": pki.ca.issue("www.a.test", ["www.a.test"], bits=1024),
        "sha-1": pki.ca.issue_sha1("www.a.test", work),
    }


def _weak_doc(pem, policy: str | None) -> dict:
    certs = [{"CertId": "weak", "CertType": "SVR", "CertContent": pem.cert, "CertKey": pem.key}]
    extra = {"TLSCipherPolicy": policy} if policy else {}
    https = listener(
        "w", "HTTPS", 18530, _rules(1, 1), Certificate={"SSLMode": "UNIDIRECTIONAL", "CertId": "weak"}, **extra
    )
    return _lb("e-weak", [https], Certificates=certs)


@pytest.mark.parametrize("weakness", ["rsa-1024", "sha-1"])
@pytest.mark.parametrize("policy", [None, "tls_cipher_policy_1_2_strict"])
def test_weak_server_certificates_are_refused_where_openssl_would(weak_leaves, weakness, policy):
    state = validate_documents([("doc", _weak_doc(weak_leaves[weakness], policy))])
    nginx, _ = compile_state(state)
    errors = [i for i in state.issues + nginx.warnings if i.severity == "error"]
    assert errors and all("Traceback" not in i.message for i in errors)


@pytest.mark.parametrize("weakness", ["rsa-1024", "sha-1"])
def test_weak_server_certificates_still_load_under_a_legacy_policy(weak_leaves, prefix_dir, weakness):
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    out = prefix_dir / f"weak-{weakness}"
    write_prefix(_accepted(_weak_doc(weak_leaves[weakness], "tls_cipher_policy_1_0"), str(out)), out)
    result = check_config(out)
    assert result.ok, result.output
