"""The L4 apply step as the agent runs it: host setup, then one reconcile pass, then VIP cleanup."""

from __future__ import annotations

from clbagent.l4 import host
from clbagent.l4.kernel import IpvsKernel, load_modules
from clbagent.l4.plan import IpvsPlan
from clbagent.l4.reconcile import PassReport, Reconciler


class L4Applier:
    """Owns the kernel channel and the reconciler across passes (drain state lives in between)."""

    def __init__(
        self,
        ifname: str = host.DUMMY,
        drain_timeout: float = 300.0,
        sync: host.SyncConfig | None = None,
        sysctls: dict[str, str] | None = None,
    ):
        load_modules()
        host.apply_sysctls(sysctls)
        host.ensure_dummy(ifname)
        self.ifname = ifname
        self.kernel = IpvsKernel(load=False)
        host.configure_ipvs(self.kernel, sync)
        self.reconciler = Reconciler(self.kernel, drain_timeout)

    def apply(self, plan: IpvsPlan, full: bool = False) -> PassReport:
        """New VIPs go up before their services; VIPs that left go down only once their services
        are gone (a draining service keeps its VIP). ``full`` dumps the kernel table (repair)."""
        host.sync_vips(plan.vips, self.ifname, remove=False)
        report = self.reconciler.run(plan, host.vips_on(self.ifname), full)
        if report.ok and report.draining == 0:
            host.sync_vips(plan.vips, self.ifname, remove=True)
        return report

    def close(self) -> None:
        self.kernel.close()
