"""The IPVS reconciler: dump once, diff, apply the minimal operations, undo them if any fails.

Level-triggered, like kube-proxy after its fixes: every pass compares the plan with what the
kernel really holds, so a service or destination deleted or changed by hand comes back on the
next pass, and a second pass right after a good one sends nothing. Only services on owned VIPs
are touched; the table is never flushed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clbagent.l4.diff import DrainKey, KernelService, Op, diff
from clbagent.l4.kernel import IpvsKernel, OpResult
from clbagent.l4.plan import IpvsPlan, ServiceKey


@dataclass
class PassReport:
    """What one pass did. ``failed`` lists the refused operations; after a failure, ``undone``
    holds the inverse operations that put the kernel back as it was before the pass."""

    ops: list[Op] = field(default_factory=list)
    failed: list[OpResult] = field(default_factory=list)
    undone: list[OpResult] = field(default_factory=list)
    draining: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def errors(self) -> list[str]:
        out = [str(r) for r in self.failed]
        out += [f"undo failed: {r}" for r in self.undone if r.error]
        return out


class Reconciler:
    """Keeps the kernel's IPVS table on the owned VIPs equal to the plan, pass after pass.

    It remembers between passes when each removed destination began draining, and which services
    had ``DeregisterTargetRst`` (so that a deleted listener's targets are reset, not drained).
    """

    def __init__(
        self,
        kernel: IpvsKernel,
        drain_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kernel = kernel
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.draining: dict[DrainKey, float] = {}
        self.rst_services: set[ServiceKey] = set()
        self.owned_vips: set[str] = set()

    def run(self, plan: IpvsPlan, owned_vips: frozenset[str] = frozenset()) -> PassReport:
        """One pass. ``owned_vips`` adds VIPs to manage beyond the plan's (e.g. those still on the
        agent's dummy interface), so that services of a removed load balancer get cleaned up."""
        start = time.perf_counter()
        self.owned_vips |= set(plan.vips) | set(owned_vips)
        owned = frozenset(self.owned_vips)
        self.rst_services |= {s.key for s in plan.services if s.deregister_rst}
        kernel = self.kernel.dump(only=owned)
        result = diff(
            plan,
            kernel,
            owned,
            now=self.clock(),
            draining=self.draining,
            drain_timeout=self.drain_timeout,
            rst_services=frozenset(self.rst_services),
        )
        report = PassReport(ops=result.ops, draining=result.waiting)
        if result.ops:
            results = self.kernel.execute(result.ops)
            report.failed = [r for r in results if r.error]
            if report.failed:
                report.undone = self._undo([r.op for r in results if not r.error], kernel)
            else:
                self.draining = result.draining
        else:
            self.draining = result.draining
        planned = {s.key for s in plan.services}
        gone = {k for k in self.rst_services if k not in planned and k not in kernel}
        self.rst_services -= gone
        report.seconds = time.perf_counter() - start
        return report

    def _undo(self, done: list[Op], before: dict[ServiceKey, KernelService]) -> list[OpResult]:
        """Apply the inverse of the operations that succeeded, newest first."""
        inverse: list[Op] = []
        for op in reversed(done):
            inverse += op.inverse(before.get(op.service.key))
        return self.kernel.execute(inverse) if inverse else []
