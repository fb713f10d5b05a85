"""Tenant isolation on the output side: generated names no user text can reach or collide with,
files that never follow a symlink, keys never printed, and what people read from the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from clbagent.cli import main
from clbagent.l7 import UnsafeTextError, names
from clbagent.l7.redirects import manual_redirects
from clbagent.l7.render import TEMPLATES
from clbagent.model import LoadBalancer
from tests.l7.conftest import client_context, compile_docs, http_get, https_get, listener, load_balancer, rule

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
VIP_A, VIP_B, HOST = "127.0.10.43", "127.0.10.44", "www.a.test"
PCRE2_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


def _mutual_lb(pki, backend) -> dict:
    """lb-bank: mutual TLS trusting CA ``x`` only."""
    cert = {"SSLMode": "MUTUAL", "CertId": "cert-a", "CertCaId": "x"}
    rules = [rule("bank", HOST, "/", [backend.target()], DefaultServer=True)]
    certs = [*pki.certificates()[:1], {"CertId": "x", "CertType": "CA", "CertContent": pki.ca.pem}]
    return load_balancer("lb-bank", VIP_A, [listener("m", "HTTPS", 18520, rules, Certificate=cert)], Certificates=certs)


def _squatter_lb(pki, backend) -> dict:
    """lb-squat: a server certificate named ``x.ca``, which once shared a file with CA ``x``."""
    cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": "x.ca"}
    pem = pki.foreign_client
    certs = [{"CertId": "x.ca", "CertType": "SVR", "CertContent": pem.cert, "CertKey": pem.key}]
    rules = [rule("squat", HOST, "/", [backend.target()], DefaultServer=True)]
    return load_balancer(
        "lb-squat", VIP_B, [listener("s", "HTTPS", 18521, rules, Certificate=cert)], Certificates=certs
    )


def test_ids_that_collided_give_distinct_names():
    assert names.ca_file("x") != names.cert_files("x.ca")[0]
    assert set(names.cert_files("x")) | {names.ca_file("x")} == {"certs/x.crt", "certs/x.key", "ca/x.crt"}
    same_ids = [names.upstream_name(("lb", "l", "loc", f"Listeners[0]/Rules[{i}]"), "loc") for i in range(2)]
    assert same_ids[0] != same_ids[1]
    assert names.zone_name("lb-1") != names.zone_name("lb_1")
    assert names.lb_file("a.b") != names.lb_file("a_b")


@pytest.mark.nginx
@pytest.mark.parametrize("squatter_first", [True, False])
def test_another_tenant_cannot_replace_a_mutual_tls_ca(serve, backends, pki, tmp_path, squatter_first):
    bank, squat = backends("bank"), backends("squat")
    docs = [_mutual_lb(pki, bank), _squatter_lb(pki, squat)]
    served = serve(docs[::-1] if squatter_first else docs)
    assert served.config.files["ca/x.crt"].strip() == pki.ca.pem.strip()
    assert served.config.files["certs/x.ca.crt"].strip() == pki.foreign_client.cert.strip()
    ours = client_context(cert=pki.client.write(tmp_path, "ours"))
    theirs = client_context(cert=pki.foreign_client.write(tmp_path, "theirs"))
    assert https_get(VIP_A, 18520, HOST, ctx=ours)[0].status == 200
    assert https_get(VIP_A, 18520, HOST, ctx=theirs)[0].status == 400
    assert bank.hits == 1


def test_no_regex_capture_can_name_a_generated_variable(pki, backends):
    """Every variable the compiler defines (map, geo, nginx.conf) or reads from a sticky cookie is
    longer than the longest name PCRE2 allows for a named capture, so no ``(?<name>...)`` can set
    or shadow it."""
    b, c = backends("v"), backends("w")
    acl = {"AclId": "acl-1", "AclEntries": [{"Entry": "10.0.0.0/8"}]}
    rules = [rule("r", HOST, "/", [b.target(), c.target()], SessionExpireTime=60, DefaultServer=True)]
    http = listener("h", "HTTP", 18522, rules, AclStatus="on", AclType="black", AclId="acl-1")
    cfg = compile_docs([load_balancer("lb-vars", VIP_A, [http], Acls=[acl])])
    text = "\n".join(t for p, t in cfg.files.items() if not p.startswith(("certs/", "ca/")))
    defined = set(re.findall(r"^\s*(?:map|geo) .* \$(\w+) \{$", text, re.M))
    assert len(defined) >= 5  # websocket, log protocol, ACL, sticky pin and cookie
    cookies = set(re.findall(r"^map \$(cookie_\w+) ", text, re.M))
    assert len(cookies) == 1
    for name in defined | cookies:
        assert not PCRE2_NAME.fullmatch(name), name
    assert "$clb_" not in (TEMPLATES / "loadbalancer.conf.j2").read_text()


def _render(tmp_path: Path, docs: list[dict], *args: str) -> int:
    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return main(["render", str(path), *args])


@pytest.mark.parametrize("managed", ["certs", "conf.d", "ca"])
def test_render_out_never_writes_through_a_symlinked_directory(tmp_path, pki, backends, capsys, managed):
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "prefix"
    elsewhere.mkdir()
    out.mkdir()
    (out / managed).symlink_to(elsewhere)
    assert _render(tmp_path, [_mutual_lb(pki, backends("b"))], "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "must be a directory, not a file or a symbolic link" in err and "Traceback" not in err
    assert list(elsewhere.iterdir()) == []


def test_render_out_replaces_a_symlinked_key_without_following_it(tmp_path, pki, backends):
    outside, out = tmp_path / "outside.key", tmp_path / "prefix"
    outside.write_text("not yours")
    (out / "certs").mkdir(parents=True, mode=0o700)
    (out / "certs" / "cert-a.key").symlink_to(outside)
    assert _render(tmp_path, [_mutual_lb(pki, backends("b"))], "--out", str(out)) == 0
    key = out / "certs" / "cert-a.key"
    assert outside.read_text() == "not yours"
    assert not key.is_symlink() and key.stat().st_mode & 0o777 == 0o600


def test_render_out_naming_a_file_is_a_clean_error(tmp_path, pki, backends, capsys):
    target_file = tmp_path / "a-file"
    target_file.write_text("x")
    assert _render(tmp_path, [_mutual_lb(pki, backends("b"))], "--out", str(target_file)) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["json", "text", "nginx"])
def test_render_never_prints_private_keys(tmp_path, pki, backends, capsys, fmt):
    assert _render(tmp_path, [_mutual_lb(pki, backends("b"))], "--format", fmt) == 0
    out = capsys.readouterr()
    assert "PRIVATE KEY" not in out.out + out.err
    if fmt == "json":
        files = json.loads(out.out)["nginx"]
        assert files["certs/cert-a.key"] == "(private key: never printed)"
        assert "BEGIN CERTIFICATE" in files["certs/cert-a.crt"]


def _h2_fleet(pki, backends, count: int) -> list[dict]:
    b = backends("h2")
    out = []
    for i in range(count):
        rules = [
            rule("a", HOST, "/", [b.target()], DefaultServer=True, Http2=True),
            rule("b", "b.a.test", "/", [b.target()]),
        ]
        https = listener("h", "HTTPS", 18523, rules, Certificate={"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"})
        certs = {"Certificates": pki.certificates()} if i == 0 else {}
        out.append(load_balancer(f"lb-h2-{i}", f"127.0.11.{i + 1}", [https], **certs))
    return out


def test_validate_reports_compiler_warnings_summarised(tmp_path, pki, backends, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump_all(_h2_fleet(pki, backends, 5)))
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "HTTP/2 is a property of the listen socket" in line]
    assert len(lines) == 1
    assert "lb-h2-0/Listeners[0]/Rules, lb-h2-1/Listeners[0]/Rules, lb-h2-2/Listeners[0]/Rules and 2 more" in lines[0]
    assert "(5 times)" in lines[0] and "5 warning(s)" in err
    assert main(["validate", "--json", str(path)]) == 0
    issues = json.loads(capsys.readouterr().out)
    assert sum("HTTP/2" in i["message"] for i in issues) == 5


def test_render_prints_no_empty_ipvs_section(tmp_path, pki, backends, capsys):
    assert _render(tmp_path, _h2_fleet(pki, backends, 1)) == 0
    assert "IPVS" not in capsys.readouterr().out


def test_a_redirect_cannot_read_a_variable(tmp_path, backends, capsys):
    """A manual redirect writes its target's URL into a ``return``, where nginx expands
    ``$name``: validation refuses such targets, and the compiler refuses them again."""
    b = backends("t")
    rules = [
        rule("t", HOST, "~^/x$clb_secret", [b.target()], DefaultServer=True),
        rule("s", HOST, "/old", []),
    ]
    rewrite = {"SourceLocationId": "s", "TargetLocationId": "t", "RewriteCode": 301, "TakeUrl": False}
    doc = load_balancer("lb-rw-var", VIP_A, [listener("l", "HTTP", 18524, rules)], Rewrites=[rewrite])
    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(UnsafeTextError, match="redirect target t has '\\$'"):
        manual_redirects(LoadBalancer.model_validate(doc))


@pytest.mark.nginx
def test_a_look_alike_tenant_changes_nothing_for_acl_and_stickiness(serve, backends):
    """Tenant B reuses A's listener and location IDs, a folded look-alike load balancer ID and
    regex domains with captures, on the same port; A's ACL and cookie persistence behave as alone."""
    a1, a2, a3, b1 = backends("a1"), backends("a2"), backends("a3"), backends("b1")
    acl = {"AclId": "acl-a", "AclEntries": [{"Entry": "127.0.30.9/32"}]}
    sticky = [rule("loc", HOST, "/", [a1.target(), a2.target(), a3.target()], SessionExpireTime=60, DefaultServer=True)]
    a = load_balancer(
        "lb-a",
        VIP_A,
        [listener("lis", "HTTP", 18525, sticky, AclStatus="on", AclType="black", AclId="acl-a")],
        Acls=[acl],
    )
    regexes = [
        rule("loc", "~^(www|api)\\.a\\.test$", "~^/(.*)$", [b1.target()], DefaultServer=True),
        rule("loc-2", "~^(.+)\\.test$", "/", [b1.target()], SessionExpireTime=60),
    ]
    b = load_balancer("lb.a", VIP_B, [listener("lis", "HTTP", 18525, regexes)])
    serve([a, b])
    assert http_get(VIP_A, 18525, HOST, source="127.0.30.9").status == 403
    first = http_get(VIP_A, 18525, HOST, source="127.0.30.10")
    cookie = first.headers["set-cookie"].split(";")[0]
    pinned = {http_get(VIP_A, 18525, HOST, headers={"Cookie": cookie}).backend for _ in range(6)}
    assert pinned == {first.backend}
    assert http_get(VIP_B, 18525, "www.a.test", "/x").backend == "b1"
