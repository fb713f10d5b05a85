"""The objects load balancers reference by ID, gathered from every document of a desired state."""

from __future__ import annotations

from dataclasses import dataclass, field

from clbagent.model import Acl, Certificate, CustomizedConfig, SharedObjects, TLSPolicy


@dataclass
class Catalog:
    """Certificates, personalized configs, TLS policies and ACLs by ID, with where each was defined."""

    certificates: dict[str, Certificate] = field(default_factory=dict)
    customized_configs: dict[str, CustomizedConfig] = field(default_factory=dict)
    tls_policies: dict[str, TLSPolicy] = field(default_factory=dict)
    acls: dict[str, Acl] = field(default_factory=dict)
    invalid_certificates: set[str] = field(default_factory=set)  # defined, but with errors
    where: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, id) -> root of its document

    def add(self, doc: SharedObjects, root: str) -> list[tuple[str, str, str]]:
        """Add a document's objects; returns (path, kind, id) of IDs already defined differently."""
        clashes: list[tuple[str, str, str]] = []
        groups: list[tuple[str, dict, list, str]] = [
            ("certificate", self.certificates, doc.certificates, "cert_id"),
            ("customized config", self.customized_configs, doc.customized_configs, "config_id"),
            ("TLS policy", self.tls_policies, doc.tls_policies, "policy_id"),
            ("ACL", self.acls, doc.acls, "acl_id"),
        ]
        for kind, table, items, key in groups:
            for item in items:
                ident = getattr(item, key)
                old = table.get(ident)
                if old is not None and old.model_dump() != item.model_dump():
                    clashes.append((item.path, kind, ident))
                    continue
                table[ident] = item
                self.where.setdefault((kind, ident), root)
        return clashes
