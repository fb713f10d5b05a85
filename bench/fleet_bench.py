"""Fleet benchmark: one etcd write, applied by N agents (default 20) on this machine.

Each agent is a host of its own (network namespace, state directory, nginx; see
tests/fleet/harness.py). For each write the benchmark records, per agent, the time from just before
the etcd write to the end of the agent's verified apply (the ``apply`` event in its log) and to its
status key showing the new revision (what a control plane sees). The reference, measured in the
same run, is the same change made to one agent fed from a documents directory (the file written,
the agent's inotify watch, the same apply): the fleet figures are printed as ratios to it.

Two kinds of change: a target change (dynamic upstreams: no reload) and a domain change (nginx
test and reload on every host, all on the same cores).

    nice -n 10 .venv/bin/python bench/fleet_bench.py [--agents 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clbagent.agent.config import AgentConfig
from clbagent.agent.etcd.client import EtcdClient
from tests.fleet.harness import PREFIX, STATUS_PREFIX, Agent, Fleet, http_lb, wait_for

QUIET = {"resync_interval": 300.0}  # no periodic resync inside a measurement


def change(kind: str, i: int) -> dict:
    doc = http_lb("lb-a", 20000 + i)
    if kind == "domain":
        doc["Listeners"][0]["Rules"][0]["Domain"] = f"www{i}.example.com"
    return doc


def applied_at(agent: Agent, after: float) -> float | None:
    """Wall time at which the agent finished the first apply that changed lb-a after ``after``."""
    for event in agent.events("apply"):
        if event["ts"] >= after and "lb-a" in event["changed"] and event["result"] == "applied":
            return float(event["ts"])
    return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def fleet_round(fleet: Fleet, client: EtcdClient, kind: str, i: int) -> tuple[list[float], list[float]]:
    seen: dict[str, float] = {}
    doc = yaml.safe_dump(change(kind, i)).encode()
    now = await client.get_prefix(STATUS_PREFIX.encode(), keys_only=True)
    watch = await client.watch_prefix(STATUS_PREFIX.encode(), start_revision=now.header.revision + 1)
    t0 = time.time()
    revision = (await client.put(f"{PREFIX}lb-a".encode(), doc)).header.revision

    async def follow() -> None:
        async for event in watch:
            value = json.loads(event.kv.value or b"{}")
            if value.get("load_balancer") == "lb-a" and value.get("applied_revision") == revision:
                seen.setdefault(value["agent"], time.time())
                if len(seen) == len(fleet.agents):
                    return

    await asyncio.wait_for(follow(), 120)
    await watch.cancel()
    applies = [
        await asyncio.to_thread(wait_for, lambda a=a: applied_at(a, t0), 30, "the apply event") for a in fleet.agents
    ]
    return [t - t0 for t in applies], [seen[a.name] - t0 for a in fleet.agents]


def reference_round(agent: Agent, kind: str, i: int) -> float:
    path = agent.base / "documents" / "lb-a.yaml"
    tmp = path.with_name(".lb-a.yaml.tmp")
    tmp.write_text(yaml.safe_dump(change(kind, i)))
    t0 = time.time()
    tmp.rename(path)
    return wait_for(lambda: applied_at(agent, t0), 30, "the file-fed agent's apply") - t0


async def measure(fleet: Fleet, reference: Agent, rounds: int) -> dict[str, dict[str, list[float]]]:
    config = AgentConfig(source="etcd", etcd_endpoints=[fleet.etcd.url], state_dir=fleet.base)
    client = EtcdClient(config, fleet.etcd.url)
    out: dict[str, dict[str, list[float]]] = {}
    n = 0
    for kind in ("target", "domain"):
        results: dict[str, list[float]] = {"apply": [], "status": [], "reference": []}
        for _ in range(rounds):
            n += 1
            applies, statuses = await fleet_round(fleet, client, kind, n)
            results["apply"] += applies
            results["status"] += statuses
            await asyncio.sleep(0.5)
            results["reference"].append(await asyncio.to_thread(reference_round, reference, kind, n))
            await asyncio.sleep(0.5)
        out[kind] = results
    await client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    fleet = Fleet(args.agents, extra=QUIET)
    reference = Agent(
        "file-fed",
        "clbfbench-ref",
        fleet.base / "file-fed",
        fleet.etcd,
        {**QUIET, "source": "files", "documents": "documents"},
    )
    try:
        t = time.monotonic()
        fleet.etcd.start()
        revision = fleet.etcd.put(f"{PREFIX}lb-a", change("target", 0))
        for agent in [*fleet.agents, reference]:
            agent.setup()
        (reference.base / "documents").mkdir()
        (reference.base / "documents" / "lb-a.yaml").write_text(yaml.safe_dump(change("target", 0)))
        for agent in [*fleet.agents, reference]:
            agent.start()
        wait_for(lambda: fleet.applied_everywhere("lb-a", revision), 300, "the first state on every agent", 0.5)
        wait_for(lambda: applied_at(reference, 0), 60, "the file-fed agent's first state")
        print(f"{args.agents} agents up and serving in {time.monotonic() - t:.1f}s")
        results = asyncio.run(measure(fleet, reference, args.rounds))
    finally:
        reference.teardown()
        fleet.close()
    print(f"\none etcd write -> {args.agents} agents ({args.rounds} writes per kind; times in ms)")
    print(f"{'change':<8} {'measure':<22} {'p50':>7} {'p99':>7} {'max':>7}  {'p50/ref':>8} {'p99/ref':>8}")
    for kind, r in results.items():
        ref = statistics.median(r["reference"])
        rows = [
            ("apply (agent log)", r["apply"]),
            ("status visible (etcd)", r["status"]),
            ("reference (1 file)", r["reference"]),
        ]
        for label, values in rows:
            p50, p99 = pct(values, 0.5), pct(values, 0.99)
            print(
                f"{kind:<8} {label:<22} {p50 * 1000:>7.0f} {p99 * 1000:>7.0f} {max(values) * 1000:>7.0f}  "
                f"{p50 / ref:>7.2f}x {p99 / ref:>7.2f}x"
            )
    print("goal: p99 of the apply under 1 s")


if __name__ == "__main__":
    main()
