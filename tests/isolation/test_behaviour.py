"""Hostile documents next to a tenant, proven with the real nginx and real traffic: the tenant's
ACL still refuses, its traffic still reaches its own backend, and what validate accepts passes
``nginx -t``."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clbagent.l7 import compile_nginx, write_prefix
from clbagent.nginx.process import Nginx, check_config
from clbagent.validate import DesiredState, validate_documents
from tests.isolation.corpus import CATASTROPHIC, NAMED_CAPTURES, hostile_lb
from tests.l7.conftest import NGINX_AVAILABLE, http_get, listener, load_balancer, rule

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(not NGINX_AVAILABLE, reason="nginx is not installed")]
VIP_A, PORT = "127.0.10.81", 18181
ACCEPTED_DOMAINS = [
    "~^(www|api)\\.r\\.test$",
    "~^([a-z0-9-]+\\.)*deep\\.r\\.test$",
    "~^w\\d+\\.r\\.test$",
    "~(?i)^mixed\\.r\\.test$",
    "~^(?:x|y)+\\.r\\.test$",
]
ACCEPTED_URLS = ["~^/(.*)/end$", "~*\\.(gif|jpg|bmp)$", "~^/api/.*\\.php$", "~^/a/.*/b/.*$", "~^/[^/]+/x$"]


@pytest.fixture
def run_state() -> Iterator[Callable[[DesiredState], Path]]:
    """Render a state as it is (documents with errors are left out), ``nginx -t`` it, start nginx."""
    base = Path(tempfile.mkdtemp(prefix="clb-iso-"))
    base.chmod(0o755)
    running: list[Nginx] = []

    def start(state: DesiredState) -> Path:
        prefix = base / "nginx"
        write_prefix(compile_nginx(state, prefix=str(prefix)), prefix)
        result = check_config(prefix)
        assert result.ok, result.output
        n = Nginx(prefix)
        n.start()
        running.append(n)
        return prefix

    yield start
    for n in running:
        n.stop()
    shutil.rmtree(base, ignore_errors=True)


def tenant_a(backend) -> dict:
    acl = {"AclId": "acl-a", "AclEntries": [{"Entry": "127.0.30.0/24"}]}
    rules = [rule("a", "www.a.test", "/", [backend.target()], DefaultServer=True)]
    lis = listener("a-http", "HTTP", PORT, rules, AclStatus="on", AclId="acl-a", AclType="white")
    return load_balancer("lb-a", VIP_A, [lis], Acls=[acl])


def test_acl_holds_next_to_hostile_regex_documents(run_state, backends) -> None:
    a_backend, b_backend = backends("a"), backends("b")
    hostile = [
        hostile_lb(domain=p) | {"LoadBalancerId": f"lb-h{i}"} for i, p in enumerate(NAMED_CAPTURES + CATASTROPHIC)
    ]
    accepted = [
        rule(f"r{i}", d, u, [b_backend.target()], DefaultServer=i == 0)
        for i, (d, u) in enumerate(zip(ACCEPTED_DOMAINS, ACCEPTED_URLS, strict=True))
    ]
    b = load_balancer("lb-b", "127.0.10.82", [listener("b-http", "HTTP", PORT, accepted)])
    docs = [("a", tenant_a(a_backend)), ("b", b), *((f"h{i}", h) for i, h in enumerate(hostile))]
    state = validate_documents(docs)
    assert set(state.load_balancers()) == {"lb-a", "lb-b"}
    run_state(state)
    assert http_get(VIP_A, PORT, "www.a.test", source="127.0.31.5").status == 403
    assert http_get(VIP_A, PORT, "evil.test", source="127.0.31.5").status == 403
    allowed = http_get(VIP_A, PORT, "www.a.test", source="127.0.30.5")
    assert allowed.status == 200 and allowed.backend == "a"
    # The accepted regexes route as nginx compiles them: server_name caselessly.
    assert http_get("127.0.10.82", PORT, "API.r.test", "/x/y/end").backend == "b"
    assert http_get("127.0.10.82", PORT, "a.b.deep.r.test", "/x.JPG").backend == "b"
    assert http_get("127.0.10.82", PORT, "w7.r.test", "/api/v.php").backend == "b"


@pytest.mark.parametrize("vip", ["0.0.0.0", "::", "::ffff:127.0.10.81"])
def test_a_wildcard_vip_is_refused_and_captures_nothing(run_state, backends, vip: str) -> None:
    a_backend = backends("a")
    wildcard = load_balancer(
        "lb-w",
        vip,
        [listener("w", "HTTP", PORT, [rule("w", "www.a.test", "/", [backends("w").target()], DefaultServer=True)])],
    )
    state = validate_documents([("a", tenant_a(a_backend)), ("w", wildcard)])
    assert set(state.load_balancers()) == {"lb-a"}
    assert any(i.path.startswith("lb-w/LoadBalancerVips") for i in state.issues)
    run_state(state)
    assert http_get(VIP_A, PORT, "www.a.test", source="127.0.30.5").backend == "a"
    with pytest.raises(OSError), socket.create_connection(("127.0.10.99", PORT), timeout=5):
        pass  # nothing listens on any other address


def test_what_validate_accepts_passes_nginx_t(run_state, backends) -> None:
    b = backends("b")
    rules = [
        rule(f"r{i}{j}", d, u, [b.target()], DefaultServer=i == j == 0)
        for i, d in enumerate(ACCEPTED_DOMAINS)
        for j, u in enumerate(ACCEPTED_URLS)
    ]
    state = validate_documents([("b", load_balancer("lb-b", "127.0.10.83", [listener("b", "HTTP", PORT, rules)]))])
    assert state.ok, state.issues
    run_state(state)
    assert http_get("127.0.10.83", PORT, "w12.r.test", "/pic.GIF").backend == "b"
