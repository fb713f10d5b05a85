"""Checks of what a load balancer references: certificates, personalized config, TLS policies,
ACLs, and the redirect graph (manual and automatic)."""

from __future__ import annotations

from clbagent.errors import Code
from clbagent.model import CertificateInput, Listener, LoadBalancer, Rule
from clbagent.personalized_config import parse_customized
from clbagent.settings import Settings
from clbagent.tls_policies import NAMED_POLICIES
from clbagent.validate.catalog import Catalog
from clbagent.validate.certs import weak_leaf
from clbagent.validate.listeners import Findings


def rules_by_id(lb: LoadBalancer) -> dict[str, tuple[Listener, Rule]]:
    return {r.id: (lis, r) for lis in lb.listeners if not lis.is_l4 for r in lis.rules or []}


def check_references(lb: LoadBalancer, catalog: Catalog, settings: Settings, f: Findings) -> None:
    for cert, path in lb.certificate_slots():
        _check_cert_refs(cert, path, catalog, f)
    for lis in lb.listeners:
        if lis.tls_cipher_policy and (why := catalog.conflict("TLS policy", lis.tls_cipher_policy)):
            f.add(lis.at("TLSCipherPolicy"), Code.INVALID_PARAMETER, why)
        elif lis.tls_cipher_policy and lis.tls_cipher_policy not in NAMED_POLICIES.keys() | catalog.tls_policies.keys():
            f.add(
                lis.at("TLSCipherPolicy"),
                Code.ALI_TLS_POLICY_NOT_EXIST,
                f"TLS policy {lis.tls_cipher_policy} is neither a named policy nor defined in TLSPolicies",
            )
        if lis.acl_status == "on" and lis.acl_id:
            acl = catalog.acls.get(lis.acl_id)
            if why := catalog.conflict("ACL", lis.acl_id):
                f.add(lis.at("AclId"), Code.INVALID_PARAMETER, why)
            elif acl is None:
                f.add(lis.at("AclId"), Code.ALI_ACL_NOT_EXIST, f"ACL {lis.acl_id} is not defined")
            elif (acl.address_ip_version == "ipv6") != lb.is_ipv6:
                f.add(
                    lis.at("AclId"),
                    Code.ALI_IP_VERSION_CONFLICT,
                    f"ACL {lis.acl_id} is {acl.address_ip_version} but the instance is {lb.address_ip_version}",
                )
    if lb.config_id:
        _check_config_ref(lb, catalog, f)
    _check_weak_certificates(lb, catalog, settings, f)
    _check_rewrites(lb, settings, f)
    _check_auto_rewrites(lb, f)


def _check_cert_refs(cert: CertificateInput, path: str, catalog: Catalog, f: Findings) -> None:
    for field, ident, kind in (
        ("CertId", cert.cert_id, "SVR"),
        ("EccCertId", cert.ecc_cert_id, "SVR"),
        ("CertCaId", cert.cert_ca_id, "CA"),
    ):
        if ident is None:
            continue
        obj = catalog.certificates.get(ident)
        if why := catalog.conflict("certificate", ident):
            f.add(f"{path}/{field}", Code.INVALID_PARAMETER, why)
        elif obj is None:
            f.add(f"{path}/{field}", Code.RESOURCE_NOT_FOUND, f"certificate {ident} is not defined")
        elif obj.cert_type != kind:
            f.add(
                f"{path}/{field}",
                Code.INVALID_PARAMETER,
                f"certificate {ident} is a {obj.cert_type} certificate; {field} needs a {kind} certificate",
            )
        elif obj.cert_algorithm == "sm2":
            f.add(f"{path}/{field}", Code.UNSUPPORTED_OPERATION, f"SM2 certificate {ident} cannot be served here")
        elif ident in catalog.invalid_certificates:
            f.add(f"{path}/{field}", Code.INVALID_PARAMETER, f"certificate {ident} is invalid")


def _check_weak_certificates(lb: LoadBalancer, catalog: Catalog, settings: Settings, f: Findings) -> None:
    """A weak leaf certificate stops ``nginx -t`` (``ee key too small``) unless the listener's TLS
    policy runs at security level 0 (a legacy policy)."""
    https = [lis for lis in lb.listeners if lis.protocol == "HTTPS"]
    if not https:
        return
    # The compiler's own TLS resolution, so that validation and rendering agree; imported here
    # because the compiler imports this package.
    from clbagent.l7.personalized import personalized_for
    from clbagent.l7.server_tls import TlsRefusedError, listener_policy

    directives = personalized_for(lb, catalog).directives
    for lis in https:
        try:
            tls, _ = listener_policy(lis, catalog, directives, settings.legacy_tls_default)
        except (TlsRefusedError, KeyError):
            continue  # refused with its own error by the compiler, or a missing policy reported above
        if tls.legacy:
            continue
        slots = [(lis.certificate, lis.at("Certificate"))] + [
            (r.certificate, r.at("Certificate")) for r in lis.rules or []
        ]
        for cert, path in slots:
            for field, ident in (("CertId", cert and cert.cert_id), ("EccCertId", cert and cert.ecc_cert_id)):
                obj = catalog.certificates.get(ident) if ident else None
                why = weak_leaf(obj.cert_content) if obj is not None and obj.cert_content else None
                if why:
                    f.add(
                        f"{path}/{field}",
                        Code.INVALID_PARAMETER,
                        f"certificate {ident} cannot be served by listener {lis.id}: {why}; its TLS policy runs "
                        "at OpenSSL's normal security level (only a legacy TLSv1/TLSv1.1 policy accepts it)",
                    )


def _check_config_ref(lb: LoadBalancer, catalog: Catalog, f: Findings) -> None:
    conf = catalog.customized_configs.get(lb.config_id or "")
    if why := catalog.conflict("customized config", lb.config_id or ""):
        f.add("ConfigId", Code.INVALID_PARAMETER, why)
        return
    if conf is None:
        f.add("ConfigId", Code.RESOURCE_NOT_FOUND, f"personalized config {lb.config_id} is not defined")
        return
    _, problems = parse_customized(conf.config_content)
    if problems:
        f.add("ConfigId", Code.INVALID_PARAMETER, f"personalized config {lb.config_id} is invalid ({problems[0][1]})")
    if all(lis.is_l4 for lis in lb.listeners):
        f.add(
            "ConfigId",
            Code.INVALID_PARAMETER,
            "a personalized config affects HTTP/HTTPS listeners only; this instance has none",
            "warning",
        )


def _check_rewrites(lb: LoadBalancer, settings: Settings, f: Findings) -> None:
    rules = rules_by_id(lb)
    if lb.rewrites and lb.load_balancer_type == "INTERNAL" and not settings.redirects_on_internal:
        f.add("Rewrites", Code.UNSUPPORTED_OPERATION, "redirects are available on public (OPEN) instances only")
    targets = {rw.target_location_id for rw in lb.rewrites}
    sources: set[str] = set()
    for rw in lb.rewrites:
        src, dst = rules.get(rw.source_location_id), rules.get(rw.target_location_id)
        for field, ident, found in (
            ("SourceLocationId", rw.source_location_id, src),
            ("TargetLocationId", rw.target_location_id, dst),
        ):
            if found is None:
                f.add(rw.at(field), Code.LOCATION_NOT_FOUND, f"no rule with LocationId {ident}")
        if rw.source_location_id in sources:
            f.add(
                rw.at("SourceLocationId"),
                Code.REWRITE_ALREADY_EXIST,
                f"rule {rw.source_location_id} already redirects; a rule has at most one redirect",
            )
        sources.add(rw.source_location_id)
        if rw.source_location_id in targets or rw.source_location_id == rw.target_location_id:
            f.add(
                rw.at("SourceLocationId"),
                Code.REWRITE_ALREADY_EXIST,
                f"rule {rw.source_location_id} is a redirect target and cannot redirect itself",
            )
        if rw.rewrite_code is not None:
            for field, value in (("TakeUrl", rw.take_url), ("SourceDomain", rw.source_domain)):
                if value is None:
                    f.add(rw.at(field), Code.MISSING_PARAMETER, f"{field} is required when RewriteCode is set")
        if src and rw.source_domain is not None and rw.source_domain != src[1].domain:
            f.add(
                rw.at("SourceDomain"),
                Code.INVALID_PARAMETER,
                f"SourceDomain must be {src[1].domain}, the domain of rule {rw.source_location_id}",
            )
        if dst:
            _check_redirect_target(rw, dst[1], f)


def _check_redirect_target(rw, rule: Rule, f: Findings) -> None:
    if rule.parsed_domain.kind != "exact":
        f.add(
            rw.at("TargetLocationId"),
            Code.INVALID_PARAMETER,
            f"redirect target {rule.id} has a wildcard or regex domain; a Location needs a fixed host",
        )
    if rule.parsed_url.is_regex and not rw.take_url:
        f.add(
            rw.at("TargetLocationId"),
            Code.INVALID_PARAMETER,
            f"redirect target {rule.id} has a regex URL; set TakeUrl or point at a plain URL",
        )


def _check_auto_rewrites(lb: LoadBalancer, f: Findings) -> None:
    by_id = {lis.id: lis for lis in lb.listeners}
    port80 = [lis for lis in lb.listeners if lis.port == 80 and lis.protocol != "UDP"]
    for ar in lb.auto_rewrites:
        lis = by_id.get(ar.listener_id)
        if lis is None:
            f.add(ar.at("ListenerId"), Code.LISTENER_ID_NOT_FOUND, f"no listener {ar.listener_id}")
            continue
        if lis.protocol != "HTTPS" or lis.port != 443:
            f.add(ar.at("ListenerId"), Code.PROTOCOL_CHECK_FAILED, "auto-redirect starts from an HTTPS:443 listener")
            continue
        domains = {r.domain for r in lis.rules or []}
        wanted = ar.domains if ar.domains is not None else sorted(domains)
        for i, d in enumerate(wanted):
            if d not in domains:
                f.add(f"{ar.at('Domains')}[{i}]", Code.LOCATION_NOT_FOUND, f"domain {d} is not on listener {lis.id}")
        for field, values in (("RewriteCodes", ar.rewrite_codes), ("TakeUrls", ar.take_urls)):
            if values is not None and len(values) not in (1, len(wanted)):
                f.add(ar.at(field), Code.INVALID_PARAMETER, f"{field} needs one value, or one per domain")
        blocker = next((p for p in port80 if p.protocol != "HTTP"), None)
        if blocker is not None:
            f.add(
                ar.at("ListenerId"),
                Code.PORT_CHECK_FAILED,
                f"auto-redirect needs HTTP:80 but port 80 is used by {blocker.protocol} listener {blocker.id}",
            )
        for http in (p for p in port80 if p.protocol == "HTTP"):
            clash = sorted(set(wanted) & {r.domain for r in http.rules or []})
            if clash:
                f.add(
                    ar.at("Domains"),
                    Code.DUPLICATE,
                    f"domain {clash[0]} already has rules on HTTP:80 listener {http.id}",
                )
