"""Property: whatever another tenant's document B holds — IDs chosen to look like A's, certificate
IDs that once shared A's file names, regex domains, stickiness and ACLs on the same ports — load
balancer A renders byte for byte the same files with or without B, no name B's file defines is
defined by A's, and ``nginx -t`` accepts the two together."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clbagent.l7 import compile_nginx, write_prefix
from clbagent.nginx.process import check_config
from clbagent.validate import validate_documents
from tests.l7.conftest import CA, NGINX_AVAILABLE, listener, load_balancer, rule, target

pytestmark = pytest.mark.nginx
CA_A = CA("tenant A clients")
SERVER_A, SERVER_B = CA_A.issue("a.test", ["a.test"]), CA_A.issue("b.test", ["b.test"])
DEFINED = re.compile(r"^(?:upstream (\S+)|\s*(?:map|geo) .* (\$\S+) \{|\s*zone ([^\s;]+))", re.M)


def tenant_a() -> dict:
    acl = {"AclId": "acl-a", "AclEntries": [{"Entry": "10.0.0.0/8"}]}
    sticky = [
        rule(
            "loc-1",
            "a.test",
            "/",
            [target("10.1.0.1", 80), target("10.1.0.2", 80)],
            SessionExpireTime=60,
            DefaultServer=True,
        )
    ]
    mutual = {"SSLMode": "MUTUAL", "CertId": "cert-a", "CertCaId": "ca-x"}
    certs = [
        {"CertId": "cert-a", "CertType": "SVR", "CertContent": SERVER_A.cert, "CertKey": SERVER_A.key},
        {"CertId": "ca-x", "CertType": "CA", "CertContent": CA_A.pem},
    ]
    listeners = [
        listener("lis-1", "HTTP", 18540, sticky, AclStatus="on", AclType="black", AclId="acl-a"),
        listener(
            "lis-2", "HTTPS", 18541, [{**sticky[0], "LocationId": "loc-2", "SessionExpireTime": 0}], Certificate=mutual
        ),
    ]
    return load_balancer("lb-a", "127.0.10.45", listeners, Certificates=certs, Acls=[acl])


LOOKALIKE_LB = st.sampled_from(["lb.a", "lb_a", "lb-a.conf", "LB-A", "lb-a-", "lb--a", "lb-a.ca"])
LOOKALIKE_ID = st.sampled_from(["lis-1", "lis-2", "loc-1", "lis_1", "loc.1", "u", "z", "clb_acl"])
CERT_IDS = st.sampled_from(["ca-x.ca", "cert-a.ca", "ca-x.crt", "cert-a.key", "cert-a.crt", "ca-x.key"])
DOMAINS = st.sampled_from(["a.test", "*.a.test", "~^(www|api)\\.a\\.test$", "~^(.+)\\.test$", "b.test"])


@st.composite
def hostile(draw) -> dict:
    cert_id = draw(CERT_IDS)
    rules = [
        rule(
            draw(LOOKALIKE_ID) + f"-{i}" * (i > 0),
            draw(DOMAINS),
            f"/p{i}" if i else "/",
            [target(f"10.2.0.{i + 1}", 80), target(f"10.2.1.{i + 1}", 80)],
            SessionExpireTime=draw(st.sampled_from([0, 60])),
            DefaultServer=i == 0,
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    acl = {"AclStatus": "on", "AclType": "white", "AclId": "acl-b"} if draw(st.booleans()) else {}
    one_way = {"SSLMode": "UNIDIRECTIONAL", "CertId": cert_id}
    lid = draw(LOOKALIKE_ID)
    listeners = [
        listener(lid, "HTTP", 18540, rules, **acl),
        listener(
            f"{lid}-tls",
            "HTTPS",
            18541,
            [{**r, "LocationId": r["LocationId"] + "-s", "SessionExpireTime": 0} for r in rules],
            Certificate=one_way,
        ),
    ]
    certs = [{"CertId": cert_id, "CertType": "SVR", "CertContent": SERVER_B.cert, "CertKey": SERVER_B.key}]
    acls = [{"AclId": "acl-b", "AclEntries": [{"Entry": "10.0.0.0/8"}]}]
    return load_balancer(draw(LOOKALIKE_LB), "127.0.10.46", listeners, Certificates=certs, Acls=acls)


def _files_of_a(files: dict[str, str]) -> dict[str, str]:
    own = ("conf.d/lb-a.conf", "certs/cert-a.crt", "certs/cert-a.key", "ca/ca-x.crt")
    return {p: files[p] for p in own}


def _defined(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in DEFINED.finditer(text)}


REFERENCE = compile_nginx(validate_documents([("a", tenant_a())]))
assert "conf.d/lb-a.conf" in REFERENCE.files, REFERENCE.warnings


@pytest.fixture(scope="module")
def prefix_dir():
    base = Path(tempfile.mkdtemp(prefix="clb-tenants-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=hostile(), a_first=st.booleans())
def test_a_renders_the_same_whatever_b_holds(prefix_dir, b, a_first):
    docs = [("a", tenant_a()), ("b", b)]
    state = validate_documents(docs if a_first else docs[::-1])
    cfg = compile_nginx(state, prefix=str(prefix_dir))
    assert _files_of_a(cfg.files) == _files_of_a(REFERENCE.files)
    b_file = cfg.files.get(f"conf.d/{b['LoadBalancerId']}.conf")
    if b_file is None:
        return  # B refused: A alone, already compared
    assert not _defined(b_file) & _defined(cfg.files["conf.d/lb-a.conf"])
    if NGINX_AVAILABLE:
        write_prefix(cfg, prefix_dir)
        result = check_config(prefix_dir)
        assert result.ok, result.output
