"""Validation whose cost follows the change, not the size of the desired state.

A one-document edit among a thousand must not re-validate a thousand documents. The source hands
back the same raw object for a file that did not change, so a document is *changed* when its raw
object is not the one validated last time. Only these are validated again, together with:

- every document that defines shared objects (certificates, personalized configs, TLS policies,
  ACLs), so that references resolve against the complete catalog; when one of those changed, the
  whole state is validated again (a certificate rotation may concern any load balancer);
- every document that shares a load balancer ID or a VIP with a changed or removed one, and so on
  transitively (a document validated again must meet every party of its own cross-document rules:
  unique IDs, one owner per VIP and port).

The others keep their previous verdict: nothing they depend on changed. ``full=True`` (the periodic
resync) validates everything again, e.g. for certificate expiry.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from clbagent.settings import Settings
from clbagent.validate import DesiredState, DocumentResult, validate_documents

SHARED_KEYS = {"certificates", "customizedconfigs", "tlspolicies", "acls"}
LB_KEYS = ("LoadBalancerId", "loadBalancerId")
VIP_KEYS = ("LoadBalancerVips", "loadBalancerVips")


class IncrementalValidator:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: dict[str, tuple[Any, DocumentResult]] = {}
        self._state: DesiredState | None = None
        self.last_validated = 0
        self.catalog_version = 0  # moves whenever the shared objects may have changed
        self._keys: dict[str, tuple[Any, tuple[bool, set[str]]]] = {}
        self.fresh: list[DocumentResult] = []  # the results the last call produced anew

    def validate(self, docs: list[tuple[str, Any]], full: bool = False) -> DesiredState:
        current = dict(docs)
        previous = self._cache
        changed = [s for s, raw in docs if s not in previous or previous[s][0] is not raw]
        removed = [s for s in previous if s not in current]
        shared = {s for s, raw in docs if self._keys_of(s, raw)[0]}
        shared_changed = any(s in shared or _defines_shared(previous[s][0]) for s in changed if s in previous) or any(
            _defines_shared(previous[s][0]) for s in removed
        )
        if full or self._state is None or shared_changed or len(docs) != len(current):
            state = validate_documents(docs, self.settings)
            self.last_validated = len(docs)
            self.catalog_version += 1
        elif not changed and not removed:
            self.fresh = []
            return self._state
        else:
            keys = {s: self._keys_of(s, raw)[1] for s, raw in docs}
            old = [_keys(previous[s][0]) for s in removed + changed if s in previous]
            subset = _closure(keys, changed, old) | shared
            partial = validate_documents([(s, raw) for s, raw in docs if s in subset], self.settings)
            fresh = {d.source: d for d in partial.documents}
            merged = [fresh[s] if s in fresh else previous[s][1] for s, _ in docs]
            state = DesiredState(merged, partial.catalog, self.settings)
            self.last_validated = len(subset)
        self.fresh = [d for d in state.documents if previous.get(d.source, (None, None))[1] is not d]
        self._cache = {d.source: (current[d.source], d) for d in state.documents if d.source in current}
        self._keys = {s: v for s, v in self._keys.items() if s in current}
        self._state = state
        return state

    @property
    def state(self) -> DesiredState | None:
        """The state the last call returned."""
        return self._state

    def _keys_of(self, source: str, raw: Any) -> tuple[bool, set[str]]:
        """Whether a document defines shared objects, and its cross-document keys (once per object)."""
        cached = self._keys.get(source)
        if cached is None or cached[0] is not raw:
            cached = (raw, (_defines_shared(raw), _keys(raw)))
            self._keys[source] = cached
        return cached[1]


def _closure(keys_of: dict[str, set[str]], changed: list[str], old: list[set[str]]) -> set[str]:
    """The changed documents and every document linked to them by a shared ID or VIP."""
    by_key: dict[str, list[str]] = {}
    for source, keys in keys_of.items():
        for key in keys:
            by_key.setdefault(key, []).append(source)
    pending = [k for keys in old for k in keys] + [k for s in changed for k in keys_of[s]]
    subset, seen = set(changed), set()
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        for source in by_key.get(key, ()):
            if source not in subset:
                subset.add(source)
                pending.extend(keys_of[source])
    return subset


def _keys(raw: Any) -> set[str]:
    """What links a document to others in the cross-document rules: its ID and its VIPs."""
    ident = _lb_id(raw)
    return {f"vip:{v}" for v in _vips(raw)} | ({f"id:{ident}"} if ident else set())


def _defines_shared(raw: Any) -> bool:
    if not isinstance(raw, dict) or _lb_id(raw) is None:
        return True
    return any(str(k).lower() in SHARED_KEYS and v for k, v in raw.items())


def _lb_id(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return None
    value = next((raw[k] for k in LB_KEYS if k in raw), None)
    return value if isinstance(value, str) else None


def _vips(raw: Any) -> set[str]:
    values = next((raw[k] for k in VIP_KEYS if k in raw), None) if isinstance(raw, dict) else None
    out: set[str] = set()
    for v in values if isinstance(values, list) else []:
        try:
            out.add(str(ip_address(str(v))))
        except ValueError:
            out.add(str(v))
    return out
