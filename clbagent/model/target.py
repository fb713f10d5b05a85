"""Target: one backend (IP and port) with a weight."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from pydantic import Field

from clbagent.model.base import Obj
from clbagent.model.types import Port, Unicast, Weight


class Target(Obj):
    """A backend. The agent needs an address: ``EniIp`` or the first of ``PrivateIpAddresses``.

    ``InstanceId`` / ``InstanceBmsId`` name a CVM or bare-metal server and are kept as metadata;
    exactly one identity (InstanceId, EniIp, InstanceBmsId) is allowed (R75).
    """

    V2_KEYS = {"instanceId": "InstanceId", "port": "Port", "weight": "Weight", "eniIp": "EniIp"}
    OUTPUT_ONLY = frozenset({"InstanceName", "PublicIpAddresses", "RegisteredTime", "EniId"})

    type: str | None = Field(None, alias="Type", description="CVM | ENI | BMS; ignored as input (T10091)")
    instance_id: str | None = Field(None, alias="InstanceId", max_length=64)
    eni_ip: Unicast | None = Field(None, alias="EniIp")
    instance_bms_id: str | None = Field(None, alias="InstanceBmsId", max_length=64)
    private_ip_addresses: list[Unicast] | None = Field(None, alias="PrivateIpAddresses", min_length=1, max_length=8)
    port: Port = Field(alias="Port")
    weight: Weight = Field(10, alias="Weight")

    @property
    def address(self) -> IPv4Address | IPv6Address | None:
        if self.eni_ip is not None:
            return self.eni_ip
        if self.private_ip_addresses:
            return ip_address(self.private_ip_addresses[0])
        return None

    @property
    def kind(self) -> str:
        if self.eni_ip is not None:
            return "ENI"
        return "BMS" if self.instance_bms_id else "CVM"

    @property
    def endpoint(self) -> str:
        """``ip:port`` with IPv6 in brackets, as nginx and ipvsadm write it."""
        addr = self.address
        host = f"[{addr}]" if isinstance(addr, IPv6Address) else str(addr)
        return f"{host}:{self.port}"
