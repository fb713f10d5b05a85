"""Property tests of the model: valid documents survive a YAML/JSON round trip unchanged; random
mutations of a valid document either validate or produce errors with a code and a path, never an
exception."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clbagent.loader import load
from clbagent.model import LoadBalancer
from clbagent.settings import RESERVED_PORTS
from clbagent.validate import validate_documents
from clbagent.validate.certs import _layout, layout_by_line
from tests.helpers import FIXTURES

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.builds(lambda parts: ".".join(parts), st.lists(label, min_size=2, max_size=4))
paths = st.from_regex(r"/([A-Za-z0-9._=?-]{1,12}/?){0,3}", fullmatch=True)
urls = st.one_of(
    paths,
    paths.map(lambda p: "=" + p),
    paths.map(lambda p: "^~" + p),
    st.sampled_from(["~\\.(gif|jpg)$", "~*^/api/v[0-9]+/", "~/x[a-z]+$"]),
)
ips = st.integers(1, 254).map(lambda n: f"127.0.60.{n}")
targets = st.lists(
    st.fixed_dictionaries({"EniIp": ips, "Port": st.integers(1, 65535), "Weight": st.integers(0, 100)}),
    max_size=4,
    unique_by=lambda t: (t["EniIp"], t["Port"]),
)
health = st.fixed_dictionaries(
    {},
    optional={
        "HealthSwitch": st.integers(0, 1),
        "IntervalTime": st.integers(5, 300),
        "HealthNum": st.integers(2, 10),
        "UnHealthNum": st.integers(2, 10),
        "HttpCode": st.integers(1, 31),
        "HttpCheckPath": paths,
        "HttpCheckMethod": st.sampled_from(["GET", "HEAD"]),
    },
)


@st.composite
def load_balancers(draw: Any) -> dict[str, Any]:
    free = st.integers(1025, 19999).filter(lambda p: p not in RESERVED_PORTS)
    ports = draw(st.lists(free, min_size=1, max_size=4, unique=True))
    listeners = []
    for i, port in enumerate(ports):
        proto = draw(st.sampled_from(["HTTP", "TCP", "UDP"]))
        lis: dict[str, Any] = {"ListenerId": f"lbl-{i}", "Protocol": proto, "Port": port}
        if proto == "HTTP":
            keys = draw(
                st.lists(
                    st.tuples(domains, urls),
                    min_size=1,
                    max_size=4,
                    unique_by=lambda t: (t[0], t[1].removeprefix("^~")),
                )
            )
            lis["Rules"] = [
                {
                    "LocationId": f"loc-{i}-{j}",
                    "Domain": d,
                    "Url": u,
                    "Targets": draw(targets),
                    "HealthCheck": draw(health),
                    "Scheduler": draw(st.sampled_from(["WRR", "IP_HASH"])),
                    "HttpGzip": draw(st.booleans()),
                }
                for j, (d, u) in enumerate(keys)
            ]
            lis["Rules"][0]["DefaultServer"] = True
        else:
            lis["Targets"] = draw(targets)
            lis["Scheduler"] = draw(st.sampled_from(["WRR", "LEAST_CONN"]))
        listeners.append(lis)
    return {
        "LoadBalancerId": draw(st.from_regex(r"lb-[a-z0-9]{1,12}", fullmatch=True)),
        "LoadBalancerVips": ["127.0.59.1"],
        "Listeners": listeners,
    }


def _model(raw: dict[str, Any]) -> LoadBalancer:
    state = validate_documents([("doc", raw)])
    assert state.ok, [str(i) for i in state.issues]
    lb = state.documents[0].load_balancer
    assert lb is not None
    return lb


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(load_balancers())
def test_valid_documents_round_trip(raw: dict[str, Any]) -> None:
    lb = _model(raw)
    dumped = lb.model_dump(mode="json", by_alias=True, exclude_none=True)
    via_yaml = yaml.safe_load(yaml.safe_dump(dumped))
    via_json = json.loads(json.dumps(dumped))
    assert _model(via_yaml) == lb
    assert _model(via_json) == lb
    assert _model(via_yaml).model_dump(mode="json", by_alias=True, exclude_none=True) == dumped


def _full_example() -> list[tuple[str, Any]]:
    docs, issues = load([FIXTURES / "examples" / "full.yaml"], FIXTURES / "certs")
    assert not issues
    return docs


FULL = _full_example()
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["~", "*", "{", ";", "$host", "\n", "\x00", "../../etc", "é", "a" * 300]),
)


def _locations(node: Any, here: tuple = ()) -> list[tuple]:
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _locations(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _locations(v, (*here, i))
    return out


@st.composite
def mutated(draw: Any) -> list[tuple[str, Any]]:
    docs = copy.deepcopy(FULL)
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(docs) - 1))
        raw = docs[index][1]
        places = _locations(raw)[1:]
        if not places:
            continue
        where = draw(st.sampled_from(places))
        parent = raw
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["set", "delete", "extra"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(junk)
        else:
            parent[where[-1]] = draw(junk)
    return docs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_validate_or_report_with_path(docs: list[tuple[str, Any]]) -> None:
    state = validate_documents(docs)
    for issue in state.issues:
        assert issue.code and issue.message
        assert issue.path and "<bound method" not in issue.path
    for doc in state.documents:
        assert doc.ok or any(i.severity == "error" for i in doc.issues) or doc.model is None


PEM_LINES = st.sampled_from(
    [
        "-----BEGIN CERTIFICATE-----",
        "-----END CERTIFICATE-----",
        "-----BEGIN PRIVATE KEY-----",
        "-----END PRIVATE KEY-----",
        "-----BEGIN X-----",
        "Proc-Type: 4,ENCRYPTED",
        "",
        "A" * 64,
        "B" * 63,
        "C" * 65,
        "QUJD==",
        "not base64!",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(PEM_LINES, max_size=14), st.sampled_from(["\n", "\r\n"]))
def test_pem_layout_fast_path_agrees_with_the_line_analysis(lines: list[str], newline: str) -> None:
    """The one-match acceptance of well-formed PEM never accepts what the line analysis refuses."""
    text = newline.join(lines)
    labels = ("CERTIFICATE", "PRIVATE KEY")
    body = text.replace("\r\n", "\n").strip("\n")
    assert _layout(text, labels, "pem") == layout_by_line(body, labels, "pem")
