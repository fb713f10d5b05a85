"""Host setup for the L4 path: the VIPs on a dummy interface, sysctls, IPVS timeouts, sync daemon.

The VIPs live on a dummy interface (``clb0``) so that the host accepts packets for them (IPVS
hooks at LOCAL_IN) and nginx can bind them for L7. Only addresses on that interface are ever
added or removed. Everything goes through pyroute2's IPRoute, in the current network namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from clbagent.l4.kernel import IpvsKernel, SyncDaemon

DUMMY = "clb0"
IFA_F_NODAD = 0x02
TCP_IDLE_TIMEOUT = 900  # SPEC B-6.4: fixed, not adjustable

# What the L4 data plane needs. conntrack keeps netfilter entries for IPVS connections (so that
# firewall rules and NAT on the director see them); expire_nodest_conn drops a connection whose
# destination was deleted (DeregisterTargetRst: the client's next packet is answered with a reset);
# expire_quiescent_template lets persistent clients of a weight-0 (drained or down) destination
# move on instead of staying pinned to it.
SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
}


@dataclass(frozen=True)
class SyncConfig:
    """Connection sync daemon for session sync across a cluster of gateway hosts."""

    state: str  # master | backup
    interface: str
    sync_id: int = 0


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def apply_sysctls(values: dict[str, str] | None = None) -> dict[str, str]:
    """Write the sysctls that differ; returns the previous values of those changed."""
    changed: dict[str, str] = {}
    for name, value in (values or SYSCTLS).items():
        path = _sysctl_path(name)
        old = path.read_text().strip()
        if old != value:
            path.write_text(f"{value}\n")
            changed[name] = old
    return changed


def ensure_dummy(ifname: str = DUMMY) -> int:
    """Create the dummy interface if missing and bring it up; returns its index."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            ipr.link("add", ifname=ifname, kind="dummy")
            found = ipr.link_lookup(ifname=ifname)
        index = found[0]
        ipr.link("set", index=index, state="up")
        return index


def vips_on(ifname: str = DUMMY) -> frozenset[str]:
    """The addresses currently on the dummy interface (the VIPs this host owns)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return frozenset()
        # Global scope only: the kernel's own link-local IPv6 address is not a VIP.
        return frozenset(str(ip_address(a.get("IFA_ADDRESS"))) for a in ipr.get_addr(index=found[0]) if a["scope"] == 0)


def sync_vips(vips: Iterable[str], ifname: str = DUMMY, remove: bool = True) -> tuple[list[str], list[str]]:
    """Make the dummy interface hold exactly ``vips`` (host routes: /32, /128 without DAD).
    Returns (added, removed). Call with ``remove=False`` before an IPVS pass, and with
    ``remove=True`` after it, so that services of a removed VIP are cleaned up first."""
    from pyroute2 import IPRoute

    want = {str(ip_address(v)) for v in vips}
    index = ensure_dummy(ifname)
    have = vips_on(ifname)
    added, removed = sorted(want - have), sorted(have - want) if remove else []
    with IPRoute() as ipr:
        for addr in added:
            v6 = ip_address(addr).version == 6
            ipr.addr("add", index=index, address=addr, prefixlen=128 if v6 else 32, flags=IFA_F_NODAD if v6 else 0)
        for addr in removed:
            ipr.addr("del", index=index, address=addr, prefixlen=128 if ip_address(addr).version == 6 else 32)
    return added, removed


def configure_ipvs(kernel: IpvsKernel, sync: SyncConfig | None = None, tcp_timeout: int = TCP_IDLE_TIMEOUT) -> None:
    """IPVS TCP idle timeout and, when asked, the connection sync daemon (restarted if different)."""
    if kernel.timeouts()["tcp"] != tcp_timeout:
        kernel.set_timeouts(tcp=tcp_timeout)
    if sync is None:
        return
    want = SyncDaemon(sync.state, sync.interface, sync.sync_id)
    for daemon in kernel.sync_daemons():
        if daemon.state == sync.state and daemon != want:
            kernel.stop_sync_daemon(daemon.state)
    if want not in kernel.sync_daemons():
        kernel.start_sync_daemon(sync.state, sync.interface, sync.sync_id)
