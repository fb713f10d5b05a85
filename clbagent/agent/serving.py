"""The serving view of a desired state, worked out once per validation result.

An apply needs the served load balancers three times (the nginx units, the IPVS plan, the VIPs).
Deriving them from the whole state each time costs as much as the state is large, even for a
one-document edit. The incremental validator hands back the very same result object for every
document it did not validate again, so the view of each document is kept with it (by identity,
and by its issue count, since an issue added later may quarantine it), and the IPVS plan is
computed again only when a load balancer with TCP/UDP listeners changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clbagent.l4 import IpvsPlan, plan_ipvs
from clbagent.model import LoadBalancer
from clbagent.validate import DesiredState, DocumentResult, serving

_PlanKey = tuple[tuple[DocumentResult, ...], frozenset[str]]


@dataclass(frozen=True)
class _Entry:
    doc: DocumentResult
    issues: int
    lb: LoadBalancer | None  # None: not served (not a valid load balancer)
    vips: tuple[str, ...]
    l4: bool  # has TCP/UDP listeners (the IPVS plan depends on it)
    l7: bool  # has HTTP/HTTPS listeners (an nginx unit)


@dataclass(frozen=True)
class Serving:
    """What one state serves: load balancers by ID (in document order), VIP → load balancer."""

    state: DesiredState
    load_balancers: dict[str, LoadBalancer]
    l7: list[tuple[DocumentResult, LoadBalancer]]  # those with HTTP/HTTPS listeners: one nginx unit each
    vips: dict[str, str]
    l4_docs: tuple[DocumentResult, ...]


class ServingView:
    """The serving views of the states an engine applies, with what they share kept across calls."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._plan_key: _PlanKey | None = None
        self._plan = IpvsPlan()

    def of(self, state: DesiredState) -> Serving:
        entries: dict[str, _Entry] = {}
        lbs: dict[str, LoadBalancer] = {}
        vips: dict[str, str] = {}
        l4: list[DocumentResult] = []
        l7: list[tuple[DocumentResult, LoadBalancer]] = []
        for doc in state.documents:
            e = self._entries.get(doc.source)
            if e is None or e.doc is not doc or e.issues != len(doc.issues):
                e = _entry(doc)
            entries[doc.source] = e
            if e.lb is None:
                continue
            lbs[doc.root] = e.lb
            for v in e.vips:
                vips[v] = doc.root
            if e.l4:
                l4.append(doc)
            if e.l7:
                l7.append((doc, e.lb))
        self._entries = entries
        return Serving(state, lbs, l7, vips, tuple(l4))

    def plan(self, view: Serving, down: frozenset[str] = frozenset()) -> IpvsPlan:
        """The IPVS plan of a view: planned again only when its TCP/UDP load balancers changed."""
        key = (view.l4_docs, down)
        if self._plan_key is None or not _same(self._plan_key, key):
            state = view.state
            self._plan = plan_ipvs(DesiredState(list(view.l4_docs), state.catalog, state.settings), down)
            self._plan_key = key
        return replace(self._plan, vips=frozenset(view.vips))


def _entry(doc: DocumentResult) -> _Entry:
    lb = serving(doc)
    if lb is None:
        return _Entry(doc, len(doc.issues), None, (), False, False)
    l4 = any(lis.is_l4 for lis in lb.listeners)
    l7 = not all(lis.is_l4 for lis in lb.listeners)
    return _Entry(doc, len(doc.issues), lb, tuple(str(v) for v in lb.load_balancer_vips), l4, l7)


def _same(a: _PlanKey, b: _PlanKey) -> bool:
    return a[1] == b[1] and len(a[0]) == len(b[0]) and all(x is y for x, y in zip(a[0], b[0], strict=True))
