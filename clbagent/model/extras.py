"""Instance-level objects: redirects, personalized configs, TLS policies and ACLs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clbagent.model.base import Obj
from clbagent.model.types import Ident, Network, RedirectCode


class RewriteLocationMap(Obj):
    """A manual redirect from one rule to another (T9351-T9355)."""

    V2_KEYS = {"sourceLocation": "SourceLocationId", "targetLocation": "TargetLocationId"}

    source_location_id: Ident = Field(alias="SourceLocationId")
    target_location_id: Ident = Field(alias="TargetLocationId")
    rewrite_code: RedirectCode | None = Field(None, alias="RewriteCode")
    take_url: bool | None = Field(None, alias="TakeUrl")
    source_domain: str | None = Field(None, alias="SourceDomain", max_length=255)


class AutoRewrite(Obj):
    """Redirect HTTP:80 to the HTTPS:443 listener for its domains (T7110, T7126-T7130)."""

    listener_id: Ident = Field(alias="ListenerId")
    domains: list[str] | None = Field(None, alias="Domains", description="default: every domain")
    rewrite_codes: list[RedirectCode] | None = Field(None, alias="RewriteCodes")
    take_urls: list[bool] | None = Field(None, alias="TakeUrls")


class CustomizedConfig(Obj):
    """A personalized config: a whitelist of nginx directives as text (T1909-T1972)."""

    config_id: Ident = Field(alias="ConfigId")
    config_name: str | None = Field(None, alias="ConfigName", max_length=200)
    config_content: str = Field("", alias="ConfigContent")


class TLSPolicy(Obj):
    """A custom TLS policy, referenced by ``TLSCipherPolicy`` like the five named ones."""

    policy_id: Ident = Field(alias="TLSCipherPolicyId")
    tls_versions: list[Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]] = Field(alias="TLSVersions", min_length=1)
    ciphers: list[str] = Field(alias="Ciphers", min_length=1, max_length=64)


class AclEntry(Obj):
    entry: Network = Field(alias="Entry")
    comment: str | None = Field(None, alias="Comment", max_length=256)


class Acl(Obj):
    """A network ACL (list of CIDRs), attached to listeners as a white or black list."""

    acl_id: Ident = Field(alias="AclId")
    acl_name: str | None = Field(None, alias="AclName", max_length=256)
    address_ip_version: Literal["ipv4", "ipv6"] = Field("ipv4", alias="AddressIPVersion")
    acl_entries: list[AclEntry] = Field(default_factory=list, alias="AclEntries", max_length=1000)
