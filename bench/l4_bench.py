"""L4 benchmark: the reconciler against ipvsadm on the same kernel, in one run.

Run inside the VM (it needs ip_vs):  scripts/vm-test.sh --bench [--services 1000] [--dests 10] [--rounds 3]

Prints, for a table of SERVICES x DESTS:
- full sync of an empty kernel by the reconciler vs ``ipvsadm -R`` of the same rules;
- a no-op pass (dump + diff, nothing to do) vs ``ipvsadm -Sn``;
- the number of netlink operations for one weight change (must be 1).
Exits 1 when a target (full sync <= 1.5x ipvsadm -R, no-op <= 1.5x ipvsadm -Sn, 1 op) is missed.
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
        noop = rec.run(plan)
        assert noop.ops == [], len(noop.ops)
        runs["no-op pass"].append(noop.seconds)
    assert set(ipvsadm("-Sn").splitlines()) == set(rules.splitlines()), "kernel table differs from the plan"

    first = plan.services[len(plan.services) // 2]
    moved = replace(first, destinations=(replace(first.destinations[0], weight=0), *first.destinations[1:]))
    changed = IpvsPlan(tuple(moved if s.key == first.key else s for s in plan.services), plan.vips)
    before = kernel.messages
    one = rec.run(changed)
    one_ops = kernel.messages - before
    ipvsadm("-C")

    med = {k: statistics.median(v) for k, v in runs.items()}
    full_ratio = med["full sync"] / med["ipvsadm -R"]
    noop_ratio = med["no-op pass"] / med["ipvsadm -Sn"]
    n = args.services * args.dests
    print(f"table: {args.services} services x {args.dests} destinations ({args.services + n} objects)")
    print(f"median of {args.rounds} rounds:")
    for name, values in runs.items():
        print(f"  {name:<12} {med[name]:8.3f} s   (runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"full sync / ipvsadm -R  = {full_ratio:.2f}x (target <= 1.5x)")
    print(f"no-op / ipvsadm -Sn     = {noop_ratio:.2f}x (target <= 1.5x)")
    print(f"one weight change: {len(one.ops)} op, {one_ops} netlink operation(s) in {one.seconds:.3f} s (target 1)")
    ok = full_ratio <= 1.5 and noop_ratio <= 1.5 and one_ops == 1
    print("targets:", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
