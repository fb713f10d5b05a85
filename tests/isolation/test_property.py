"""Property: for random valid multi-tenant states, adding a hostile document B (any case of the
corpus, or random junk under B's own ID and VIP) leaves every other load balancer's rendered
file exactly as it was."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clbagent.l7 import compile_nginx, names
from clbagent.validate import validate_documents
from tests.isolation.corpus import EVIL, all_cases
from tests.test_properties import junk, load_balancers

HOSTILE = [c.doc for c in all_cases() if c.name != "targets-25000"]


@st.composite
def tenants(draw: Any) -> list[dict[str, Any]]:
    """Two to three valid load balancers, each on its own VIP."""
    out = []
    for i, lb in enumerate(
        draw(st.lists(load_balancers(), min_size=2, max_size=3, unique_by=lambda d: d["LoadBalancerId"]))
    ):
        lb = dict(lb, LoadBalancerVips=[f"127.0.59.{i + 1}"])
        out.append(lb)
    return out


@st.composite
def hostile(draw: Any) -> dict[str, Any]:
    """A corpus document, possibly with one field replaced by junk; always under its own ID."""
    doc = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = draw(junk) if key != "LoadBalancerId" else EVIL
    return doc


def rendered(docs: list[dict[str, Any]]) -> dict[str, str]:
    state = validate_documents([(f"doc{i}", d) for i, d in enumerate(docs)])
    return compile_nginx(state, prefix="/tmp/clb-property").files


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tenants(), hostile())
def test_a_hostile_document_changes_no_other_load_balancer(docs: list[dict[str, Any]], evil: dict[str, Any]) -> None:
    before = rendered(docs)
    after = rendered([*docs, evil])
    for lb in docs:
        name = names.lb_file(lb["LoadBalancerId"])
        assert after.get(name) == before.get(name), lb["LoadBalancerId"]
    assert {k: v for k, v in after.items() if k != names.lb_file(EVIL)} == before
