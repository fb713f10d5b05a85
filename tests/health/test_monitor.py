"""The scheduler with real probes on loopback: results become states and down keys, a probe that
cannot be sent is not a failure, and a new monitor on the same state directory resumes the states."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from clbagent.health.monitor import Monitor, Transition
from clbagent.health.spec import Check, Probes, Subject
from clbagent.health.state import ALIVE, DEAD, UNKNOWN, HealthStore


def probes(*checks: Check) -> Probes:
    subjects = {c: [Subject("lb-m", "lis", "", c.endpoint, f"lb-m/lis/{c.endpoint}")] for c in checks}
    return Probes(subjects, dict.fromkeys(checks))


def run_monitor(
    state_dir: Path, p: Probes, seconds: float, unsendable: bool = False, descriptors: int | None = None
) -> tuple[Monitor, list[Transition]]:
    seen: list[Transition] = []

    async def main() -> Monitor:
        monitor = Monitor(asyncio.get_running_loop(), HealthStore(state_dir), lambda t, d: seen.extend(t))
        if unsendable:  # nothing can be sent: no descriptors, full queues
            for prober in monitor.probers.values():
                prober.prepare = lambda check, source, done: lambda: False  # type: ignore[method-assign]
        if descriptors is not None:
            monitor.max_in_flight = descriptors
        monitor.update(p)
        await asyncio.sleep(seconds)
        monitor.close()
        return monitor

    return asyncio.run(main()), seen


def test_states_down_keys_and_restart(tmp_path: Path) -> None:
    alive = socket.socket(socket.AF_INET6)
    alive.bind(("::1", 0))
    alive.listen(16)
    closed = socket.socket()
    closed.bind(("127.0.50.40", 0))  # never listening
    up = Check("tcp", "::1", alive.getsockname()[1], 0.5, 1, 2, 2)  # IPv6: the connect() prober
    down = Check("tcp", "127.0.50.40", closed.getsockname()[1], 0.5, 1, 2, 2)
    monitor, seen = run_monitor(tmp_path, probes(up, down), 2.6)
    assert {(t.entry.check, t.old, t.new) for t in seen} == {(up, UNKNOWN, ALIVE), (down, UNKNOWN, DEAD)}
    assert monitor.down == {f"lb-m/lis/{down.endpoint}"}
    assert next(t.reason for t in seen if t.new == DEAD) == "Connection refused"
    # A new monitor resumes both states and the down keys before probing anything.
    checks, keys = HealthStore(tmp_path).load()
    assert keys == monitor.down and {checks[up.key]["state"], checks[down.key]["state"]} == {ALIVE, DEAD}
    monitor2, seen2 = run_monitor(tmp_path, probes(up, down), 1.2)
    assert seen2 == [] and monitor2.counts() == {ALIVE: 1, DEAD: 1, UNKNOWN: 0}
    alive.close()
    closed.close()


def test_a_probe_that_cannot_be_sent_is_not_a_failure(tmp_path: Path) -> None:
    c = Check("tcp", "127.0.50.41", 9, 0.5, 1, 2, 2)
    monitor, seen = run_monitor(tmp_path, probes(c), 2.5, unsendable=True)
    assert seen == [] and monitor.counts()[UNKNOWN] == 1 and monitor.down == frozenset()


def test_a_probe_that_fails_while_starting_counts_and_probing_goes_on(tmp_path: Path) -> None:
    # A source address the host does not hold: the connect() probe fails inside its start, the
    # half-open one when its sending socket is bound. Both are failures, and the next probes run.
    v6 = Check("tcp", "::1", 9, 0.5, 1, 2, 2)
    v4 = Check("tcp", "127.0.50.42", 9, 0.5, 1, 2, 2)
    p = probes(v6, v4)
    p.sources.update({v6: "2001:db8::99", v4: "192.0.2.99"})
    monitor, seen = run_monitor(tmp_path, p, 2.6)
    assert {(t.entry.check, t.new, t.reason) for t in seen} == {
        (v6, DEAD, "Cannot assign requested address"),
        (v4, DEAD, "Cannot assign requested address"),
    }
    assert monitor.down == {f"lb-m/lis/{v6.endpoint}", f"lb-m/lis/{v4.endpoint}"}


def test_out_of_descriptors_holds_only_the_probes_that_need_one(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.50.43", 0))
    listener.listen(16)
    syn = Check("tcp", "127.0.50.43", listener.getsockname()[1], 0.5, 1, 2, 2)  # half-open: no descriptor
    v6 = Check("tcp", "::1", 9, 0.5, 1, 2, 2)  # connect(): one descriptor
    monitor, seen = run_monitor(tmp_path, probes(syn, v6), 2.6, descriptors=0)
    if monitor.syn is None:
        pytest.skip("half-open probes need raw sockets (root)")
    assert [(t.entry.check, t.new) for t in seen] == [(syn, ALIVE)]
    assert monitor.entries[v6].health.state == UNKNOWN
    listener.close()
