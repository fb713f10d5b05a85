"""Agent settings: every value where the CLB documents disagree is a setting with a default.

The conflict register of the requirements (C1-C32) lists values that differ between pages of the
documentation; clbagent does not hard-code one of them, it reads them from here (R160).
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)

RESERVED_PORTS = (843, 1020, 1433, 1434, 3306, 3389, 6006, 20000, 36000, 42222, 48369, 56000, 65010)


class Settings(BaseModel):
    """Tunable limits and defaults. Each field names the conflict it settles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain_max_length: int = Field(120, ge=1, le=255, description="C1: 120 (console) or 80 (strict API)")
    url_max_length: int = Field(120, ge=1, le=200, description="C2: 120 (console), 80 (V2) or 200 (V3)")
    health_domain_max_length: int = Field(120, ge=1, le=255, description="C3: 80 or 120")
    health_path_max_length: int = Field(120, ge=1, le=200, description="C4: 80, 120 or 200")
    domain_allow_underscore: bool = Field(True, description="C7: T1419 allows '_' in domains")
    health_check_method: Literal["GET", "HEAD"] = Field("GET", description="C10: GET (console) or HEAD")
    health_check_http_code: int = Field(31, ge=1, le=31, description="C17: 31 (API) or 15 (console)")
    reserved_ports: tuple[int, ...] = Field(RESERVED_PORTS, description="V-2.3 / C31")
    reject_reserved_ports: bool = True
    require_default_server: bool = Field(True, description="C32: switch on needs exactly one default")
    redirects_on_internal: bool = Field(True, description="C25: the matrix says public only")
    max_listeners: int = Field(50, ge=1)
    max_l7_rules: int = Field(50, ge=1)
    max_targets_per_rule: int = Field(100, ge=1, le=1024, description="dynamic upstreams hold at most 1,024")
    max_customized_configs: int = Field(200, ge=1, description="C13: 200 or 100")
    cert_expiry_warning_days: int = Field(30, ge=0)
    legacy_tls_default: bool = Field(
        False,
        description="HTTPS listeners naming no TLS policy get the documented CLB default (TLSv1-TLSv1.2 "
        "with 3DES, T1923/T1955; OpenSSL security level 0) instead of TLS 1.2+ at the normal level",
    )
    cert_dir: Path | None = Field(
        None,
        description="CertFile/CertKeyFile are read only inside this directory "
        "(default: the directory of the document naming them)",
    )
    cert_file_max_bytes: int = Field(65536, ge=1024, description="largest certificate or key file read")
    vip_ranges: tuple[IPv4Network | IPv6Network, ...] = Field(
        (), description="VIPs must lie in one of these ranges (empty: any unicast address, loopback included)"
    )
    target_ranges: tuple[IPv4Network | IPv6Network, ...] = Field(
        (), description="targets must lie in one of these ranges (empty: any unicast address, loopback included)"
    )
    max_document_bytes: int = Field(8 << 20, ge=1024, description="largest document file read")
    max_document_nodes: int = Field(1_000_000, ge=100, description="values in a document, YAML aliases expanded")
    max_documents_per_file: int = Field(10_000, ge=1, description="'---' separated documents in one file")
    max_document_depth: int = Field(32, ge=8, description="nesting of mappings and lists")
    max_list_length: int = Field(10_000, ge=100, description="items in one list")
    max_string_length: int = Field(262_144, ge=1024, description="characters in one string")

    @classmethod
    def load(cls, path: Path | None) -> Settings:
        """Read settings from a YAML file; a missing path means the documented defaults.
        Raises :class:`SettingsError` with one plain sentence when the file cannot be used."""
        if path is None:
            return cls()
        return load_yaml_model(cls, path, "settings file", SettingsError)


def load_yaml_model(model: type[M], path: Path, what: str, error: type[ValueError]) -> M:
    """A pydantic model from a YAML file of at most 1 MiB; every problem (unreadable, not YAML, not
    a mapping, an unknown or invalid key) is ``error`` with one plain sentence naming the key."""
    try:
        data = yaml.load(path.read_bytes()[: 1 << 20], Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must be a mapping of names to values")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        reason = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise error(f"{what} {path}: {where}: {reason}") from None


class SettingsError(ValueError):
    """A settings file that cannot be used: the agent refuses to start rather than guess."""


DEFAULT_SETTINGS = Settings()
