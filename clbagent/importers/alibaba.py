"""Alibaba ``CreateLoadBalancerHTTPSListener``: parameters → a clbagent load-balancer document.

The request names the listener and references (certificates, ACL, server group) but not the VIPs
or the backend servers: those come from the operator (``--vip``, ``--backend``). Alibaba's own
conditional rules and error codes (document A, R141-R158) are checked here, on the parameters;
the resulting document is then validated like any other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from typing import Any
from urllib.parse import unquote_plus

from clbagent.errors import Code, Issue

ROOT = "alibaba"
SCHEDULERS = {"wrr": "WRR", "rr": "WRR", "wlc": "LEAST_CONN", "sch": "IP_HASH"}
HTTP_CODES = ("http_2xx", "http_3xx", "http_4xx", "http_5xx")
DESCRIPTION = re.compile(r"^[A-Za-z0-9/._-]{1,256}$")
COOKIE = re.compile(r"^[A-Za-z0-9]{1,200}$")
CLIENT_CERT_ALIASES = (
    "XForwardedFor_ClientCertSubjectDNAlias",
    "XForwardedFor_ClientCertIssuerDNAlias",
    "XForwardedFor_ClientCertFingerprintAlias",
    "XForwardedFor_ClientCertClientVerifyAlias",
)


def parse_request(text: str) -> dict[str, str]:
    """Parameters of a request given as JSON or as a query string (the documented sample form:
    an optional ``http(s)://[Endpoint]/?`` prefix and ``&``-joined pairs, line breaks allowed)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        if not isinstance(data, dict):
            raise ValueError("the JSON form must be an object of parameters")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    query = stripped.split("?", 1)[1] if "?" in stripped.split("&", 1)[0] else stripped
    params: dict[str, str] = {}
    for part in query.replace("\n", "&").split("&"):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            params[unquote_plus(key)] = unquote_plus(value)
    return params


@dataclass
class Context:
    """What the request does not carry: VIPs, backends, and objects to resolve references against."""

    vips: list[str]
    backends: list[tuple[str, int | None, int]] = field(default_factory=list)  # ip, port, weight
    domain: str = "default.clb.internal"
    certificates: dict[str, dict[str, Any]] = field(default_factory=dict)  # CertId -> raw Certificate
    acls: dict[str, dict[str, Any]] = field(default_factory=dict)  # AclId -> raw Acl
    existing: dict[str, Any] | None = None  # a document to add the listener to


class _Params:
    """Typed access to the parameters, recording an issue for every bad value (once, however
    often the parameter is read: the checks and the conversion both read some of them)."""

    def __init__(self, params: dict[str, str]):
        self.p = params
        self._issues: dict[Issue, None] = {}

    @property
    def issues(self) -> list[Issue]:
        return list(self._issues)

    def err(self, name: str, code: Code | str, message: str, severity: str = "error") -> None:
        self._issues[Issue(f"{ROOT}/{name}", str(code), message, severity)] = None  # type: ignore[arg-type]

    def text(self, name: str) -> str | None:
        value = self.p.get(name)
        return value if value not in (None, "") else None

    def on(self, name: str, default: bool = False) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() not in ("on", "off"):
            self.err(name, Code.INVALID_VALUE, f"{name} must be 'on' or 'off', not {value!r:.40}")
            return default
        return value.lower() == "on"

    def integer(
        self, name: str, low: int, high: int, code: Code | str = Code.RANGE, extra: tuple[int, ...] = ()
    ) -> int | None:
        value = self.text(name)
        if value is None:
            return None
        if not (value.isascii() and value.strip().lstrip("+-").isdigit()):  # int() takes any script's digits
            self.err(name, Code.FORMAT_ERROR, f"{name} must be an integer, not {value!r:.40}")
            return None
        n = int(value)
        if not (low <= n <= high or n in extra):
            allowed = " or ".join([*map(str, extra), f"{low}-{high}"])
            self.err(name, code, f"{name} must be {allowed}, not {n}")
            return None
        return n

    def required(self, name: str, why: str) -> None:
        if self.text(name) is None:
            self.err(name, Code.MISSING_PARAMETER, f"{name} is required {why}")


def _check_request(a: _Params, ctx: Context, cert_ids: list[str]) -> None:
    """Alibaba's parameter rules (R141-R158) that are not about the converted document."""
    for name in ("LoadBalancerId", "ListenerPort", "StickySession", "HealthCheck", "Bandwidth"):
        a.required(name, "by CreateLoadBalancerHTTPSListener")
    a.integer("Bandwidth", 1, 5120, extra=(-1,))
    if a.text("Bandwidth") not in (None, "-1"):
        a.err(
            "Bandwidth", Code.UNSUPPORTED_OPERATION, "listener bandwidth caps are not enforced by this agent", "warning"
        )
    if a.text("VServerGroupId") is None:
        a.required("BackendServerPort", "when VServerGroupId is not set")
    if a.text("MasterSlaveServerGroupId"):
        a.err(
            "MasterSlaveServerGroupId",
            Code.ALI_VSERVER_GROUP,
            "a primary/secondary server group cannot be attached to an HTTP or HTTPS listener",
        )
    if a.on("StickySession"):
        a.required("StickySessionType", "when StickySession is on")
        kind = a.text("StickySessionType")
        if kind not in (None, "insert", "server"):
            a.err("StickySessionType", Code.INVALID_VALUE, "StickySessionType must be 'insert' or 'server'")
        if kind == "insert":
            a.required("CookieTimeout", "when StickySession is on and StickySessionType is insert")
        if kind == "server":
            a.required("Cookie", "when StickySession is on and StickySessionType is server")
            cookie = a.text("Cookie")
            if cookie is not None and not COOKIE.match(cookie):
                a.err(
                    "Cookie",
                    Code.FORMAT_ERROR,
                    "Cookie is 1-200 ASCII letters and digits (no ',', ';', space, and not starting with '$')",
                )
    if a.on("AclStatus"):
        a.required("AclId", "when AclStatus is on")
        a.required("AclType", "when AclStatus is on")
        if a.text("AclType") not in (None, "white", "black"):
            a.err("AclType", Code.INVALID_VALUE, "AclType must be 'white' or 'black'")
    desc = a.text("Description")
    if desc is not None and not DESCRIPTION.match(desc):
        a.err(
            "Description", Code.FORMAT_ERROR, "Description is 1-256 characters of letters, digits, '-', '/', '.', '_'"
        )
    aliases = [a.text(n) for n in CLIENT_CERT_ALIASES]
    for name, value in zip(CLIENT_CERT_ALIASES, aliases, strict=True):
        if value is not None and aliases.count(value) > 1:
            a.err(name, Code.ALI_PARAM_DUPLICATE, f"the value of {name} is used by another client-certificate alias")
    if any(isinstance(ip_address(v), IPv6Address) for v in ctx.vips) and a.on("XForwardedFor", True):
        a.err("XForwardedFor", Code.ALI_FORWARD_NOT_SUPPORT, "X-Forwarded-For is not supported on an IPv6 instance")
    _check_health(a)
    _check_certificates(a, ctx, cert_ids)
    _check_acl(a, ctx)


def _check_health(a: _Params) -> None:
    if not a.on("HealthCheck"):
        return
    version = a.text("HealthCheckHttpVersion")
    if version not in (None, "http1.0", "http1.1"):
        a.err("HealthCheckHttpVersion", Code.ALI_HEALTH_HTTP_VERSION, "HealthCheckHttpVersion is http1.0 or http1.1")
    if version == "http1.1" and a.text("HealthCheckDomain") is None:
        a.err(
            "HealthCheckDomain",
            Code.ALI_MISSING_HEALTH_DOMAIN,
            "HealthCheckDomain is required when HealthCheckHttpVersion is http1.1",
        )
    a.integer("HealthCheckInterval", 1, 50)
    a.integer("HealthyThreshold", 2, 10)
    a.integer("UnhealthyThreshold", 2, 10)
    a.integer("HealthCheckConnectPort", 1, 65535)
    uri = a.text("HealthCheckURI")
    if uri is not None and not 1 <= len(uri) <= 80:
        a.err("HealthCheckURI", Code.LENGTH, "HealthCheckURI is 1-80 characters")
    method = a.text("HealthCheckMethod")
    if method is not None and method.lower() not in ("head", "get"):
        a.err("HealthCheckMethod", Code.INVALID_VALUE, "HealthCheckMethod is 'head' or 'get'")
    codes = a.text("HealthCheckHttpCode")
    if codes is not None and not set(codes.split(",")) <= set(HTTP_CODES):
        a.err(
            "HealthCheckHttpCode", Code.INVALID_VALUE, f"HealthCheckHttpCode takes a subset of {','.join(HTTP_CODES)}"
        )


def _server_cert_ids(a: _Params) -> list[str]:
    ids = [_sanitize_id(a, "ServerCertificateId")] if a.text("ServerCertificateId") else []
    for name in ("ServerCertificates", "ServerCertificate"):
        raw = a.text(name)
        if raw is None:
            continue
        try:
            entries = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, too deep, or digits beyond any integer
            a.err(name, "InvalidParamSize.ServerCertificates", f"{name} must be a JSON list of certificates")
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict) and entry.get("CertificateId"):
                if str(entry.get("EncryptionAlgorithm", "")).lower() in ("sm2", "cn"):
                    a.err(name, Code.ALI_CN_CERT, "SM (cn) certificates are not supported")
                ids.append(clean_id(str(entry["CertificateId"])))
    return list(dict.fromkeys(ids))


def _check_certificates(a: _Params, ctx: Context, ids: list[str]) -> None:
    if not ids:
        a.err("ServerCertificateId", Code.ALI_MISSING_SERVER_CERTS, "a server certificate is required")
    elif len(ids) > 1:
        a.err("ServerCertificates", Code.ALI_TOO_MANY_CERTS, "a listener takes at most one server certificate")
    ca = clean_id(a.text("CACertificateId") or "") or None
    for name, ident, kind in [("ServerCertificateId", i, "SVR") for i in ids] + [("CACertificateId", ca, "CA")]:
        if ident is None or not ctx.certificates:
            continue
        cert = ctx.certificates.get(ident)
        if cert is None:
            a.err(name, "CertificateNotExist", f"certificate {ident} does not exist")
        elif str(cert.get("CertAlgorithm", "rsa")).lower() == "sm2":
            a.err(name, Code.ALI_CN_CERT, f"certificate {ident} is an SM (cn) certificate; not supported")
        elif str(cert.get("CertType", "SVR")).upper() != kind:
            a.err(name, Code.ALI_CERT_TYPE_MISMATCH, f"certificate {ident} is not a {kind} certificate")


def _check_acl(a: _Params, ctx: Context) -> None:
    acl_id = clean_id(a.text("AclId") or "") or None
    if not a.on("AclStatus") or acl_id is None or not ctx.acls:
        return
    acl = ctx.acls.get(acl_id)
    if acl is None:
        a.err("AclId", Code.ALI_ACL_NOT_EXIST, f"ACL {acl_id} does not exist")
        return
    lb_v6 = any(isinstance(ip_address(v), IPv6Address) for v in ctx.vips)
    if (str(acl.get("AddressIPVersion", "ipv4")).lower() == "ipv6") != lb_v6:
        a.err("AclId", Code.ALI_IP_VERSION_CONFLICT, f"ACL {acl_id} and the load balancer differ in IP version")


def _checked_int(a: _Params, name: str, low: int, high: int) -> int | None:
    """A parameter already range-checked by ``_check_request``: its value, or None if it was refused."""
    value = a.text(name)
    if value is None or not (value.isascii() and value.strip().lstrip("+-").isdigit()):
        return None
    n = int(value)
    return n if low <= n <= high else None


def _health_check(a: _Params) -> dict[str, Any]:
    if not a.on("HealthCheck"):
        return {"HealthSwitch": 0}
    hc: dict[str, Any] = {"HealthSwitch": 1}
    simple = {
        "HealthCheckDomain": "HttpCheckDomain",
        "HealthCheckURI": "HttpCheckPath",
        "HealthyThreshold": "HealthNum",
        "UnhealthyThreshold": "UnHealthNum",
        "HealthCheckConnectPort": "CheckPort",
    }
    for src, dst in simple.items():
        value = a.text(src)
        if value is not None:
            digits = value.isascii() and value.isdigit()
            hc[dst] = int(value) if digits else value.lower() if dst == "HttpCheckDomain" else value
    if a.text("HealthCheckMethod"):
        hc["HttpCheckMethod"] = a.text("HealthCheckMethod").upper()  # type: ignore[union-attr]
    if a.text("HealthCheckHttpCode"):
        hc["HttpCode"] = a.text("HealthCheckHttpCode")
    interval = _checked_int(a, "HealthCheckInterval", 1, 50)
    if interval is not None:
        hc["IntervalTime"] = max(interval, 5)
        if interval < 5:
            a.err(
                "HealthCheckInterval",
                Code.RANGE,
                f"HealthCheckInterval {interval} is under the 5 s this product probes at; 5 s is used",
                "warning",
            )
    timeout = a.integer("HealthCheckTimeout", 1, 300)
    if timeout is not None:
        if 2 <= timeout <= 60:
            hc["TimeOut"] = timeout
        else:
            a.err(
                "HealthCheckTimeout",
                Code.RANGE,
                f"HealthCheckTimeout {timeout} is outside 2-60; the default (2 s) is used",
                "warning",
            )
    return hc


def _rule(a: _Params, ctx: Context, lb_id: str) -> dict[str, Any]:
    port = a.integer("BackendServerPort", 1, 65535)
    targets = [{"EniIp": ip, "Port": p or port or 80, "Weight": w} for ip, p, w in ctx.backends]
    if not targets:
        a.err(
            "VServerGroupId",
            Code.MISSING_PARAMETER,
            "the request names no backend servers; give them with --backend IP[:PORT][,WEIGHT]",
            "warning",
        )
    rule: dict[str, Any] = {
        "LocationId": f"{lb_id}-loc-default",
        "Domain": ctx.domain,
        "Url": "/",
        "DefaultServer": True,
        "Http2": a.on("EnableHttp2"),
        "HttpGzip": a.on("Gzip", True),
        "XForwardedFor": a.on("XForwardedFor", True),
        "HealthCheck": _health_check(a),
        "Targets": targets,
    }
    scheduler = (a.text("Scheduler") or "wrr").lower()
    if scheduler not in SCHEDULERS:
        a.err(
            "Scheduler", Code.INVALID_VALUE, f"scheduler {scheduler!r:.40} has no equivalent here (wrr, rr, wlc, sch)"
        )
    else:
        rule["Scheduler"] = SCHEDULERS[scheduler]
    if a.on("StickySession"):
        if a.text("StickySessionType") == "insert" and (timeout := a.integer("CookieTimeout", 1, 86400)):
            rule["SessionExpireTime"] = min(max(timeout, 30), 3600)
            if rule["SessionExpireTime"] != timeout:
                a.err(
                    "CookieTimeout",
                    Code.RANGE,
                    f"CookieTimeout {timeout} is outside the 30-3600 s inserted-cookie persistence lasts here; "
                    f"{rule['SessionExpireTime']} s is used",
                    "warning",
                )
        elif a.text("StickySessionType") == "server" and a.text("Cookie"):
            rule["SessionCookieName"] = a.text("Cookie")
    return rule


def clean_id(raw: str) -> str:
    """Documented sample IDs are masked with '*'; IDs become file names, so '*' becomes 'x'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "x", raw)


def _sanitize_id(a: _Params, name: str) -> str:
    raw = a.text(name) or ""
    clean = clean_id(raw)
    if clean != raw:
        a.err(
            name,
            Code.FORMAT_ERROR,
            f"ID {raw!r:.80} imported as {clean!r:.80} (only letters, digits, '_.-' are kept)",
            "warning",
        )
    return clean


def convert(params: dict[str, str], ctx: Context) -> tuple[dict[str, Any] | None, list[Issue]]:
    """The clbagent document for a CreateLoadBalancerHTTPSListener request, or None with the errors."""
    a = _Params(params)
    ids = _server_cert_ids(a)
    _check_request(a, ctx, ids)
    lb_id = _sanitize_id(a, "LoadBalancerId")
    listener_port = a.integer("ListenerPort", 1, 65535)
    ca = _sanitize_id(a, "CACertificateId") or None
    certificate: dict[str, Any] = {"SSLMode": "MUTUAL" if ca else "UNIDIRECTIONAL"}
    if ids:
        certificate["CertId"] = ids[0]
    if ca:
        certificate["CertCaId"] = ca
    listener: dict[str, Any] = {
        "ListenerId": f"{lb_id}-https-{listener_port}",
        "ListenerName": a.text("Description") or f"HTTPS_{listener_port}",
        "Protocol": "HTTPS",
        "Port": listener_port,
        "Certificate": certificate,
        "XForwardedFor_SLBIP": a.on("XForwardedFor_SLBIP"),
        "XForwardedFor_SLBID": a.on("XForwardedFor_SLBID"),
        "XForwardedFor_proto": a.on("XForwardedFor_proto"),
        "AclStatus": "on" if a.on("AclStatus") else "off",
        "ListenerStatus": "stopped",
        "Rules": [_rule(a, ctx, lb_id)],
    }
    for name in ("TLSCipherPolicy", "AclType"):
        if a.text(name):
            listener[name] = a.text(name)
    if a.text("AclId"):
        listener["AclId"] = _sanitize_id(a, "AclId")
    for name, low, high, code in (
        ("IdleTimeout", 1, 60, Code.ALI_IDLE_TIMEOUT),
        ("RequestTimeout", 1, 180, Code.ALI_REQUEST_TIMEOUT),
    ):
        value = a.integer(name, low, high, code)
        if value is not None:
            listener[name] = value
    doc = ctx.existing if ctx.existing is not None else {"LoadBalancerId": lb_id, "LoadBalancerVips": ctx.vips}
    for other in doc.get("Listeners") or []:
        # an HTTPS listener shares its port with no other listener, a UDP one included
        if isinstance(other, dict) and str(other.get("Port")) == str(listener_port):
            a.err("ListenerPort", Code.ALI_PORT_CONFLICT, f"port {listener_port} is already used by a listener")
    a.err(
        "ListenerStatus",
        Code.INVALID_PARAMETER,
        "the listener is created stopped, as Alibaba does; set ListenerStatus: running to start forwarding",
        "warning",
    )
    issues = a.issues
    if any(i.severity == "error" for i in issues):
        return None, issues
    doc = dict(doc)
    doc["Listeners"] = [*(doc.get("Listeners") or []), listener]
    return doc, issues
