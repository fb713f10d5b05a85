"""L4 benchmark: the reconciler against ipvsadm on the same kernel, in one run.

Run inside the VM (it needs ip_vs):  scripts/vm-test.sh --bench [--services 1000] [--dests 10] [--rounds 3]

Prints, for a table of SERVICES x DESTS:
- full sync of an empty kernel by the reconciler vs ``ipvsadm -R`` of the same rules;
- a no-op pass (dump + diff, nothing to do) vs ``ipvsadm -Sn``;
- one target's weight changed: the incremental pass (diff against the agent's view, no dump) vs a
  full pass (dump + diff) vs ``ipvsadm -R`` of that one change, and the netlink operations (1);
- incremental passes changing 1, 10, 100 and all services: the cost grows with the change.
Exits 1 when a target (full sync <= 1.5x ipvsadm -R, no-op <= 1.5x ipvsadm -Sn, one change = one
operation without a dump and <= 0.1x the full pass) is missed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from clbagent.l4 import Destination, IpvsPlan, ServiceKey, VirtualService
from clbagent.l4.kernel import IpvsKernel
from clbagent.l4.reconcile import Reconciler

VIP = "10.98.0.1"


def make_plan(services: int, dests: int) -> IpvsPlan:
    table = []
    for s in range(services):
        ds = tuple(Destination(f"10.97.{s // 250}.{s % 250 + 1}", 10000 + d, 1 + (s + d) % 100) for d in range(dests))
        table.append(VirtualService(ServiceKey.of(VIP, "tcp", 1000 + s), "wrr" if s % 2 else "wlc", 0, ds))
    return IpvsPlan(tuple(sorted(table, key=lambda v: v.key)), frozenset({VIP}))


def with_weights(plan: IpvsPlan, count: int, weight: int) -> IpvsPlan:
    """The plan with the first destination of ``count`` services (spread over the table) at
    ``weight``."""
    step = max(1, len(plan.services) // count)
    picked = set(range(0, step * count, step))
    services = tuple(
        replace(s, destinations=(replace(s.destinations[0], weight=weight), *s.destinations[1:])) if i in picked else s
        for i, s in enumerate(plan.services)
    )
    return IpvsPlan(services, plan.vips)


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def ipvsadm(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["ipvsadm", *args], input=stdin, capture_output=True, text=True, check=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--dests", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    plan = make_plan(args.services, args.dests)
    rules = plan.to_ipvsadm()
    kernel = IpvsKernel()
    runs: dict[str, list[float]] = {"ipvsadm -R": [], "full sync": [], "ipvsadm -Sn": [], "no-op pass": []}
    for _ in range(args.rounds):
        ipvsadm("-C")
        runs["ipvsadm -R"].append(timed(lambda: ipvsadm("-R", stdin=rules)))
        runs["ipvsadm -Sn"].append(timed(lambda: ipvsadm("-Sn")))
        ipvsadm("-C")
        rec = Reconciler(kernel)
        report = rec.run(plan)
        assert report.ok, report.errors()[:5]
        runs["full sync"].append(report.seconds)
        noop = rec.run(plan, full=True)
        assert noop.ops == [], len(noop.ops)
        runs["no-op pass"].append(noop.seconds)
    assert set(ipvsadm("-Sn").splitlines()) == set(rules.splitlines()), "kernel table differs from the plan"

    # One target's weight, changed in turn by the three ways (each a real change in the kernel).
    one: dict[str, list[float]] = {"incremental": [], "full pass": [], "ipvsadm -R": []}
    svc = plan.services[0]
    edit = f"-e {svc.ipvsadm_key} -r {svc.destinations[0].endpoint} -m -w {{}}\n"
    ops_of_one = set()
    for r in range(args.rounds):
        before, dumps = kernel.messages, kernel.dumps
        inc = rec.run(with_weights(plan, 1, 50 + r))
        assert inc.ok and not inc.full and kernel.dumps == dumps, inc.errors()[:5]
        ops_of_one.add(kernel.messages - before)
        one["incremental"].append(inc.seconds)
        full = rec.run(with_weights(plan, 1, 70 + r), full=True)
        assert full.ok and len(full.ops) == 1 and full.full
        one["full pass"].append(full.seconds)
        one["ipvsadm -R"].append(timed(lambda r=r: ipvsadm("-R", stdin=edit.format(90 + r))))
        ipvsadm("-R", stdin=edit.format(70 + r))  # back to what the reconciler's view says
    growth: dict[int, float] = {}
    for i, count in enumerate((1, 10, 100, args.services)):
        report = rec.run(with_weights(plan, count, 200 + i))
        assert report.ok and not report.full and len(report.ops) == min(count, args.services)
        growth[count] = report.seconds
    assert rec.run(plan, full=True).ok
    assert set(ipvsadm("-Sn").splitlines()) == set(rules.splitlines()), "kernel table differs from the plan"
    ipvsadm("-C")

    med = {k: statistics.median(v) for k, v in runs.items()}
    one_med = {k: statistics.median(v) for k, v in one.items()}
    full_ratio = med["full sync"] / med["ipvsadm -R"]
    noop_ratio = med["no-op pass"] / med["ipvsadm -Sn"]
    inc_full = one_med["incremental"] / one_med["full pass"]
    inc_ipvsadm = one_med["incremental"] / one_med["ipvsadm -R"]
    n = args.services * args.dests
    print(f"table: {args.services} services x {args.dests} destinations ({args.services + n} objects)")
    print(f"median of {args.rounds} rounds:")
    for name, values in [*runs.items(), *((f"one change, {k}", v) for k, v in one.items())]:
        print(f"  {name:<24} {statistics.median(values):8.3f} s   (runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"full sync / ipvsadm -R  = {full_ratio:.2f}x (target <= 1.5x)")
    print(f"no-op / ipvsadm -Sn     = {noop_ratio:.2f}x (target <= 1.5x)")
    print(f"one target changed: {sorted(ops_of_one)} netlink operation(s), no dump (target 1)")
    print(f"  incremental / full pass         = {inc_full:.3f}x (target <= 0.1x)")
    print(f"  incremental / ipvsadm -R change = {inc_ipvsadm:.2f}x")
    print("incremental pass by size of the change (services re-weighted):")
    for count, seconds in growth.items():
        print(f"  {count:>5} -> {seconds:7.3f} s ({seconds / growth[1]:.1f}x one)")
    ok = full_ratio <= 1.5 and noop_ratio <= 1.5 and ops_of_one == {1} and inc_full <= 0.1
    print("targets:", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
