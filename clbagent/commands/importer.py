"""`clbagent import alibaba-https`: convert an Alibaba CreateLoadBalancerHTTPSListener request."""

from __future__ import annotations

from typing import Any

from clbagent.commands import EXIT_UNAVAILABLE


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="convert another vendor's request into a document",
        description="Convert another vendor's listener request into a clbagent document.",
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    k = kinds.add_parser(
        "alibaba-https",
        help="Alibaba CreateLoadBalancerHTTPSListener parameters",
        description="Read CreateLoadBalancerHTTPSListener parameters (query string or JSON).",
    )
    k.set_defaults(run=lambda args: EXIT_UNAVAILABLE)
