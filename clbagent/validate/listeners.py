"""Cross-field checks of one load balancer: listeners, ports, rules, targets, health checks."""

from __future__ import annotations

from collections import defaultdict
from ipaddress import IPv6Address

from clbagent.errors import Code, Issue
from clbagent.model import HealthCheck, Listener, LoadBalancer, Rule, Target
from clbagent.settings import Settings

HEX = set("0123456789ABCDEF")


class Findings:
    """Collects issues with paths rooted at the document."""

    def __init__(self, root: str):
        self.root = root
        self.issues: list[Issue] = []

    def add(self, path: str, code: Code, message: str, severity: str = "error") -> None:
        full = f"{self.root}/{path}" if path else self.root
        self.issues.append(Issue(full, code.value, message, severity))  # type: ignore[arg-type]


def port_family(protocol: str) -> str:
    """The kernel's port space a listener binds in: UDP, or TCP (HTTP, HTTPS and TCP_SSL included).
    Load balancers sharing a VIP conflict only within one family."""
    return "udp" if protocol == "UDP" else "tcp"


def may_share_port(a: str, b: str) -> bool:
    """Two listeners may share a port only as a TCP and a UDP listener (HTTP, HTTPS and TCP_SSL
    conflict with UDP too, as the product documents)."""
    return {a, b} == {"TCP", "UDP"}


def check_listeners(lb: LoadBalancer, settings: Settings, f: Findings) -> None:
    if len(lb.listeners) > settings.max_listeners:
        f.add("Listeners", Code.LIMIT_EXCEEDED, f"at most {settings.max_listeners} listeners per instance")
    l7_rules = sum(len(lis.rules or []) for lis in lb.listeners if not lis.is_l4)
    if l7_rules > settings.max_l7_rules:
        f.add("Listeners", Code.LIMIT_EXCEEDED, f"at most {settings.max_l7_rules} HTTP/HTTPS rules per instance")
    ids: set[str] = set()
    for lis in lb.listeners:
        if lis.id in ids:
            f.add(lis.at("ListenerId"), Code.DUPLICATE, f"listener id {lis.id} is used twice")
        ids.add(lis.id)
    _check_rule_ids(lb, f)
    _check_ports(lb, settings, f)
    for lis in lb.listeners:
        (_check_l4 if lis.is_l4 else _check_l7)(lb, lis, settings, f)
        _check_acl_ref(lis, f)


def _check_ports(lb: LoadBalancer, settings: Settings, f: Findings) -> None:
    """Port ranges are compared as intervals: a range listener costs the same as a single port."""
    taken: list[tuple[int, int, Listener]] = []
    for lis in lb.listeners:
        if lis.end_port:
            if lis.protocol not in ("TCP", "UDP"):
                f.add(lis.at("EndPort"), Code.PROTOCOL_CHECK_FAILED, "port ranges are only for TCP and UDP listeners")
            elif lis.end_port <= lis.port:
                f.add(lis.at("EndPort"), Code.PORT_CHECK_FAILED, "EndPort must be greater than Port")
                continue
        end = lis.end_port or lis.port
        if settings.reject_reserved_ports:
            reserved = sorted(p for p in settings.reserved_ports if lis.port <= p <= end)
            if reserved:
                f.add(lis.at("Port"), Code.PORT_CHECK_FAILED, f"port {reserved[0]} is reserved by the system")
        other = next(
            (
                (lo, o)
                for lo, hi, o in taken
                if lo <= end and lis.port <= hi and not may_share_port(lis.protocol, o.protocol)
            ),
            None,
        )
        if other is not None:
            port, o = max(other[0], lis.port), other[1]
            f.add(
                lis.at("Port"),
                Code.PORT_CHECK_FAILED,
                f"port {port}/{lis.protocol} already used by listener {o.id} ({o.protocol}); "
                "only a TCP and a UDP listener may share a port",
            )
            continue
        taken.append((lis.port, end, lis))


def _check_acl_ref(lis: Listener, f: Findings) -> None:
    if lis.acl_status == "on":
        for field, value in (("AclId", lis.acl_id), ("AclType", lis.acl_type)):
            if value is None:
                f.add(lis.at(field), Code.MISSING_PARAMETER, f"{field} is required when AclStatus is on")
        if lis.is_l4:
            f.add(
                lis.at("AclStatus"),
                Code.UNSUPPORTED_OPERATION,
                "access control lists are enforced on HTTP/HTTPS listeners only",
            )


def _check_rule_ids(lb: LoadBalancer, f: Findings) -> None:
    """A LocationId (written, or derived from domain and URL) names one rule of the load balancer:
    redirects, file and upstream names are derived from it."""
    seen: set[str] = set()
    for lis in lb.listeners:
        for rule in lis.rules or []:
            if rule.id in seen:
                f.add(
                    rule.at("LocationId"), Code.DUPLICATE, f"LocationId {rule.id} names two rules of this load balancer"
                )
            seen.add(rule.id)


def _forbid(f: Findings, lis: Listener, fields: dict[str, object], code: Code, why: str) -> None:
    for name, value in fields.items():
        if value not in (None, False, 0, "off"):
            f.add(lis.at(name), code, f"{name} {why}")


def _check_l4(lb: LoadBalancer, lis: Listener, settings: Settings, f: Findings) -> None:
    if lis.protocol == "TCP_SSL":
        f.add(
            lis.at("Protocol"),
            Code.UNSUPPORTED_PROTOCOL,
            "TCP_SSL (beta) is not served by this agent; use TCP, UDP, HTTP or HTTPS",
        )
    l4_only = f"is not valid on a {lis.protocol} listener"
    _forbid(
        f,
        lis,
        {
            "Rules": lis.rules,
            "SniSwitch": lis.sni_switch,
            "KeepaliveEnable": lis.keepalive_enable,
            "TLSCipherPolicy": lis.tls_cipher_policy,
            "IdleTimeout": lis.idle_timeout,
            "RequestTimeout": lis.request_timeout,
            "XForwardedFor_SLBIP": lis.x_forwarded_for_slbip,
            "XForwardedFor_SLBID": lis.x_forwarded_for_slbid,
            "XForwardedFor_proto": lis.x_forwarded_for_proto,
        },
        Code.PROTOCOL_CHECK_FAILED,
        l4_only,
    )
    if lis.protocol != "TCP_SSL":
        _forbid(f, lis, {"Certificate": lis.certificate}, Code.PROTOCOL_CHECK_FAILED, l4_only)
    if lis.protocol != "TCP":
        _forbid(
            f,
            lis,
            {"DeregisterTargetRst": lis.deregister_target_rst},
            Code.PROTOCOL_CHECK_FAILED,
            "applies to TCP listeners only",
        )
    if lis.scheduler == "IP_HASH":
        f.add(lis.at("Scheduler"), Code.INVALID_VALUE, "a TCP/UDP listener schedules with WRR or LEAST_CONN")
    if lis.persistence and lis.effective_scheduler != "WRR":
        f.add(
            lis.at("SessionExpireTime"),
            Code.INVALID_PARAMETER,
            "session persistence works only with the WRR scheduler, not LEAST_CONN",
        )
    if lis.session_expire_time and lis.session_expire_time < 30:
        f.add(lis.at("SessionExpireTime"), Code.RANGE, "SessionExpireTime is 0 (off) or 30-3600 seconds")
    if lis.health_check is not None:
        _check_l4_health(lis, lis.health_check, f)
    _check_targets(lb, lis, lis.targets or [], lis.at("Targets"), settings, f, l7=False)


def _check_l4_health(lis: Listener, hc: HealthCheck, f: Findings) -> None:
    at = hc.at
    if hc.time_out >= hc.interval_time:
        f.add(at("TimeOut"), Code.RANGE, "TimeOut must be less than IntervalTime")
    kind = hc.check_type
    if lis.protocol == "UDP" and kind not in (None, "CUSTOM"):
        f.add(at("CheckType"), Code.INVALID_VALUE, "a UDP listener supports only the CUSTOM check type")
    custom_fields = {"ContextType": hc.context_type, "SendContext": hc.send_context, "RecvContext": hc.recv_context}
    if kind is None and any(v is not None for v in custom_fields.values()):
        f.add(at("CheckType"), Code.MISSING_PARAMETER, "CheckType CUSTOM is required to send a custom health check")
    if kind == "HTTP":
        if hc.http_version is None:
            f.add(at("HttpVersion"), Code.MISSING_PARAMETER, "HttpVersion is required when CheckType is HTTP")
        if hc.http_code is not None and hc.http_code not in (1, 2, 4, 8, 16):
            f.add(at("HttpCode"), Code.RANGE, "an HTTP check of a TCP listener takes exactly one status class")
    if kind == "CUSTOM":
        for name, value in custom_fields.items():
            if value is None:
                f.add(at(name), Code.MISSING_PARAMETER, f"{name} is required when CheckType is CUSTOM")
        if hc.context_type == "HEX":
            for name, value in (("SendContext", hc.send_context), ("RecvContext", hc.recv_context)):
                if value is not None and (not set(value) <= HEX or len(value) % 2):
                    f.add(
                        at(name), Code.FORMAT_ERROR, f"{name} in HEX must use only 0-9 and A-F and have an even length"
                    )


def _check_l7(lb: LoadBalancer, lis: Listener, settings: Settings, f: Findings) -> None:
    https = lis.protocol == "HTTPS"
    _forbid(
        f,
        lis,
        {
            "Targets": lis.targets,
            "HealthCheck": lis.health_check,
            "SessionExpireTime": lis.session_expire_time,
            "Scheduler": lis.scheduler,
        },
        Code.INVALID_PARAMETER,
        "is set per rule on HTTP/HTTPS listeners, not on the listener",
    )
    _forbid(
        f,
        lis,
        {"DeregisterTargetRst": lis.deregister_target_rst},
        Code.PROTOCOL_CHECK_FAILED,
        "applies to TCP listeners only",
    )
    if not https:
        _forbid(
            f,
            lis,
            {"SniSwitch": lis.sni_switch, "Certificate": lis.certificate, "TLSCipherPolicy": lis.tls_cipher_policy},
            Code.PROTOCOL_CHECK_FAILED,
            "is valid on HTTPS listeners only",
        )
    elif lis.sni:
        _forbid(
            f,
            lis,
            {"Certificate": lis.certificate},
            Code.INVALID_PARAMETER,
            "is not used when SNI is on: set a Certificate on each rule (domain)",
        )
    elif lis.certificate is None:
        f.add(lis.at("Certificate"), Code.MISSING_PARAMETER, "an HTTPS listener without SNI needs a Certificate")
    else:
        check_cert_input(lis.certificate, lis.at("Certificate"), f)
    rules = lis.rules or []
    _check_rules(lb, lis, rules, settings, f)


def check_cert_input(cert, path: str, f: Findings) -> None:
    """SSL mode, server certificate and (for MUTUAL) CA presence of one certificate slot."""
    if cert.ssl_mode is None:
        f.add(f"{path}/SSLMode", Code.MISSING_PARAMETER, "SSLMode (UNIDIRECTIONAL or MUTUAL) is required")
    if cert.cert_id is None and not (cert.cert_content and cert.cert_key):
        f.add(
            f"{path}/CertId",
            Code.MISSING_PARAMETER,
            "a server certificate is required: CertId, or CertContent + CertKey + CertName",
        )
    if cert.ssl_mode == "MUTUAL" and cert.cert_ca_id is None and not cert.cert_ca_content:
        f.add(
            f"{path}/CertCaId",
            Code.MISSING_PARAMETER,
            "MUTUAL authentication needs a client CA: CertCaId, or CertCaContent + CertCaName",
        )
    if cert.sm_cert_id is not None:
        f.add(f"{path}/SmCertId", Code.UNSUPPORTED_OPERATION, "SM2 certificates cannot be served by this host")


def _location_key(rule: Rule) -> tuple[str, str]:
    """nginx treats `/a` and `^~/a` as the same location; `=/a` and regexes are distinct."""
    url = rule.parsed_url
    if url.kind in ("prefix", "prefix_stop"):
        return ("prefix", url.pattern)
    return (url.kind, url.pattern)


def _check_rules(lb: LoadBalancer, lis: Listener, rules: list[Rule], settings: Settings, f: Findings) -> None:
    https = lis.protocol == "HTTPS"
    seen: dict[tuple[str, tuple[str, str]], Rule] = {}
    defaults: dict[str, Rule] = {}
    by_domain: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        by_domain[rule.domain].append(rule)
        key = (rule.domain, _location_key(rule))
        if key in seen:
            f.add(
                rule.at("Url"),
                Code.DUPLICATE,
                f"domain {rule.domain} already has URL {seen[key].url} at the same location",
            )
        seen[key] = rule
        if rule.default_server:
            defaults.setdefault(rule.domain, rule)
        _check_rule(lb, lis, rule, settings, f)
    if len(defaults) > 1:
        extra = list(defaults.values())[1]
        f.add(extra.at("DefaultServer"), Code.DUPLICATE, "a listener has only one default domain")
    if not lis.default_ser_switch and defaults:
        f.add(
            next(iter(defaults.values())).at("DefaultServer"),
            Code.INVALID_PARAMETER,
            "DefaultServer needs the listener's DefaultSerSwitch on",
        )
    if lis.default_ser_switch and rules and not defaults and settings.require_default_server:
        f.add(
            lis.at("Rules"),
            Code.MISSING_PARAMETER,
            "the default-domain switch is on: mark exactly one domain with DefaultServer: true",
        )
    for domain, group in by_domain.items():
        if len({r.http2 for r in group}) > 1:
            f.add(group[0].at("Http2"), Code.INVALID_PARAMETER, f"Http2 must be the same on every rule of {domain}")
        if https and lis.sni:
            certs = {r.certificate.model_dump_json() for r in group if r.certificate is not None}
            if not certs:
                f.add(
                    group[0].at("Certificate"),
                    Code.MISSING_PARAMETER,
                    f"SNI is on: domain {domain} needs a Certificate on one of its rules",
                )
            elif len(certs) > 1:
                f.add(
                    group[0].at("Certificate"),
                    Code.INVALID_PARAMETER,
                    f"rules of domain {domain} name different certificates",
                )


def _check_rule(lb: LoadBalancer, lis: Listener, rule: Rule, settings: Settings, f: Findings) -> None:
    https = lis.protocol == "HTTPS"
    if rule.http2 and not https:
        f.add(rule.at("Http2"), Code.PROTOCOL_CHECK_FAILED, "HTTP/2 can be enabled on HTTPS domains only")
    if rule.certificate is not None:
        if not https:
            f.add(rule.at("Certificate"), Code.PROTOCOL_CHECK_FAILED, "certificates belong to HTTPS listeners")
        elif not lis.sni:
            f.add(
                rule.at("Certificate"),
                Code.INVALID_PARAMETER,
                "a per-domain certificate needs SniSwitch 1 on the listener",
            )
        else:
            check_cert_input(rule.certificate, rule.at("Certificate"), f)
    if rule.session_expire_time:
        if rule.session_expire_time < 30:
            f.add(rule.at("SessionExpireTime"), Code.RANGE, "SessionExpireTime is 0 (off) or 30-3600 seconds")
        if rule.scheduler != "WRR":
            f.add(
                rule.at("SessionExpireTime"),
                Code.INVALID_PARAMETER,
                f"cookie session persistence works only with WRR, not {rule.scheduler}",
            )
        if rule.session_cookie_name:
            f.add(
                rule.at("SessionCookieName"),
                Code.INVALID_PARAMETER,
                "choose inserted-cookie (SessionExpireTime) or server-cookie persistence, not both",
            )
    if rule.forward_type == "TRPC":
        for name, value in (("TrpcCallee", rule.trpc_callee), ("TrpcFunc", rule.trpc_func)):
            if not value:
                f.add(rule.at(name), Code.MISSING_PARAMETER, f"{name} is required when ForwardType is TRPC")
        f.add(rule.at("ForwardType"), Code.UNSUPPORTED_PROTOCOL, "tRPC forwarding is not served by this agent")
    hc = rule.health_check
    set_fields = hc.model_dump(by_alias=True, exclude_none=True)
    for name in ("CheckType", "ContextType", "SendContext", "RecvContext", "HttpVersion"):
        if name in set_fields:
            f.add(rule.at(f"HealthCheck/{name}"), Code.PROTOCOL_CHECK_FAILED, f"{name} applies to TCP/UDP only")
    if hc.enabled and rule.parsed_domain.kind != "exact" and hc.http_check_domain is None:
        f.add(
            rule.at("HealthCheck/HttpCheckDomain"),
            Code.MISSING_PARAMETER,
            "a wildcard or regex domain needs a fixed HttpCheckDomain for health checks",
        )
    _check_targets(lb, lis, rule.targets, rule.at("Targets"), settings, f, l7=True)


def _check_targets(
    lb: LoadBalancer, lis: Listener, targets: list[Target], path: str, settings: Settings, f: Findings, l7: bool
) -> None:
    if len(targets) > settings.max_targets_per_rule:
        f.add(path, Code.LIMIT_EXCEEDED, f"at most {settings.max_targets_per_rule} targets per rule or listener")
    seen: set[str] = set()
    kinds: set[str] = set()
    for t in targets:
        ids = [
            n
            for n, v in (("InstanceId", t.instance_id), ("EniIp", t.eni_ip), ("InstanceBmsId", t.instance_bms_id))
            if v
        ]
        if len(ids) > 1:
            f.add(t.path, Code.INVALID_PARAMETER, f"name exactly one of InstanceId, EniIp, InstanceBmsId, not {ids}")
        addr = t.address
        if addr is None:
            f.add(
                t.at("PrivateIpAddresses"),
                Code.MISSING_PARAMETER,
                "the target needs an address: EniIp, or PrivateIpAddresses of the instance",
            )
            continue
        kinds.add(t.kind)
        if settings.target_ranges and not any(addr in net for net in settings.target_ranges):
            f.add(t.path, Code.INVALID_VALUE, f"target {addr} is outside the target ranges of this host")
        if t.endpoint in seen:
            f.add(t.at("Port"), Code.DUPLICATE, f"target {t.endpoint} is bound twice")
        seen.add(t.endpoint)
        v6 = isinstance(addr, IPv6Address)
        if lb.is_ipv6 and t.kind != "ENI":
            f.add(t.path, Code.INVALID_PARAMETER, "an IPv6 instance binds ENI targets only (EniIp)")
        mixed_ok = lb.address_ip_version == "IPv6FullChain" and lb.mix_ip_target and l7
        if v6 != lb.is_ipv6 and not mixed_ok:
            fam = "IPv6" if lb.is_ipv6 else "IPv4"
            f.add(
                t.at("EniIp" if t.eni_ip else "PrivateIpAddresses"),
                Code.INVALID_PARAMETER,
                f"target address {addr} is not {fam} like the instance",
            )
    if "BMS" in kinds and len(kinds) > 1:
        f.add(path, Code.INVALID_PARAMETER, "bare-metal (BMS) targets cannot be mixed with CVM or ENI targets")


def check_vips(lb: LoadBalancer, settings: Settings, f: Findings) -> None:
    for i, vip in enumerate(lb.load_balancer_vips):
        if isinstance(vip, IPv6Address) != lb.is_ipv6:
            f.add(
                f"LoadBalancerVips[{i}]",
                Code.INVALID_PARAMETER,
                f"VIP {vip} does not match AddressIPVersion {lb.address_ip_version}",
            )
        if settings.vip_ranges and not any(vip in net for net in settings.vip_ranges):
            f.add(f"LoadBalancerVips[{i}]", Code.INVALID_VALUE, f"VIP {vip} is outside the VIP ranges of this host")
    if len(set(lb.load_balancer_vips)) != len(lb.load_balancer_vips):
        f.add("LoadBalancerVips", Code.DUPLICATE, "a VIP is listed twice")
