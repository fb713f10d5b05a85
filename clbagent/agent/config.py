"""The agent's own configuration file (YAML). Only ``documents`` and ``state_dir`` are things a user
must know; every other key has a default that ``clbagent config --defaults`` prints."""

from __future__ import annotations

import re
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from clbagent.settings import load_yaml_model

DEFAULT_CONFIG = Path("/etc/clbagent/agent.yaml")
_ENDPOINT = re.compile(r"unix://\S+|(https?://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}")
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare ``on``/``off`` as a boolean; take it as the word the operator wrote."""
    return ("on" if value else "off") if isinstance(value, bool) else value


class ConfigError(ValueError):
    """The agent configuration file is missing, unreadable or invalid."""


class AgentConfig(BaseModel):
    """Where the agent reads its desired state, keeps its state and talks to operators."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    documents: Path = Field(Path("/etc/clbagent/documents"), description="directory of desired-state documents")
    state_dir: Path = Field(
        Path("/var/lib/clbagent"), description="last good state, nginx generations and prefix (root-only)"
    )
    cert_dir: Path | None = Field(None, description="where CertFile paths may point (default: the documents)")
    settings: Path | None = Field(None, description="validation settings YAML (limits where the documents disagree)")
    status_socket: Path = Field(Path("/run/clbagent/status.sock"), description="root-only unix socket of `status`")
    metrics_address: str = Field("127.0.0.1:9489", description="Prometheus endpoint host:port ('' = off)")
    nginx_binary: str = Field("/usr/sbin/nginx", description="the nginx executable")
    worker_shutdown_timeout: str = Field("60s", description="how long old nginx workers may drain after a reload")
    reload_timeout: float = Field(60.0, gt=0, description="seconds a reload may take before it counts as failed")
    keep_generations: int = Field(5, ge=2, description="nginx generations kept for rollback")
    wait_min: float = Field(0.2, ge=0, description="quiescence: apply when nothing changed for this long (s)")
    wait_max: float = Field(2.0, gt=0, description="quiescence: apply at the latest this long after a change (s)")
    resync_interval: float = Field(30.0, gt=0, description="periodic repair of IPVS, nginx and generated files (s)")
    watch: Literal["auto", "inotify", "poll"] = Field("auto", description="how the documents directory is watched")
    upstreams: Literal["auto", "dynamic", "static"] = Field(
        "auto", description="dynamic: targets change without reloads (Lua); auto = dynamic when the Lua module exists"
    )
    l4: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = Field(
        "auto", description="IPVS for TCP/UDP; auto = when ip_vs is loadable"
    )
    vip_interface: str = Field("clb0", description="dummy interface that holds the VIPs")
    drain_timeout: float = Field(300.0, ge=0, description="seconds a removed L4 target drains before deletion")
    source: Literal["files", "etcd"] = Field("files", description="desired state from `documents` or from etcd")
    etcd_endpoints: list[str] = Field(
        ["127.0.0.1:2379"], min_length=1, description="etcd: host:port, https://host:port or unix:///path, in turn"
    )
    etcd_prefix: str = Field("/clb/desired/", description="etcd: the desired-state documents are the keys under this")
    etcd_status_prefix: str = Field("/clb/status/", description="etcd: where each agent writes its results")
    etcd_ca_file: Path | None = Field(None, description="etcd: CA bundle that signs the server (TLS)")
    etcd_cert_file: Path | None = Field(None, description="etcd: client certificate (TLS, with etcd_key_file)")
    etcd_key_file: Path | None = Field(None, description="etcd: client private key")
    etcd_lease_ttl: int = Field(15, ge=5, le=3600, description="etcd: seconds a silent agent's status outlives it")
    etcd_timeout: float = Field(5.0, gt=0, description="etcd: seconds one request may take")
    agent_name: str = Field("", description="this host in the status keys ('' = the host name)")

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            if not _ENDPOINT.fullmatch(endpoint):
                raise ValueError(f"{endpoint!r} is not host:port, http(s)://host:port or unix:///path")
        return value

    @field_validator("etcd_prefix", "etcd_status_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.strip("/") or not value.isprintable():
            raise ValueError("must be a printable key prefix such as /clb/desired/")
        return value if value.endswith("/") else f"{value}/"

    @field_validator("agent_name")
    @classmethod
    def _agent_name(cls, value: str) -> str:
        if value and not _AGENT_NAME.fullmatch(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _etcd_consistent(self) -> AgentConfig:
        a, b = self.etcd_prefix, self.etcd_status_prefix
        if a.startswith(b) or b.startswith(a):
            raise ValueError("etcd_prefix and etcd_status_prefix must not contain one another")
        if (self.etcd_cert_file is None) != (self.etcd_key_file is None):
            raise ValueError("etcd_cert_file and etcd_key_file go together")
        return self

    @field_validator("metrics_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            host, _, port = value.rpartition(":")
            try:
                ip_address(host.strip("[]"))
                ok = port.isdigit() and 0 < int(port) < 65536
            except ValueError:
                ok = False
            if not ok:
                raise ValueError("must be IP:PORT, e.g. 127.0.0.1:9489")
        return value

    @field_validator("worker_shutdown_timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not value or not value.rstrip("smhd").isdigit() or value[-1:] not in "smhd0123456789":
            raise ValueError("must be an nginx time such as 60s or 5m")
        return value

    @property
    def nginx_root(self) -> Path:
        return self.state_dir / "nginx"

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        if not self.metrics_address:
            return None
        host, _, port = self.metrics_address.rpartition(":")
        return host.strip("[]"), int(port)

    @classmethod
    def load(cls, path: Path | None) -> AgentConfig:
        """Read the config file; ``None`` means every default. Errors become :class:`ConfigError`."""
        if path is None:
            return cls()
        config = load_yaml_model(cls, path, "agent config", ConfigError)
        base = path.resolve().parent
        return config.model_copy(
            update={
                name: base / value
                for name in (
                    "documents",
                    "state_dir",
                    "cert_dir",
                    "settings",
                    "status_socket",
                    "etcd_ca_file",
                    "etcd_cert_file",
                    "etcd_key_file",
                )
                if isinstance(value := getattr(config, name), Path) and not value.is_absolute()
            }
        )

    def to_yaml(self) -> str:
        """The configuration as commented YAML (what ``clbagent config --defaults`` prints)."""
        out = []
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            value = str(value) if isinstance(value, Path) else value
            out.append(f"# {info.description}\n{yaml.safe_dump({name: value}, sort_keys=False)}")
        return "".join(out)
