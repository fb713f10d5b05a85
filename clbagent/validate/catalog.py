"""The objects load balancers reference by ID, gathered from every document of a desired state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clbagent.model import Acl, Certificate, CustomizedConfig, SharedObjects, TLSPolicy

KINDS = (
    ("certificate", "certificates", "cert_id"),
    ("customized config", "customized_configs", "config_id"),
    ("TLS policy", "tls_policies", "policy_id"),
    ("ACL", "acls", "acl_id"),
)

FILE_NAMES = {"cert_file", "cert_key_file"}  # the same content may be read from different paths


@dataclass
class Definition:
    """One definition of a shared object: which document, where in it, and the object."""

    root: str
    path: str
    item: Any

    def content(self) -> Any:
        """What two definitions of one ID must agree on (dumped only for IDs defined twice)."""
        return self.item.model_dump(exclude=FILE_NAMES)


@dataclass
class Catalog:
    """Certificates, personalized configs, TLS policies and ACLs by ID, with where each was defined.

    An ID defined twice with different content belongs to nobody: every defining document gets an
    error whatever the file order (no squatting), and references to it are refused."""

    certificates: dict[str, Certificate] = field(default_factory=dict)
    customized_configs: dict[str, CustomizedConfig] = field(default_factory=dict)
    tls_policies: dict[str, TLSPolicy] = field(default_factory=dict)
    acls: dict[str, Acl] = field(default_factory=dict)
    invalid_certificates: set[str] = field(default_factory=set)  # defined, but with errors
    where: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, id) -> root of its document
    conflicts: dict[tuple[str, str], list[Definition]] = field(default_factory=dict)
    _seen: dict[tuple[str, str], list[Definition]] = field(default_factory=dict, repr=False)

    def add(self, doc: SharedObjects, root: str) -> None:
        """Add a document's objects; conflicts are found by :meth:`settle` once all are added."""
        for kind, table_name, key in KINDS:
            table = getattr(self, table_name)
            for item in getattr(doc, table_name):
                ident = getattr(item, key)
                defs = self._seen.setdefault((kind, ident), [])
                defs.append(Definition(root, item.path, item))
                if len(defs) == 1:
                    table[ident] = item
                    self.where[(kind, ident)] = root

    def settle(self) -> dict[tuple[str, str], list[Definition]]:
        """Take every ID defined with different contents out of the catalog; returns them."""
        for (kind, ident), defs in self._seen.items():
            if len(defs) > 1 and any(d.content() != defs[0].content() for d in defs[1:]):
                self.conflicts[(kind, ident)] = defs
                table_name = next(t for k, t, _ in KINDS if k == kind)
                getattr(self, table_name).pop(ident, None)
                if kind == "certificate":
                    self.invalid_certificates.add(ident)
        self._seen.clear()
        return self.conflicts

    def conflict(self, kind: str, ident: str) -> str | None:
        """Why a reference to ``ident`` cannot be resolved because of a conflict, or None."""
        defs = self.conflicts.get((kind, ident))
        if defs is None:
            return None
        roots = sorted({d.root for d in defs})
        return f"{kind} {ident} is defined differently in {', '.join(roots[:3])}; it belongs to no one"
