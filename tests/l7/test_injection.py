"""Injection safety: hostile text in every user-controlled slot is rejected by validation or rendered
inert — crossplane parses the output into exactly the expected block structure and ``nginx -t``
accepts it."""

from __future__ import annotations

import copy
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crossplane
import pytest
from crossplane.lexer import _lex_file_object
from hypothesis import given
from hypothesis import strategies as st

from clbagent.l7 import UnsafeTextError, compile_nginx, quote, write_prefix
from clbagent.nginx.process import check_config
from clbagent.validate import validate_documents
from tests.l7.conftest import NGINX_AVAILABLE, listener, load_balancer, rule

HOSTILE = [
    "a;b",
    "a{b",
    "a}b",
    'a"b',
    "a'b",
    "a#b",
    "a$b",
    "${host}",
    "a\\b",
    "a b",
    "a\tb",
    "a\nb",
    "a\rb",
    "a\x00b",
    "x" * 5000,
    "ünïcødé.test",
    "www.测试.com",
    "}; server { listen 127.0.10.99:81; } #",
    '"; return 200 pwned; "',
    "~^(a|b)$; include /etc/passwd",
    "/ok\n}\nserver {",
    "*.a.test;",
    "/path;rm",
    "'",
    "\\",
]


def base(pki) -> dict[str, Any]:
    conf = {"ConfigId": "conf-x", "ConfigContent": "\n".join(CONF_LINES.values())}
    http = listener(
        "lh",
        "HTTP",
        18300,
        [rule("r1", "www.a.test", "/", [{"EniIp": "127.0.20.1", "Port": 9001}], DefaultServer=True)],
    )
    https_rule = rule("r2", "www.a.test", "/app", [{"EniIp": "127.0.20.1", "Port": 9001}], DefaultServer=True)
    https = listener("ls", "HTTPS", 18301, [https_rule], Certificate={"SSLMode": "UNIDIRECTIONAL", "CertId": "cert-a"})
    return load_balancer(
        "lb-inj",
        "127.0.10.9",
        [http, https],
        LoadBalancerName="inj",
        ConfigId="conf-x",
        CustomizedConfigs=[conf],
        Certificates=pki.certificates(),
        Acls=[{"AclId": "acl-x", "AclEntries": [{"Entry": "10.0.0.0/8", "Comment": "ok"}]}],
    )


CONF_LINES = {
    "add_header": "add_header X-A ok;",
    "more_set_headers": 'more_set_headers "X-B:ok";',
    "error_page": "error_page 404 /e.html;",
    "proxy_set_header": "proxy_set_header X-Uri $uri;",
}


def _set_conf(doc: dict, line: str) -> None:
    """Replace the reference line of the same directive, so the expected structure is unchanged."""
    name = line.split()[0]
    doc["CustomizedConfigs"][0]["ConfigContent"] = "\n".join({**CONF_LINES, name: line}.values())


def _cert_id(doc: dict, v: str) -> None:
    doc["Certificates"][0]["CertId"] = v
    doc["Listeners"][1]["Certificate"]["CertId"] = v


SLOTS: dict[str, Callable[[dict, str], None]] = {
    "domain": lambda d, v: d["Listeners"][0]["Rules"][0].__setitem__("Domain", v),
    "regex domain": lambda d, v: d["Listeners"][0]["Rules"][0].__setitem__("Domain", "~" + v),
    "url": lambda d, v: d["Listeners"][1]["Rules"][0].__setitem__("Url", "/" + v),
    "regex url": lambda d, v: d["Listeners"][1]["Rules"][0].__setitem__("Url", "~*" + v),
    "add_header raw": lambda d, v: _set_conf(d, f"add_header X-A {v};"),
    "add_header quoted": lambda d, v: _set_conf(d, f'add_header X-A "{v}";'),
    "more_set_headers": lambda d, v: _set_conf(d, f'more_set_headers "X-B:{v}";'),
    "error_page": lambda d, v: _set_conf(d, f"error_page 404 /{v};"),
    "proxy_set_header": lambda d, v: _set_conf(d, f"proxy_set_header X-Uri {v};"),
    "certificate id": _cert_id,
    "certificate alias": lambda d, v: d["Certificates"][0].__setitem__("CertAlias", v),
    "load balancer id": lambda d, v: d.__setitem__("LoadBalancerId", v),
    "load balancer name": lambda d, v: d.__setitem__("LoadBalancerName", v),
    "listener name": lambda d, v: d["Listeners"][0].__setitem__("ListenerName", v),
    "acl comment": lambda d, v: d["Acls"][0]["AclEntries"][0].__setitem__("Comment", v),
    "health path": lambda d, v: d["Listeners"][0]["Rules"][0].__setitem__("HealthCheck", {"HttpCheckPath": "/" + v}),
}


def shape(block: list[dict]) -> list:
    """The directive names of a parsed config, nested like its blocks (arguments left out)."""
    return [(d["directive"], shape(d["block"]) if "block" in d else None) for d in block]


def parsed_shape(cfg, prefix: Path) -> list:
    write_prefix(cfg, prefix)
    result = crossplane.parse(str(prefix / "nginx.conf"), combine=True)
    assert result["status"] == "ok", result["errors"]
    return shape(result["config"][0]["parsed"])


def compiled(doc: dict, prefix: Path):
    state = validate_documents([("doc", doc)])
    if not state.ok:
        return None
    cfg = compile_nginx(state, prefix=str(prefix))
    if any(w.severity == "error" for w in cfg.warnings):
        return None  # refused by the quoting function at compile time (also a rejection)
    return cfg


@pytest.mark.nginx
def test_hostile_inputs_are_rejected_or_inert(pki):
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    work = Path(tempfile.mkdtemp(prefix="clb-inj-"))
    reference = compiled(base(pki), work / "ref")
    assert reference is not None
    expected = parsed_shape(reference, work / "ref")
    assert check_config(work / "ref").ok
    rejected = accepted = 0
    for slot, apply in SLOTS.items():
        for i, value in enumerate(HOSTILE):
            doc = copy.deepcopy(base(pki))
            apply(doc, value)
            prefix = work / f"{slot.replace(' ', '_')}-{i}"
            cfg = compiled(doc, prefix)
            if cfg is None:
                rejected += 1
                continue
            accepted += 1
            assert parsed_shape(cfg, prefix) == expected, (slot, value)
            result = check_config(prefix)
            assert result.ok, (slot, value, result.output)
    assert rejected > 0 and accepted > 0  # both paths exercised


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=200))
def test_quote_is_always_one_token(text):
    tokens = [t for t, _, _ in _lex_file_object(io.StringIO(f"d {quote(text)};"))]
    assert tokens[0] == "d" and tokens[-1] == ";" and len(tokens) == 3


@pytest.mark.parametrize("bad", ["a\nb", "a\x00b", "a\rb", "x" * 10000])
def test_quote_refuses_what_cannot_be_inert(bad):
    with pytest.raises(UnsafeTextError):
        quote(bad)
