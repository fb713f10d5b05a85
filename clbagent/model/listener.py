"""Listener and Rule (location): the shapes of DescribeListeners output, as desired state."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from clbagent.model.certificate import CertificateInput
from clbagent.model.health import HealthCheck, WithHealthCheck
from clbagent.model.syntax import Domain, Url, parse_domain, parse_url, settings_of
from clbagent.model.target import Target
from clbagent.model.types import (
    L4_PROTOCOLS,
    ForwardType,
    Ident,
    ListenerEndPort,
    ListenerPort,
    Protocol,
    Scheduler,
    SessionExpire,
    Switch,
    TargetType,
    _lower_enum,
)

OnOff = Annotated[Literal["on", "off"], BeforeValidator(_lower_enum)]


class Rule(WithHealthCheck):
    """A forwarding rule of an HTTP/HTTPS listener: domain + URL with its own targets."""

    V2_KEYS = {
        "locationId": "LocationId",
        "domain": "Domain",
        "url": "Url",
        "sessionExpire": "SessionExpireTime",
        "httpHash": "Scheduler",
    }
    OUTPUT_ONLY = frozenset(
        {"ListenerId", "RewriteTarget", "BeAutoCreated", "CreateTime", "TargetGroup", "WafDomainId", "QuicStatus"}
    )

    location_id: Ident | None = Field(None, alias="LocationId", description="default: derived from Domain+Url")
    domain: str = Field(alias="Domain")
    url: str = Field("/", alias="Url")
    default_server: bool = Field(False, alias="DefaultServer")
    http2: bool = Field(False, alias="Http2")
    scheduler: Scheduler = Field("WRR", alias="Scheduler")
    session_expire_time: SessionExpire = Field(0, alias="SessionExpireTime")
    session_cookie_name: str | None = Field(
        None,
        alias="SessionCookieName",
        pattern=r"^[A-Za-z0-9]{1,200}$",
        description="server-cookie persistence: route by a cookie the backend sets (Alibaba 'server')",
    )
    health_check: HealthCheck = Field(default_factory=HealthCheck, alias="HealthCheck")
    certificate: CertificateInput | None = Field(None, alias="Certificate")
    forward_type: ForwardType = Field("HTTP", alias="ForwardType")
    target_type: TargetType | None = Field(None, alias="TargetType", description="NODE only")
    trpc_callee: str | None = Field(None, alias="TrpcCallee", max_length=200)
    trpc_func: str | None = Field(None, alias="TrpcFunc", max_length=200)
    http_gzip: bool = Field(True, alias="HttpGzip")
    x_forwarded_for: bool = Field(True, alias="XForwardedFor", description="'get client IP' switch")
    targets: list[Target] = Field(default_factory=list, alias="Targets")

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str, info: ValidationInfo) -> str:
        parse_domain(v, settings_of(info))
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        parse_url(v, settings_of(info))
        return v

    @property
    def parsed_domain(self) -> Domain:
        return parse_domain(self.domain)

    @property
    def parsed_url(self) -> Url:
        return parse_url(self.url)

    @property
    def id(self) -> str:
        if self.location_id:
            return self.location_id
        digest = hashlib.sha256(f"{self.domain}\n{self.url}".encode()).hexdigest()[:10]
        return f"loc-{digest}"


class Listener(WithHealthCheck):
    """A listener. L4 listeners carry targets and a health check; L7 listeners carry rules."""

    V2_KEYS = {
        "listenerId": "ListenerId",
        "listenerName": "ListenerName",
        "protocol": "Protocol",
        "loadBalancerPort": "Port",
        "sessionExpire": "SessionExpireTime",
        "scheduler": "Scheduler",
    }
    OUTPUT_ONLY = frozenset({"CreateTime", "TargetGroup", "SessionType", "Toa"})

    listener_id: Ident | None = Field(None, alias="ListenerId", description="default: lbl-<protocol>-<port>")
    listener_name: str | None = Field(None, alias="ListenerName", max_length=255)
    target_type: TargetType | None = Field(None, alias="TargetType", description="NODE only")
    protocol: Protocol = Field(alias="Protocol")
    port: ListenerPort = Field(alias="Port")
    end_port: ListenerEndPort = Field(0, alias="EndPort", description="0 = single port")
    scheduler: Scheduler | None = Field(None, alias="Scheduler", description="L4: WRR | LEAST_CONN")
    session_expire_time: SessionExpire | None = Field(None, alias="SessionExpireTime")
    sni_switch: Switch | None = Field(None, alias="SniSwitch")
    default_ser_switch: bool = Field(True, alias="DefaultSerSwitch")
    keepalive_enable: Switch | None = Field(None, alias="KeepaliveEnable")
    deregister_target_rst: bool | None = Field(None, alias="DeregisterTargetRst")
    health_check: HealthCheck | None = Field(None, alias="HealthCheck")
    certificate: CertificateInput | None = Field(None, alias="Certificate")
    tls_cipher_policy: Ident | None = Field(None, alias="TLSCipherPolicy")
    idle_timeout: int | None = Field(None, alias="IdleTimeout", ge=1, le=60, description="seconds")
    request_timeout: int | None = Field(None, alias="RequestTimeout", ge=1, le=180, description="504 after")
    acl_status: OnOff = Field("off", alias="AclStatus")
    acl_id: Ident | None = Field(None, alias="AclId")
    acl_type: Annotated[Literal["white", "black"], BeforeValidator(_lower_enum)] | None = Field(None, alias="AclType")
    x_forwarded_for_slbip: bool = Field(False, alias="XForwardedFor_SLBIP")
    x_forwarded_for_slbid: bool = Field(False, alias="XForwardedFor_SLBID")
    x_forwarded_for_proto: bool = Field(False, alias="XForwardedFor_proto")
    listener_status: Annotated[Literal["running", "stopped"], BeforeValidator(_lower_enum)] = Field(
        "running", alias="ListenerStatus", description="a stopped listener keeps its port but serves nothing"
    )
    targets: list[Target] | None = Field(None, alias="Targets")
    rules: list[Rule] | None = Field(None, alias="Rules")

    @property
    def is_l4(self) -> bool:
        return self.protocol in L4_PROTOCOLS

    @property
    def id(self) -> str:
        return self.listener_id or f"lbl-{self.protocol.lower()}-{self.port}"

    @property
    def effective_scheduler(self) -> str:
        return self.scheduler or "WRR"

    @property
    def persistence(self) -> int:
        return self.session_expire_time or 0

    @property
    def sni(self) -> bool:
        return self.sni_switch == 1
