"""IDs belong to one object: a shared object or load balancer defined twice with different content
is an error for every document involved, whatever the file order (no squatting); names derived
from IDs cannot collide; weak certificates are refused where OpenSSL would refuse them."""

from __future__ import annotations

import pytest

from clbagent.validate import validate_documents
from tests.l7.conftest import listener, load_balancer, rule, target

VIP_A, VIP_B = "127.0.10.71", "127.0.10.72"


def _lb(lb_id: str, vip: str, **extra) -> dict:
    rules = [rule(f"{lb_id}-r", f"www.{lb_id}.test", "/", [target("127.0.20.1", 18001)], DefaultServer=True)]
    listeners = extra.pop("listeners", [listener(f"{lb_id}-l", "HTTP", 18070, rules)])
    return load_balancer(lb_id, vip, listeners, **extra)


SHARED = {
    "Acls": ({"AclId": "acl-x", "AclEntries": [{"Entry": "10.0.0.0/8"}]}, {"AclId": "acl-x", "AclEntries": []}),
    "TLSPolicies": (
        {"TLSCipherPolicyId": "pol-x", "TLSVersions": ["TLSv1.2"], "Ciphers": ["ECDHE-RSA-AES128-GCM-SHA256"]},
        {"TLSCipherPolicyId": "pol-x", "TLSVersions": ["TLSv1.2"], "Ciphers": ["AES128-GCM-SHA256"]},
    ),
    "CustomizedConfigs": (
        {"ConfigId": "conf-x", "ConfigContent": "client_max_body_size 60M;"},
        {"ConfigId": "conf-x", "ConfigContent": "client_max_body_size 1M;"},
    ),
}


def _errors(state, root: str) -> list:
    doc = next(d for d in state.documents if d.root == root)
    return [i for i in doc.issues if i.severity == "error"]


@pytest.mark.parametrize("field", sorted(SHARED))
@pytest.mark.parametrize("squatter_first", [False, True])
def test_a_shared_object_defined_twice_differently_is_an_error_for_both(field: str, squatter_first: bool) -> None:
    mine, theirs = SHARED[field]
    docs = [("a.yaml", _lb("lb-a", VIP_A, **{field: [mine]})), ("b.yaml", _lb("lb-b", VIP_B, **{field: [theirs]}))]
    state = validate_documents(docs[::-1] if squatter_first else docs)
    for root in ("lb-a", "lb-b"):
        assert "InvalidParameterValue.Duplicate" in {i.code for i in _errors(state, root)}, root
    assert state.load_balancers() == {}


def test_the_same_object_in_two_documents_is_fine() -> None:
    acl = SHARED["Acls"][0]
    state = validate_documents([("a", _lb("lb-a", VIP_A, Acls=[acl])), ("b", _lb("lb-b", VIP_B, Acls=[acl]))])
    assert state.ok


def test_a_reference_to_a_contested_id_is_refused() -> None:
    mine, theirs = SHARED["Acls"]
    user = _lb("lb-c", "127.0.10.73")
    user["Listeners"][0].update(AclStatus="on", AclId="acl-x", AclType="white")
    state = validate_documents([("a", {"Acls": [mine]}), ("b", {"Acls": [theirs]}), ("c", user)])
    assert any("belongs to no one" in i.message for i in _errors(state, "lb-c"))


def test_certificates_defined_twice_differently(pki) -> None:
    a, b = pki.certificates()[:2]
    clash = dict(b, CertId=a["CertId"])
    for order in ((a, clash), (clash, a)):
        state = validate_documents([("x", {"Certificates": [order[0]]}), ("y", {"Certificates": [order[1]]})])
        assert all(any(i.code == "InvalidParameterValue.Duplicate" for i in d.issues) for d in state.documents)


@pytest.mark.parametrize("second_first", [False, True])
def test_a_load_balancer_id_defined_twice_is_an_error_for_both(second_first: bool) -> None:
    docs = [("a.yaml", _lb("lb-a", VIP_A)), ("b.yaml", _lb("lb-a", VIP_B))]
    state = validate_documents(docs[::-1] if second_first else docs)
    assert [bool(_errors_of(d)) for d in state.documents] == [True, True]


def _errors_of(doc) -> list:
    return [i for i in doc.issues if i.severity == "error" and i.code == "InvalidParameterValue.Duplicate"]


@pytest.mark.parametrize("second_first", [False, True])
def test_two_load_balancers_on_one_vip_and_port_are_both_refused(second_first: bool) -> None:
    docs = [("a.yaml", _lb("lb-a", VIP_A)), ("b.yaml", _lb("lb-b", VIP_A))]
    state = validate_documents(docs[::-1] if second_first else docs)
    for root in ("lb-a", "lb-b"):
        assert "InvalidParameter.PortCheckFailed" in {i.code for i in _errors(state, root)}


def test_the_http_80_listener_of_an_auto_redirect_clashes_across_documents(pki) -> None:
    https_rules = [rule("s", "www.a.test", "/", [target("127.0.20.1", 18001)], DefaultServer=True)]
    cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"}
    https = listener("s", "HTTPS", 443, https_rules, Certificate=cert)
    a = load_balancer("lb-a", VIP_A, [https], Certificates=pki.certificates()[:1], AutoRewrites=[{"ListenerId": "s"}])
    plain = [rule("p", "www.b.test", "/", [target("127.0.20.1", 18001)], DefaultServer=True)]
    b = load_balancer("lb-b", VIP_A, [listener("p", "HTTP", 80, plain)])
    state = validate_documents([("a", a), ("b", b)])
    assert "InvalidParameter.PortCheckFailed" in {i.code for i in _errors(state, "lb-a")}
    assert "InvalidParameter.PortCheckFailed" in {i.code for i in _errors(state, "lb-b")}


def test_location_ids_name_one_rule_per_load_balancer() -> None:
    rules = [
        rule("same", "www.a.test", "/", [target("127.0.20.1", 18001)], DefaultServer=True),
        rule("same", "www.a.test", "/x", [target("127.0.20.1", 18001)]),
    ]
    derived = rule(None, "www.a.test", "/y", [target("127.0.20.1", 18001)])
    state = validate_documents([("a", load_balancer("lb-a", VIP_A, [listener("l", "HTTP", 18070, rules)]))])
    assert "InvalidParameterValue.Duplicate" in {i.code for i in _errors(state, "lb-a")}
    from clbagent.model import Rule

    derived_id = Rule.model_validate(derived).id
    squat = rule(derived_id, "www.a.test", "/z", [target("127.0.20.1", 18001)], DefaultServer=True)
    lb = load_balancer("lb-a", VIP_A, [listener("l", "HTTP", 18070, [squat, derived])])
    assert "InvalidParameterValue.Duplicate" in {i.code for i in _errors(validate_documents([("a", lb)]), "lb-a")}


def test_a_custom_policy_cannot_take_a_built_in_name() -> None:
    policy = {"TLSCipherPolicyId": "tls_cipher_policy_1_2", "TLSVersions": ["TLSv1"], "Ciphers": ["AES128-SHA"]}
    state = validate_documents([("p", {"TLSPolicies": [policy]})])
    assert any("built-in" in i.message for i in state.issues)


@pytest.mark.parametrize("weak", ["rsa-1024", "sha1"])
def test_weak_leaf_certificates_are_refused_at_the_normal_security_level(pki, tmp_path, weak: str) -> None:
    pem = (
        pki.ca.issue("www.a.test", ["www.a.test"], bits=1024)
        if weak == "rsa-1024"
        else pki.ca.issue_sha1("www.a.test", tmp_path)
    )
    certs = [{"CertId": "weak", "CertContent": pem.cert, "CertKey": pem.key}]
    rules = [rule("s", "www.a.test", "/", [target("127.0.20.1", 18001)], DefaultServer=True)]

    def lb(policy: str | None) -> dict:
        extra = {"TLSCipherPolicy": policy} if policy else {}
        cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": "weak"}
        return load_balancer(
            "lb-w", VIP_A, [listener("s", "HTTPS", 18443, rules, Certificate=cert, **extra)], Certificates=certs
        )

    strict = validate_documents([("w", lb(None))])
    assert any("cannot be served" in i.message for i in _errors(strict, "lb-w"))
    legacy = validate_documents([("w", lb("tls_cipher_policy_1_0"))])
    assert not any("cannot be served" in i.message for i in _errors(legacy, "lb-w"))


def test_vip_and_target_ranges_are_operator_settings() -> None:
    from clbagent.settings import Settings

    settings = Settings(vip_ranges=("127.0.10.0/24",), target_ranges=("10.0.0.0/8",))
    inside = _lb("lb-a", VIP_A)
    inside["Listeners"][0]["Rules"][0]["Targets"] = [target("10.1.2.3", 80)]
    outside = _lb("lb-b", "127.0.11.1")
    state = validate_documents([("a", inside), ("b", outside)], settings)
    assert _errors(state, "lb-a") == []
    messages = {i.message for i in _errors(state, "lb-b")}
    assert any("VIP ranges" in m for m in messages) and any("target ranges" in m for m in messages)
