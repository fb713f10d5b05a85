"""Redirects: manual (rule → rule, 301/302/307, keep the URL or not) and automatic (HTTPS:443 →
an HTTP:80 listener answering every chosen domain with a redirect), T1855-T1903."""

from __future__ import annotations

from dataclasses import dataclass

from clbagent.model import Listener, LoadBalancer, Rule

from .quote import UnsafeTextError

DEFAULT_CODE = 301


@dataclass(frozen=True)
class AutoRedirect:
    domain: str
    code: int
    take_url: bool


def _origin(lis: Listener, host: str) -> str:
    scheme = lis.protocol.lower()
    port = "" if (scheme, lis.port) in (("http", 80), ("https", 443)) else f":{lis.port}"
    return f"{scheme}://{host}{port}"


def manual_redirects(lb: LoadBalancer) -> dict[str, tuple[str, str]]:
    """Source LocationId → (status, Location URL)."""
    rules: dict[str, tuple[Listener, Rule]] = {
        r.id: (lis, r) for lis in lb.listeners if not lis.is_l4 for r in lis.rules or []
    }
    out: dict[str, tuple[str, str]] = {}
    for rw in lb.rewrites:
        target = rules.get(rw.target_location_id)
        if target is None:
            continue
        lis, rule = target
        user = [rule.domain] if rw.take_url else [rule.domain, rule.parsed_url.pattern]
        if any("$" in text for text in user):  # nginx would read "$name" in a return URL as a variable
            raise UnsafeTextError(f"redirect target {rule.id} has '$' in the domain or URL the redirect names")
        path = "$request_uri" if rw.take_url else rule.parsed_url.pattern
        out[rw.source_location_id] = (str(rw.rewrite_code or DEFAULT_CODE), _origin(lis, rule.domain) + path)
    return out


def auto_redirects(lb: LoadBalancer) -> list[AutoRedirect]:
    """Every (domain, code, keep-URL) the HTTP:80 side must answer, in document order."""
    by_id = {lis.id: lis for lis in lb.listeners}
    out: list[AutoRedirect] = []
    for ar in lb.auto_rewrites:
        lis = by_id.get(ar.listener_id)
        if lis is None:
            continue
        domains = ar.domains if ar.domains is not None else list(dict.fromkeys(r.domain for r in lis.rules or []))
        for i, domain in enumerate(domains):
            code = _pick(ar.rewrite_codes, i, DEFAULT_CODE)
            take = _pick(ar.take_urls, i, True)
            out.append(AutoRedirect(domain, code, take))
    return out


def auto_location(redirect: AutoRedirect) -> tuple[str, str]:
    """(status, URL) of an auto-redirect: to HTTPS:443 on the host the client asked for."""
    return str(redirect.code), "https://$host" + ("$request_uri" if redirect.take_url else "/")


def _pick(values: list | None, i: int, default):
    if not values:
        return default
    return values[i] if len(values) > 1 else values[0]
