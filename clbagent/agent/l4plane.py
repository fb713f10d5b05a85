"""The IPVS side of an apply, on hosts that have it and on hosts that do not.

A host without ``ip_vs`` (a plain container, a kernel built without it) still serves L7: the L4
part is reported as unavailable, per load balancer, with the reason, never as a traceback.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from clbagent.agent.config import AgentConfig
from clbagent.agent.vips import is_local
from clbagent.l4 import IpvsPlan, ServiceKey

if TYPE_CHECKING:
    from clbagent.l4.kernel import IpvsKernel
    from clbagent.l4.stats import ServiceStats


@dataclass
class L4Result:
    error: str = ""
    operations: int = 0
    draining: int = 0


class L4Plane:
    def __init__(self, config: AgentConfig):
        self.config = config
        self._applier = None
        self.unavailable = "" if config.l4 != "off" else "IPVS is switched off in the agent config (l4: off)"
        self._tried = config.l4 == "off"
        self._last_full = -math.inf  # when a pass last compared with a dump of the kernel table
        self.plan = IpvsPlan()  # the plan the kernel was last brought to (what metrics map back to)
        self._stats_channel: IpvsKernel | None = None
        self._stats_lock = threading.Lock()

    @property
    def available(self) -> bool:
        if not self._tried:
            self._tried = True
            try:
                from clbagent.l4.apply import L4Applier

                self._applier = L4Applier(self.config.vip_interface, self.config.drain_timeout)
            except Exception as exc:  # any kernel refusal means: no L4 here
                self.unavailable = f"IPVS is not available on this host ({_reason(exc)})"
        return self._applier is not None

    def apply(self, plan: IpvsPlan, l7_vips: dict[str, str]) -> L4Result:
        if not self.available:
            if self.config.l4 == "on" and plan.services:
                return L4Result(error=self.unavailable)
            return L4Result()
        vips = plan.vips | {v for v in l7_vips if not is_local(v, self.config.vip_interface)}
        applied = replace(plan, vips=frozenset(vips))
        # Applies diff against the view of the kernel the agent keeps; at least once per resync
        # interval a pass compares with a dump instead, so that hand changes are repaired.
        now = time.monotonic()
        report = self._applier.apply(applied, full=now - self._last_full >= self.config.resync_interval)
        if report.full:
            self._last_full = now
        if not report.ok:
            return L4Result(error="; ".join(report.errors()))
        self.plan = applied
        return L4Result(operations=len(report.ops), draining=report.draining)

    def stats(self) -> dict[ServiceKey, ServiceStats]:
        """The kernel's counters of the applied plan's services, read on a channel of their own
        (a scrape runs in another thread than the applies)."""
        if not self.plan.services:  # nothing applied yet (or no IPVS here): nothing to read
            return {}
        from clbagent.l4.kernel import IpvsKernel
        from clbagent.l4.stats import read_stats

        with self._stats_lock:
            if self._stats_channel is None:
                self._stats_channel = IpvsKernel(load=False)
            try:
                return read_stats(self._stats_channel, self.plan.vips)
            except OSError:
                self._stats_channel.close()
                self._stats_channel = None
                raise

    def notes(self, plan: IpvsPlan) -> dict[str, str]:
        """Per load balancer with TCP/UDP listeners: why they are not programmed, if they are not."""
        if self.available or not plan.services:
            return {}
        return {svc.owner.split("/")[0]: f"TCP/UDP listeners not served: {self.unavailable}" for svc in plan.services}

    def service_count(self) -> int | None:
        """IPVS services in the kernel, read on a channel of its own (an apply may be using the
        applier's channel in another thread at the same time)."""
        if not self.available:
            return None
        from clbagent.l4.kernel import IpvsKernel

        with IpvsKernel(load=False) as kernel:
            return len(kernel.dump())

    def close(self) -> None:
        if self._applier is not None:
            self._applier.close()
        with self._stats_lock:
            if self._stats_channel is not None:
                self._stats_channel.close()
                self._stats_channel = None


def _reason(exc: Exception) -> str:
    text = getattr(exc, "stderr", b"") or b""
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return (text.strip().splitlines() or [str(exc) or type(exc).__name__])[-1][:200]
