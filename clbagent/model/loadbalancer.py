"""The document: one load balancer with its listeners, plus objects it may carry along."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from clbagent.errors import Code
from clbagent.model.base import Obj
from clbagent.model.certificate import Certificate, CertificateInput
from clbagent.model.extras import Acl, AutoRewrite, CustomizedConfig, RewriteLocationMap, TLSPolicy
from clbagent.model.listener import Listener
from clbagent.model.syntax import fail
from clbagent.model.types import Ident, Unicast, _upper_enum

NAME = re.compile(r"^[A-Za-z0-9_\-\u4e00-\u9fff]+$")


def _ip_version(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("ipv4", "ipv6"):
        return value.upper()
    return value


class SharedObjects(Obj):
    """Objects addressed by ID that load balancers reference: certificates, personalized configs,
    TLS policies and ACLs. A file holding only these has no ``LoadBalancerId``."""

    certificates: list[Certificate] = Field(default_factory=list, alias="Certificates")
    customized_configs: list[CustomizedConfig] = Field(default_factory=list, alias="CustomizedConfigs")
    tls_policies: list[TLSPolicy] = Field(default_factory=list, alias="TLSPolicies")
    acls: list[Acl] = Field(default_factory=list, alias="Acls")


class LoadBalancer(SharedObjects):
    """One CLB instance: the unit of validation, rendering and quarantine."""

    V2_KEYS = {"loadBalancerId": "LoadBalancerId", "loadBalancerName": "LoadBalancerName"}
    OUTPUT_ONLY = frozenset(
        {
            "Forward", "Domain", "Status", "CreateTime", "StatusTime", "ProjectId", "VpcId",
            "NumericalVpcId", "OpenBgp", "Snat", "Isolation", "IsolatedTime", "Log", "SubnetId",
            "Tags", "SecureGroups", "TargetRegionInfo", "AnycastZone", "VipIsp", "VipIspId",
            "VipIspName", "VipIspAlias", "MasterZone", "BackupZoneSet", "ExpireTime", "ChargeType",
            "NetworkAttributes", "PrepaidAttributes", "LogSetId", "LogTopicId", "ExtraInfo", "IsDDos",
            "ExclusiveCluster", "SlaType", "IsBlock", "IsBlockTime", "AttributeFlags", "TgwSetLabels",
            "StgwSetLabels", "Zones", "NfvInfo", "HealthLogSetId", "HealthLogTopicId", "LocalBgp",
            "ClusterTag",
        }
    )  # fmt: skip

    load_balancer_id: Ident = Field(alias="LoadBalancerId")
    load_balancer_name: str | None = Field(None, alias="LoadBalancerName")
    load_balancer_type: Annotated[Literal["OPEN", "INTERNAL"], BeforeValidator(_upper_enum)] = Field(
        "OPEN", alias="LoadBalancerType"
    )
    load_balancer_vips: list[Unicast] = Field(alias="LoadBalancerVips", min_length=1, max_length=64)
    address_ip_version: Annotated[Literal["IPV4", "IPV6", "IPv6FullChain"], BeforeValidator(_ip_version)] = Field(
        "IPV4", alias="AddressIPVersion"
    )
    mix_ip_target: bool = Field(False, alias="MixIpTarget", description="IPv6FullChain L7 with IPv4 targets")
    forward_method: Annotated[Literal["NAT", "DR", "TUN"], BeforeValidator(_upper_enum)] = Field(
        "NAT", alias="ForwardMethod", description="L4 packet forwarding method (IPVS)"
    )
    config_id: Ident | None = Field(None, alias="ConfigId", description="bound personalized config")
    listeners: list[Listener] = Field(default_factory=list, alias="Listeners")
    rewrites: list[RewriteLocationMap] = Field(default_factory=list, alias="Rewrites")
    auto_rewrites: list[AutoRewrite] = Field(default_factory=list, alias="AutoRewrites")

    @field_validator("load_balancer_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not 1 <= len(v) <= 50:
            raise fail(Code.LENGTH, "name must be 1-50 characters")
        if not NAME.match(v):
            raise fail(Code.FORMAT_ERROR, "name may only contain letters, Chinese characters, digits, '-', '_'")
        return v

    @property
    def id(self) -> str:
        return self.load_balancer_id

    def certificate_slots(self) -> Iterator[tuple[CertificateInput, str]]:
        """Every ``Certificate`` of a listener or rule, with its document path."""
        for lis in self.listeners:
            if lis.certificate is not None:
                yield lis.certificate, lis.at("Certificate")
            for rule in lis.rules or []:
                if rule.certificate is not None:
                    yield rule.certificate, rule.at("Certificate")

    @property
    def is_ipv6(self) -> bool:
        return self.address_ip_version != "IPV4"
