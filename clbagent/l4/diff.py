"""Pure diff of the IPVS plan against one dump of the kernel table: the minimal list of operations.

Rules:
- Only services whose address is one of the owned VIPs are looked at; every other service in the
  kernel (someone else's, fwmark services) is left exactly as it is.
- Order: services are added and changed first, then destinations added and re-weighted, and only
  then is anything drained or deleted (new backends before old ones go).
- A destination that left the plan drains: weight 0 first, deleted once its active + inactive
  connections reach 0 or ``drain_timeout`` has passed since draining began. With
  ``DeregisterTargetRst`` it is deleted at once, and so is an evicted one (a dead UDP target). A
  service that left the plan drains the same way and is deleted with its last destination.
- Every operation carries its inverse, so that a failed pass can be undone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from clbagent.l4.plan import Destination, Forward, IpvsPlan, ServiceKey, VirtualService

OpKind = Literal["add_service", "set_service", "del_service", "add_dest", "set_dest", "del_dest"]
DrainKey = tuple[ServiceKey, str, int]


class KernelDest(NamedTuple):
    """A destination as the kernel holds it, with its connection counters. A tuple, not a
    dataclass: a dump builds thousands of these and a no-op pass must stay cheap."""

    address: str
    port: int
    weight: int
    forward: Forward
    active: int = 0
    inactive: int = 0

    @classmethod
    def of(cls, d: Destination, active: int = 0, inactive: int = 0) -> KernelDest:
        return cls(d.address, d.port, d.weight, d.forward, active, inactive)

    @property
    def dest(self) -> Destination:
        return Destination(self.address, self.port, self.weight, self.forward)

    @property
    def connections(self) -> int:
        return self.active + self.inactive


@dataclass(frozen=True)
class KernelService:
    """A virtual service as the kernel holds it."""

    key: ServiceKey
    scheduler: str
    persistence: int
    dests: dict[tuple[str, int], KernelDest] = field(default_factory=dict)

    def as_service(self) -> VirtualService:
        return VirtualService(
            self.key, self.scheduler, self.persistence, tuple(sorted(d.dest for d in self.dests.values()))
        )


@dataclass(frozen=True)
class Op:
    """One netlink operation. ``service`` carries scheduler and persistence for add/set_service."""

    kind: OpKind
    service: VirtualService
    dest: Destination | None = None
    reason: str = ""

    def describe(self) -> str:
        what = {
            "add_service": "add service",
            "set_service": "change service",
            "del_service": "delete service",
            "add_dest": "add destination",
            "set_dest": "change destination",
            "del_dest": "delete destination",
        }[self.kind]
        if self.dest is None:
            extra = (
                ""
                if self.kind == "del_service"
                else f" (scheduler {self.service.scheduler}, persistence {self.service.persistence})"
            )
            return f"{what} {self.service.key}{extra}"
        return f"{what} {self.dest.endpoint} (weight {self.dest.weight}, {self.dest.forward}) of {self.service.key}"

    def inverse(self, before: KernelService | None = None) -> list[Op]:
        """The operations that undo this one. ``before`` is the kernel's service before the pass
        (needed to rebuild a deleted service with its destinations)."""
        svc = self.service
        if self.kind == "add_service":
            return [Op("del_service", svc, reason="undo")]
        if self.kind == "add_dest":
            return [Op("del_dest", svc, self.dest, "undo")]
        if before is None:
            return []
        if self.kind == "set_service" or self.kind == "del_service":
            back = [
                Op("add_service" if self.kind == "del_service" else "set_service", before.as_service(), reason="undo")
            ]
            if self.kind == "del_service":
                back += [Op("add_dest", svc, d.dest, "undo") for d in sorted(before.dests.values())]
            return back
        assert self.dest is not None
        old = before.dests.get(self.dest.key)
        if old is None:
            return []
        return [Op("add_dest" if self.kind == "del_dest" else "set_dest", svc, old.dest, "undo")]


@dataclass
class Diff:
    """The operations of one pass and the drain bookkeeping to keep for the next one."""

    ops: list[Op]
    draining: dict[DrainKey, float]
    waiting: int = 0  # destinations still draining after this pass


def _service_changed(want: VirtualService, have: KernelService) -> bool:
    return want.scheduler != have.scheduler or want.persistence != have.persistence


def _drain(
    svc: VirtualService,
    kd: KernelDest,
    now: float,
    draining: dict[DrainKey, float],
    drain_timeout: float,
    at_once: str = "",
) -> tuple[Op | None, bool]:
    """Returns (op, gone): the op for a destination leaving the plan, and whether it is deleted.
    ``at_once`` is the reason to delete it without draining ('' = drain)."""
    key = (svc.key, kd.address, kd.port)
    since = draining.setdefault(key, now)
    if at_once or kd.connections == 0 or now - since >= drain_timeout:
        draining.pop(key, None)
        why = at_once or ("drained" if kd.connections == 0 else "drain timeout")
        return Op("del_dest", svc, kd.dest, why), True
    if kd.weight != 0:
        return Op("set_dest", svc, replace(kd.dest, weight=0), "drain"), False
    return None, False


def diff(
    plan: IpvsPlan,
    kernel: dict[ServiceKey, KernelService],
    owned_vips: frozenset[str] | None = None,
    *,
    now: float = 0.0,
    draining: dict[DrainKey, float] | None = None,
    drain_timeout: float = 300.0,
    rst_services: frozenset[ServiceKey] = frozenset(),
) -> Diff:
    """Minimal operations turning ``kernel`` into ``plan`` on the owned VIPs.

    ``draining`` maps destinations being drained to when draining began (from the previous pass);
    ``rst_services`` are services gone from the plan whose listener had ``DeregisterTargetRst``.
    """
    owned = plan.vips | (owned_vips or frozenset())
    drains = {k: v for k, v in (draining or {}).items()}
    adds: list[Op] = []
    changes: list[Op] = []
    removals: list[Op] = []
    waiting = 0
    wanted = plan.by_key()
    for key, want in wanted.items():
        have = kernel.get(key)
        if have is None:
            adds.append(Op("add_service", want, reason="missing"))
            changes += [Op("add_dest", want, d, "missing") for d in want.destinations]
            continue
        if _service_changed(want, have):
            adds.append(Op("set_service", want, reason="changed"))
        wanted_dests = {(d.address, d.port): d for d in want.destinations}
        for dkey, d in wanted_dests.items():
            if drains:
                drains.pop((key, d.address, d.port), None)
            kd = have.dests.get(dkey)
            if kd is None:
                changes.append(Op("add_dest", want, d, "missing"))
            elif kd.weight != d.weight or kd.forward != d.forward:
                changes.append(Op("set_dest", want, d, "changed"))
        if len(have.dests) == len(wanted_dests) and all(k in wanted_dests for k in have.dests):
            continue
        evicted = {d.key for d in want.evicted}
        for dkey, kd in sorted(have.dests.items()):
            if dkey not in wanted_dests:
                at_once = "target down" if dkey in evicted else ""
                if want.deregister_rst:
                    at_once = "deregistered with reset"
                op, gone = _drain(want, kd, now, drains, drain_timeout, at_once)
                waiting += not gone
                if op is not None:
                    removals.append(op)
    for key, have in sorted(kernel.items()):
        if key in wanted or key.address not in owned:
            continue
        svc = have.as_service()
        rst = key in rst_services
        ops_here: list[Op] = []
        left = 0
        for _dkey, kd in sorted(have.dests.items()):
            op, gone = _drain(svc, kd, now, drains, drain_timeout, "deregistered with reset" if rst else "")
            left += not gone
            if op is not None:
                ops_here.append(op)
        waiting += left
        # Deleting the service removes its destinations with it: one operation, not one per dest.
        removals += ops_here if left else [Op("del_service", svc, reason="not in plan")]
    # Drain entries of destinations that vanished from the kernel are forgotten.
    if drains:
        live = {(k, d.address, d.port) for k, s in kernel.items() for d in s.dests.values()}
        drains = {k: v for k, v in drains.items() if k in live}
    return Diff(adds + changes + removals, drains, waiting)


def record(view: dict[ServiceKey, KernelService], ops: list[Op]) -> None:
    """Bring a kernel view up to date with operations the kernel acknowledged, so that the next
    pass can diff against it without dumping the table again. Connection counters of a changed
    destination are kept as last read (only draining destinations need fresh ones)."""
    for op in ops:
        key = op.service.key
        if op.kind == "del_service":
            view.pop(key, None)
        elif op.dest is None:
            old = view.get(key)
            dests = old.dests if old is not None and op.kind == "set_service" else {}
            view[key] = KernelService(key, op.service.scheduler, op.service.persistence, dests)
        elif (svc := view.get(key)) is not None:
            if op.kind == "del_dest":
                svc.dests.pop(op.dest.key, None)
            else:
                old_dest = svc.dests.get(op.dest.key)
                active, inactive = (old_dest.active, old_dest.inactive) if old_dest is not None else (0, 0)
                svc.dests[op.dest.key] = KernelDest.of(op.dest, active, inactive)
