"""Building desired states for the L4 tests from plain listener dictionaries."""

from __future__ import annotations

from typing import Any

from clbagent.l4 import IpvsPlan, plan_ipvs
from clbagent.validate import DesiredState, validate_documents


def lb_doc(
    listeners: list[dict[str, Any]], lb_id: str = "lb-l4", vips: tuple[str, ...] = ("10.99.0.1",), **extra: Any
) -> dict[str, Any]:
    return {"LoadBalancerId": lb_id, "LoadBalancerVips": list(vips), "Listeners": listeners, **extra}


def tcp(port: int, targets: list[tuple[str, int, int]], protocol: str = "TCP", **extra: Any) -> dict[str, Any]:
    return {
        "ListenerId": f"lbl-{protocol.lower()}-{port}",
        "Protocol": protocol,
        "Port": port,
        "Targets": [{"EniIp": ip, "Port": p, "Weight": w} for ip, p, w in targets],
        **extra,
    }


def state_of(*docs: dict[str, Any]) -> DesiredState:
    state = validate_documents([(f"doc{i}", d) for i, d in enumerate(docs)])
    assert state.ok, [str(i) for i in state.issues]
    return state


def plan_of(*docs: dict[str, Any], down: frozenset[str] = frozenset()) -> IpvsPlan:
    return plan_ipvs(state_of(*docs), down)
