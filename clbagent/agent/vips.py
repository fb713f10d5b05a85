"""VIPs must be local addresses before nginx can even pass ``nginx -t`` (it binds them).

Addresses that are already local (loopback, or on any interface) need nothing. Others go on the
dummy interface through the L4 host setup; where that cannot be done (no dummy interface support,
no CAP_NET_ADMIN) the reason is returned per load balancer, and the nginx test that follows
quarantines exactly the load balancers whose VIPs are missing.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import ip_address

import psutil


@lru_cache(maxsize=65536)
def _loopback(vip: str) -> bool:
    return ip_address(vip).is_loopback


def local_addresses(exclude_interface: str = "") -> set[str]:
    return {
        str(ip_address(a.address.split("%")[0]))
        for name, addrs in psutil.net_if_addrs().items()
        if name != exclude_interface
        for a in addrs
        if a.family.name in ("AF_INET", "AF_INET6")
    }


def is_local(vip: str, interface: str) -> bool:
    """Local without our dummy interface: loopback, or an address of another interface."""
    return _loopback(vip) or vip in local_addresses(interface)


def prepare_vips(vips: dict[str, str], interface: str, l4_available: bool) -> dict[str, str]:
    """Put missing VIPs on the dummy interface (never removing any here). Returns, per load
    balancer, why one of its VIPs could not be added."""
    candidates = [v for v in vips if not _loopback(v)]
    if not candidates:
        return {}
    others = local_addresses(interface)
    missing = sorted(v for v in candidates if v not in others)
    if not missing:
        return {}
    try:
        from clbagent.l4 import host

        host.sync_vips(set(missing) | host.vips_on(interface), interface, remove=False)
        return {}
    except Exception as exc:  # reported per load balancer, nginx -t decides
        reason = f"VIP could not be added to {interface}: {exc}"
        return {vips[v]: reason for v in missing}
