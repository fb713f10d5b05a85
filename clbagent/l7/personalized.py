"""Personalized config (T1909-T1972) placed at the right level of each server of its instance.

The text was parsed and checked against the whitelist by ``clbagent.personalized_config``; here the
(name, args) pairs are sorted into levels. Nothing is pasted: the template writes every argument
through the quoting function.

- ``ssl_protocols`` / ``ssl_ciphers`` feed the TLS policy resolution, ``ssl_verify_depth`` the
  mutual-TLS servers;
- ``proxy_set_header`` joins the headers sent to backends (the documented variables ``$vport``,
  ``$stgw_request_id`` and ``$lbid`` are translated to what nginx has);
- ``add_header`` is rendered together with every other ``add_header`` of a location (nginx drops
  inherited ``add_header`` lines as soon as a level has its own);
- the rest goes into the ``server{}`` block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clbagent.model import LoadBalancer
from clbagent.personalized_config import Directive, parse_customized
from clbagent.validate.catalog import Catalog

TLS_NAMES = frozenset({"ssl_protocols", "ssl_ciphers", "ssl_verify_depth"})
DEFAULT_VERIFY_DEPTH = 1


@dataclass
class Personalized:
    directives: list[Directive] = field(default_factory=list)  # all, as parsed (TLS resolution reads them)
    server: list[Directive] = field(default_factory=list)
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    proxy_headers: list[tuple[str, str]] = field(default_factory=list)
    verify_depth: int = DEFAULT_VERIFY_DEPTH


def translate(value: str, lb_id: str) -> str:
    """The documented STGW variables in terms of stock nginx."""
    return {"$vport": "$server_port", "$stgw_request_id": "$request_id", "$lbid": lb_id}.get(value, value)


def personalized_for(lb: LoadBalancer, catalog: Catalog) -> Personalized:
    conf = catalog.customized_configs.get(lb.config_id) if lb.config_id else None
    out = Personalized()
    if conf is None:
        return out
    directives, _ = parse_customized(conf.config_content)  # problems made the document invalid already
    out.directives = directives
    for d in directives:
        if d.name == "ssl_verify_depth":
            out.verify_depth = int(d.args[0])
        elif d.name in TLS_NAMES:
            continue
        elif d.name == "add_header":
            out.add_headers.append((d.args[0], d.args[1]))
        elif d.name == "proxy_set_header":
            out.proxy_headers.append((d.args[0], translate(d.args[1], lb.id)))
        else:
            out.server.append(d)
    return out


def without(directives: list[Directive], names: set[str]) -> list[Directive]:
    return [d for d in directives if d.name not in names]
