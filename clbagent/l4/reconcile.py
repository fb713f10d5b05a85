"""The IPVS reconciler: diff the plan against the kernel, apply the minimal operations, undo them
if any fails.

Two kinds of pass:
- **full**: dump the kernel table once, diff, apply. Level-triggered, like kube-proxy after its
  fixes: a service or destination deleted or changed by hand comes back. The first pass, the
  periodic repair (``full=True``) and any pass after a netlink error are full.
- **incremental** (the default once a full pass has succeeded): the reconciler keeps the table as
  it last dumped it and as the kernel then acknowledged every operation (its *view*), and diffs
  only the services whose plan changed since the last good pass, plus those it still drains. A
  service losing a destination has its destinations read again first (whether that destination
  drains or goes depends on its connections now). A one-target change costs one
  operation and no dump. If the kernel refuses anything, the pass is undone and a full one
  follows at once.

Only services on owned VIPs are touched; the table is never flushed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clbagent.l4.diff import DrainKey, KernelService, Op, diff, record
from clbagent.l4.kernel import IpvsKernel, OpResult
from clbagent.l4.plan import IpvsPlan, ServiceKey, VirtualService


@dataclass
class PassReport:
    """What one pass did. ``failed`` lists the refused operations; after a failure, ``undone``
    holds the inverse operations that put the kernel back as it was before the pass."""

    ops: list[Op] = field(default_factory=list)
    failed: list[OpResult] = field(default_factory=list)
    undone: list[OpResult] = field(default_factory=list)
    draining: int = 0
    seconds: float = 0.0
    full: bool = True  # the pass dumped the kernel table

    @property
    def ok(self) -> bool:
        return not self.failed

    def errors(self) -> list[str]:
        out = [str(r) for r in self.failed]
        out += [f"undo failed: {r}" for r in self.undone if r.error]
        return out


def _loses_dests(have: KernelService, want: VirtualService | None) -> bool:
    """Whether a destination of ``have`` is not in ``want`` (or the whole service left the plan)."""
    if want is None:
        return True
    keep = {d.key for d in want.destinations}
    return any(k not in keep for k in have.dests)


class Reconciler:
    """Keeps the kernel's IPVS table on the owned VIPs equal to the plan, pass after pass.

    It remembers between passes when each removed destination began draining, which services had
    ``DeregisterTargetRst`` (so that a deleted listener's targets are reset, not drained), and the
    view of the kernel that incremental passes diff against.
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
        self.view: dict[ServiceKey, KernelService] | None = None  # None: the next pass is full
        self.viewed_vips: set[str] = set()  # the VIPs whose services the view holds
        self.applied: dict[ServiceKey, VirtualService] = {}  # the plan of the last good pass

    def run(self, plan: IpvsPlan, owned_vips: frozenset[str] = frozenset(), full: bool = False) -> PassReport:
        """One pass. ``owned_vips`` adds VIPs to manage beyond the plan's (e.g. those still on the
        agent's dummy interface), so that services of a removed load balancer get cleaned up.
        ``full`` dumps the kernel table (periodic repair); otherwise the pass is incremental when
        the previous one succeeded, and turns into a full one after any netlink error."""
        start = time.perf_counter()
        self.owned_vips |= set(plan.vips) | set(owned_vips)
        owned = frozenset(self.owned_vips)
        self.rst_services |= {s.key for s in plan.services if s.deregister_rst}
        report = None
        if not full and self.view is not None:
            try:
                report = self._pass(plan, owned, self._incremental(plan, owned))
            except OSError:  # the view or the channel is in doubt: dump and start over
                report = None
            if report is not None and not report.ok:
                report = None
        if report is None:
            self.view = None
            self.viewed_vips = set(owned)
            report = self._pass(plan, owned, None)
        report.seconds = time.perf_counter() - start
        return report

    def _incremental(self, plan: IpvsPlan, owned: frozenset[str]) -> tuple[IpvsPlan, dict[ServiceKey, KernelService]]:
        """The part of the plan that changed since the last good pass and the view of the same
        services (those losing a destination read again from the kernel)."""
        assert self.view is not None
        view = self.view
        new_vips = owned - self.viewed_vips
        if new_vips:  # services someone else may already have put there
            view.update(self.kernel.dump(only=frozenset(new_vips)))
            self.viewed_vips |= new_vips
        wanted = plan.by_key()
        keys = {k for k, svc in wanted.items() if self.applied.get(k) != svc}
        keys |= {k for k in view if k not in wanted}  # left the plan: drained or deleted
        keys |= {k for k, _address, _port in self.draining}
        # Whether a destination leaving the plan drains or goes depends on its connections now.
        recount = [view[k] for k in keys if k in view and _loses_dests(view[k], wanted.get(k))]
        view.update(self.kernel.refresh(recount))
        part = IpvsPlan(tuple(wanted[k] for k in sorted(keys) if k in wanted), plan.vips)
        return part, {k: view[k] for k in keys if k in view}

    def _pass(
        self,
        plan: IpvsPlan,
        owned: frozenset[str],
        part: tuple[IpvsPlan, dict[ServiceKey, KernelService]] | None,
    ) -> PassReport:
        """Diff, apply, undo on failure; ``part`` is (sub-plan, view) or None for a full dump."""
        todo, kernel = part if part is not None else (plan, self.kernel.dump(only=owned))
        result = diff(
            todo,
            kernel,
            owned,
            now=self.clock(),
            draining=self.draining,
            drain_timeout=self.drain_timeout,
            rst_services=frozenset(self.rst_services),
        )
        report = PassReport(ops=result.ops, draining=result.waiting, full=part is None)
        results = self.kernel.execute(result.ops) if result.ops else []
        report.failed = [r for r in results if r.error]
        if report.failed:
            report.undone = self._undo([r.op for r in results if not r.error], kernel)
            self.view, self.applied = None, {}
        else:
            self.draining = result.draining
            view = self.view if part is not None and self.view is not None else kernel
            record(view, result.ops)
            self.view, self.applied = view, plan.by_key()
        planned = {s.key for s in plan.services}
        gone = {k for k in self.rst_services if k not in planned and k not in kernel}
        self.rst_services -= gone
        return report

    def _undo(self, done: list[Op], before: dict[ServiceKey, KernelService]) -> list[OpResult]:
        """Apply the inverse of the operations that succeeded, newest first."""
        inverse: list[Op] = []
        for op in reversed(done):
            inverse += op.inverse(before.get(op.service.key))
        return self.kernel.execute(inverse) if inverse else []
