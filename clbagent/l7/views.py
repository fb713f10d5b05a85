"""The data the templates render: plain records, no logic. Text fields that came from users are
written by the templates through the quoting function."""

from __future__ import annotations

from dataclasses import dataclass, field

from clbagent.personalized_config import Directive

from .server_tls import TlsBlock


@dataclass
class Location:
    modifier: str  # "", "=", "^~", "~", "~*" (ours, never user text)
    pattern: str
    comment: str = ""
    proxy_pass: str | None = None  # "http://u_x" or "http://$clb_pin_x"
    returns: tuple[str, ...] = ()  # ("301", url) / ("404",)
    gzip_off: bool = False
    proxy_headers: list[tuple[str, str]] | None = None
    add_headers: list[tuple[str, str, bool]] = field(default_factory=list)
    scope: str | None = None  # metrics scope of the rule (configuration IDs, docs/metrics.md)


@dataclass(frozen=True)
class Listen:
    address: str  # "127.0.0.1:80" or "[::1]:443"
    default: bool = False
    ssl: bool = False
    http2: bool = False


@dataclass
class ServerBlock:
    comment: str
    listens: list[Listen]
    names: list[str] = field(default_factory=list)
    tls: TlsBlock | None = None
    reject_handshake: bool = False
    deny_var: str | None = None  # "$clb_acl_..." = "1" for clients the ACL refuses
    directives: list[Directive] = field(default_factory=list)
    locations: list[Location] = field(default_factory=list)
    returns: tuple[str, ...] = ()  # server-level return (refusing default server)
    scope: str | None = None  # metrics scope of the server's own answers (docs/metrics.md)
