"""Validation of a desired state: every document, every object, every cross reference.

All errors of a document are reported together. A document with errors is quarantined: it is
reported and left out, and the other load balancers carry on (the agent keeps serving the last
good version of the quarantined one).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clbagent.errors import Code, Issue
from clbagent.model import Certificate, LoadBalancer, SharedObjects
from clbagent.personalized_config import parse_customized
from clbagent.settings import DEFAULT_SETTINGS, Settings
from clbagent.tls_policies import CIPHER_TOKENS, NAMED_POLICIES
from clbagent.validate.catalog import Catalog
from clbagent.validate.certs import check_certificate, load_chain, now_utc
from clbagent.validate.listeners import Findings, check_listeners, check_vips, port_family
from clbagent.validate.references import check_references
from clbagent.validate.structure import validate_structure

TLS13_SUITES = {s for p in NAMED_POLICIES.values() for s in p.tls13_suites}
IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class DocumentResult:
    """One input document and what validation found in it."""

    source: str
    root: str
    model: LoadBalancer | SharedObjects | None
    issues: list[Issue] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.model is not None and not any(i.severity == "error" for i in self.issues)

    @property
    def load_balancer(self) -> LoadBalancer | None:
        return self.model if isinstance(self.model, LoadBalancer) else None


@dataclass
class DesiredState:
    documents: list[DocumentResult]
    catalog: Catalog
    settings: Settings

    @property
    def issues(self) -> list[Issue]:
        return [i for d in self.documents for i in d.issues]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.documents)

    def stable_until(self, now: datetime) -> datetime | None:
        """When validating the same input may first give another answer (after ``now``): a
        certificate seen here expires or enters its warning window. None: not before the input changes."""
        days = timedelta(days=self.settings.cert_expiry_warning_days)
        ends = [end for d in self.documents if d.model is not None for end in _expiries(d.model.certificates)]
        return min((t for end in ends for t in (end - days, end) if t > now), default=None)

    def load_balancers(self) -> dict[str, LoadBalancer]:
        """The valid load balancers by ID, as they are to be served: quarantined documents and
        stopped listeners (with the redirects that involve them) are left out."""
        return {d.root: lb for d in self.documents if (lb := serving(d)) is not None}


def _expiries(certificates: list[Certificate]) -> list[datetime]:
    """The expiry of each certificate's leaf (of those that parse: the others' errors do not age)."""
    out = []
    for cert in certificates:
        try:
            out.append(load_chain(cert.cert_content or "")[0].not_valid_after_utc)
        except (ValueError, IndexError):
            continue
    return out


def serving(doc: DocumentResult) -> LoadBalancer | None:
    """One document's load balancer as it is to be served (see ``DesiredState.load_balancers``)."""
    lb = doc.load_balancer
    return _serving(lb) if lb is not None and doc.ok else None


def _serving(lb: LoadBalancer) -> LoadBalancer:
    stopped = [lis for lis in lb.listeners if lis.listener_status == "stopped"]
    if not stopped:
        return lb
    gone_rules = {r.id for lis in stopped for r in lis.rules or []}
    gone_listeners = {lis.id for lis in stopped}
    return lb.model_copy(
        update={
            "listeners": [lis for lis in lb.listeners if lis not in stopped],
            "rewrites": [rw for rw in lb.rewrites if not {rw.source_location_id, rw.target_location_id} & gone_rules],
            "auto_rewrites": [ar for ar in lb.auto_rewrites if ar.listener_id not in gone_listeners],
        }
    )


def _root(raw: Any, source: str) -> str:
    ident = (raw.get("LoadBalancerId") or raw.get("loadBalancerId")) if isinstance(raw, dict) else None
    return ident if isinstance(ident, str) and IDENT.match(ident) else source


def _structure(source: str, raw: Any, settings: Settings) -> DocumentResult:
    root = _root(raw, source)
    if not isinstance(raw, dict):
        return DocumentResult(source, root, None, [Issue(root, Code.FORMAT_ERROR, "a document must be a mapping")])
    is_lb = {"LoadBalancerId", "loadBalancerId", "Listeners", "LoadBalancerVips"} & raw.keys()
    model_type = LoadBalancer if is_lb else SharedObjects
    model, issues, pruned = validate_structure(model_type, raw, root, settings)
    return DocumentResult(source, root, model, issues, pruned)


def _check_shared(doc: DocumentResult, catalog: Catalog, settings: Settings, now: datetime) -> None:
    """Validate the shared objects a document defines; certificates with errors are noted in the
    catalog so that every load balancer referring to one is refused too."""
    assert doc.model is not None
    f = Findings(doc.root)
    for cert in doc.model.certificates:
        found = check_certificate(cert, doc.root, now, settings.cert_expiry_warning_days)
        f.issues.extend(found)
        if any(i.severity == "error" for i in found):
            catalog.invalid_certificates.add(cert.cert_id)
    for conf in doc.model.customized_configs:
        _, problems = parse_customized(conf.config_content)
        for code, message in problems:
            f.add(conf.at("ConfigContent"), code, message)
    for policy in doc.model.tls_policies:
        if policy.policy_id in NAMED_POLICIES:
            f.add(
                policy.at("TLSCipherPolicyId"), Code.DUPLICATE, f"{policy.policy_id} is the name of a built-in policy"
            )
        for i, cipher in enumerate(policy.ciphers):
            if cipher not in CIPHER_TOKENS and cipher not in TLS13_SUITES:
                f.add(f"{policy.at('Ciphers')}[{i}]", Code.INVALID_VALUE, f"cipher {cipher!r:.60} is not allowed")
    for acl in doc.model.acls:
        seen: set[str] = set()
        for entry in acl.acl_entries:
            text = str(entry.entry)
            if text in seen:
                f.add(entry.at("Entry"), Code.ALI_DUPLICATED_ACL_ENTRY, f"entry {text} is listed twice")
            seen.add(text)
            if (entry.entry.version == 6) != (acl.address_ip_version == "ipv6"):
                f.add(
                    entry.at("Entry"),
                    Code.ALI_IP_VERSION_CONFLICT,
                    f"entry {text} does not match the ACL's {acl.address_ip_version}",
                )
    doc.issues.extend(f.issues)


def _inline_certificates(doc: DocumentResult) -> list[Certificate]:
    """Inline PEM in a listener/rule ``Certificate`` becomes a certificate object with a CertId
    derived from its content, so that renderers only ever deal with CertIds."""
    lb = doc.load_balancer
    found: list[Certificate] = []
    if lb is None:
        return found
    for cert, path in lb.certificate_slots():
        if cert.cert_id is None and cert.cert_content:
            cert.cert_id = _inline_id(cert.cert_content)
            found.append(_inline(cert.cert_id, "SVR", cert.cert_content, cert.cert_key, path))
        if cert.cert_ca_id is None and cert.cert_ca_content:
            cert.cert_ca_id = _inline_id(cert.cert_ca_content)
            found.append(_inline(cert.cert_ca_id, "CA", cert.cert_ca_content, None, path))
    return found


def _inline_id(content: str) -> str:
    return "inline-" + hashlib.sha256(content.encode()).hexdigest()[:12]


def _inline(ident: str, kind: str, content: str, key: str | None, path: str) -> Certificate:
    cert = Certificate.model_validate({"CertId": ident, "CertType": kind, "CertContent": content, "CertKey": key})
    cert.doc_path_ = path
    return cert


def _cross_documents(docs: list[DocumentResult]) -> None:
    """Load balancer IDs are unique and no two load balancers listen on the same VIP and port; a
    clash is an error for every document involved, whatever the file order."""
    by_id: dict[str, list[DocumentResult]] = defaultdict(list)
    for doc in docs:
        if doc.load_balancer is not None:
            by_id[doc.load_balancer.id].append(doc)
    for ident, group in by_id.items():
        if len(group) > 1:
            for doc in group:
                others = ", ".join(d.source for d in group if d is not doc)[:200]
                doc.issues.append(
                    Issue(
                        f"{doc.root}/LoadBalancerId",
                        Code.DUPLICATE,
                        f"load balancer {ident} is also defined in {others}",
                    )
                )
    for (vip, _family), spans in _port_spans(docs).items():
        spans.sort(key=lambda s: s[0])
        reach: tuple[int, str] | None = None  # the furthest end so far, and its load balancer
        for start, end, lb_id, doc, path in spans:
            if reach is not None and start <= reach[0] and reach[1] != lb_id:
                _clash(doc, path, vip, start, reach[1])
                _clash_back(spans, start, end, lb_id, vip)
            if reach is None or end > reach[0]:
                reach = (end, lb_id)


PortSpan = tuple[int, int, str, DocumentResult, str]


def _port_spans(docs: list[DocumentResult]) -> dict[tuple[str, str], list[PortSpan]]:
    """Every (VIP, TCP/UDP) with the port spans load balancers listen on, the HTTP:80 listener an
    automatic redirect creates included."""
    out: dict[tuple[str, str], list[PortSpan]] = defaultdict(list)
    for doc in docs:
        lb = doc.load_balancer
        if lb is None or not doc.ok:
            continue
        spans = [
            (lis.port, lis.end_port or lis.port, port_family(lis.protocol), lis.at("Port")) for lis in lb.listeners
        ]
        if lb.auto_rewrites and not any(lis.port == 80 and lis.protocol != "UDP" for lis in lb.listeners):
            spans.append((80, 80, "tcp", "AutoRewrites"))
        for vip in lb.load_balancer_vips:
            for start, end, family, path in spans:
                out[(str(vip), family)].append((start, end, lb.id, doc, path))
    return out


def _clash(doc: DocumentResult, path: str, vip: str, port: int, other: str) -> None:
    issue = Issue(f"{doc.root}/{path}", Code.PORT_CHECK_FAILED, f"{vip}:{port} is also served by load balancer {other}")
    if issue not in doc.issues:
        doc.issues.append(issue)


def _clash_back(spans: list[PortSpan], start: int, end: int, lb_id: str, vip: str) -> None:
    """The earlier spans a late span overlaps get the error too (spans are sorted by start)."""
    for s_start, s_end, s_lb, s_doc, s_path in spans:
        if s_start > end:
            break
        if s_lb != lb_id and s_end >= start:
            _clash(s_doc, s_path, vip, max(start, s_start), lb_id)


def validate_documents(
    docs: list[tuple[str, Any]], settings: Settings = DEFAULT_SETTINGS, now: datetime | None = None
) -> DesiredState:
    """Validate raw documents (``(source, data)`` pairs) into a desired state."""
    now = now or now_utc()
    results = [_structure(source, raw, settings) for source, raw in docs]
    catalog = Catalog()
    for doc in results:
        if doc.model is None:
            continue
        inline = _inline_certificates(doc)
        if inline:
            doc.model.certificates.extend(inline)
        catalog.add(doc.model, doc.root)
        _check_shared(doc, catalog, settings, now)
    by_root = {d.root: d for d in results}
    for (kind, ident), defs in catalog.settle().items():
        for d in defs:
            others = sorted({o.root for o in defs if o.root != d.root}) or ["this document"]
            by_root[d.root].issues.append(
                Issue(
                    f"{d.root}/{d.path}",
                    Code.DUPLICATE,
                    f"{kind} {ident} is defined differently in {', '.join(others[:3])}; an ID belongs to one object",
                )
            )
    if len(catalog.customized_configs) > settings.max_customized_configs:
        results[0].issues.append(
            Issue(
                results[0].root, Code.LIMIT_EXCEEDED, f"at most {settings.max_customized_configs} personalized configs"
            )
        )
    for doc in results:
        lb = doc.load_balancer
        if lb is None:
            continue
        f = Findings(doc.root)
        check_vips(lb, settings, f)
        check_listeners(lb, settings, f)
        check_references(lb, catalog, settings, f)
        known = set(doc.issues)
        hidden = _pruned_ancestors(doc.pruned)
        for issue in f.issues:
            if issue.path not in hidden and issue not in known:
                known.add(issue)
                doc.issues.append(issue)
    _cross_documents(results)
    for doc in results:
        doc.issues.sort(key=lambda i: (i.severity != "error", i.path, i.code))
    return DesiredState(results, catalog, settings)


def _pruned_ancestors(pruned: list[str]) -> set[str]:
    """Paths above an element left out: a cross-object finding there may only be its side effect."""
    out: set[str] = set()
    for path in pruned:
        out.update(path[:i] for i, c in enumerate(path) if c in "/[" and i)
    return out


def check_transition(previous: DesiredState, current: DesiredState) -> list[Issue]:
    """Rules about changes rather than states: SNI, once on, cannot be switched off (R15)."""
    issues: list[Issue] = []
    before = previous.load_balancers()
    for doc in current.documents:
        lb, old = doc.load_balancer, before.get(doc.root)
        if lb is None or old is None:
            continue
        old_sni = {lis.id for lis in old.listeners if lis.sni}
        for lis in lb.listeners:
            if lis.id in old_sni and not lis.sni:
                issue = Issue(
                    f"{doc.root}/{lis.at('SniSwitch')}",
                    Code.INVALID_PARAMETER,
                    f"SNI is on for listener {lis.id} and cannot be switched off",
                )
                doc.issues.append(issue)
                issues.append(issue)
    return issues
