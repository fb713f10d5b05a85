"""The scheduler: every check probed once per IntervalTime, spread over the interval, its results
counted into its state, transitions handed to the agent with the down keys they imply.

Overload degrades by probing late, never by false deaths: a probe that cannot be sent (no
descriptor, a full send queue) waits and is not a failure; a deadline the loop handled late counts
as nothing; when the scheduler falls behind, each check's next probe is one interval after the
late one, so the load never exceeds one probe per check and interval.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import random
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from clbagent.health.datagram import PingProber, UdpProber
from clbagent.health.probe import Prober
from clbagent.health.spec import Check, Probes, Subject
from clbagent.health.state import ALIVE, DEAD, UNKNOWN, Health, HealthStore
from clbagent.health.stream import StreamProber
from clbagent.health.syn import SynProber, raw_allowed

BATCH = 2000  # probes started per loop iteration at most (the status socket keeps answering)
RETRY = 0.05  # seconds before a probe that could not be sent is tried again
QUANTUM = 0.01  # probes due within this much are started together (one wake-up, not one each)
SAVE_DELAY = 0.5  # transitions within this window are written to disk once
log = logging.getLogger(__name__)


@dataclass(eq=False)
class Entry:
    """One check being probed, its users and its state."""

    check: Check
    source: str | None
    subjects: list[Subject]
    health: Health
    prober: Prober
    busy: bool = False
    gone: bool = False
    started: float = 0.0
    done: Callable[[bool | None, str], None] | None = None  # bound once: no closure per probe


@dataclass
class Transition:
    """A check's state changed; ``reason``: the last error, or why it is alive again."""

    entry: Entry
    old: str
    new: str
    reason: str


Observer = Callable[[str, bool, float], None]
OnChange = Callable[[list[Transition], frozenset[str]], None]


class Monitor:
    """Owns the probers and the state of every check of the served state."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        store: HealthStore,
        on_change: OnChange,
        observe: Observer | None = None,
        raw: bool | None = None,
    ):
        self.loop, self.store, self.on_change, self.observe = loop, store, on_change, observe
        stream = StreamProber(loop)
        self.syn = SynProber(loop) if (raw_allowed() if raw is None else raw) else None
        self.probers: dict[str, Prober] = {
            "tcp": self.syn or stream,
            "http": stream,
            "https": stream,
            "tcp-custom": stream,
            "udp": UdpProber(loop),
            "ping": PingProber(loop),
        }
        self.stream = stream  # TCP to IPv6 targets: raw SYNs are IPv4 only
        self.saved, self.down = store.load()
        self.entries: dict[Check, Entry] = {}
        self.unchecked: list[Subject] = []
        self._heap: list[tuple[float, int, Entry]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed = float("inf")
        self._pending: list[Transition] = []
        self._dead: set[Entry] = set()
        self._save: asyncio.TimerHandle | None = None
        self.in_flight = 0
        self.max_in_flight = max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256)
        self.late = 0.0  # how far behind schedule the last probe started (seconds)

    # ------------------------------------------------------------------ configuration

    def update(self, probes: Probes) -> None:
        """Probe exactly the checks of ``probes``: new ones start Unknown (or as persisted),
        gone ones stop; the state of a check that stays is untouched."""
        now = self.loop.time()
        if self.syn is not None:
            self.syn.forget_routes()  # VIPs and routes may have moved with the change
        for check, entry in list(self.entries.items()):
            if check not in probes.subjects:
                entry.gone = True
                self._dead.discard(entry)
                del self.entries[check]
        for check, subjects in probes.subjects.items():
            entry = self.entries.get(check)
            if entry is not None:
                entry.subjects, entry.source = subjects, probes.sources.get(check)
                continue
            prober = self.stream if check.kind == "tcp" and check.family == 6 else self.probers[check.kind]
            entry = Entry(
                check, probes.sources.get(check), subjects, Health.restored(self.saved.get(check.key)), prober
            )
            entry.done = functools.partial(self._result, entry)
            self.entries[check] = entry
            if entry.health.state == DEAD:
                self._dead.add(entry)
            self._push(now + random.uniform(0, check.interval), entry)  # jitter: spread over the interval
        self.unchecked = probes.unchecked
        self.saved = {}
        self._arm()
        down = self._down()
        if down != self.down:
            self.down = down
            self.on_change([], down)
        self._schedule_save()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for prober in {id(p): p for p in self.probers.values()}.values():
            prober.close()
        self.save()

    # ------------------------------------------------------------------ scheduling

    def _push(self, due: float, entry: Entry) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, entry))

    def _arm(self) -> None:
        if not self._heap:
            return
        due = max(self._heap[0][0], self.loop.time() + QUANTUM)
        if due < self._armed:
            if self._timer is not None:
                self._timer.cancel()
            self._armed = due
            self._timer = self.loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._timer, self._armed = None, float("inf")
        now = self.loop.time()
        heap, started, until = self._heap, 0, now + QUANTUM / 2
        while heap and heap[0][0] <= until and started < BATCH:
            due, _, entry = heapq.heappop(heap)
            if entry.gone:
                continue
            interval = entry.check.interval
            if entry.busy or self.in_flight >= self.max_in_flight:
                self._push(now + RETRY, entry)  # still running, or out of descriptors: later
                continue
            entry.started = now
            if not entry.prober.probe(entry.check, entry.source, entry.done):  # type: ignore[arg-type]
                self._push(now + RETRY, entry)
                continue
            started += 1
            entry.busy = True
            self.in_flight += 1
            self.late = now - due
            # Behind by more than an interval: the next probe is one interval after this one.
            self._push(due + interval if due + interval > now else now + interval, entry)
        if heap and heap[0][0] <= now:
            self._armed = now
            self._timer = self.loop.call_soon(self._tick)  # type: ignore[assignment]
        else:
            self._arm()

    def _result(self, entry: Entry, ok: bool | None, error: str) -> None:
        entry.busy = False
        self.in_flight -= 1
        if ok is None or entry.gone:
            return  # the agent was too busy to judge: not a result
        if self.observe is not None:
            self.observe(entry.check.kind, ok, self.loop.time() - entry.started)
        old = entry.health.state
        new = entry.health.record(ok, error, entry.check.rise, entry.check.fall)
        if new is None:
            return
        if new == DEAD:
            self._dead.add(entry)
        else:
            self._dead.discard(entry)
        reason = error if new == DEAD else f"{entry.check.rise} consecutive successes"
        if not self._pending:
            self.loop.call_soon(self._flush)
        self._pending.append(Transition(entry, old, new, reason))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self.down = self._down()
        self.on_change(pending, self.down)
        self._schedule_save()

    def _down(self) -> frozenset[str]:
        return frozenset(s.down_key for e in self._dead for s in e.subjects)

    # ------------------------------------------------------------------ persistence

    def _schedule_save(self) -> None:
        if self._save is None:
            self._save = self.loop.call_later(SAVE_DELAY, self.save)

    def save(self) -> None:
        """Write every known state (Unknown ones need not survive) and the down keys."""
        if self._save is not None:
            self._save.cancel()
            self._save = None
        checks = {e.check.key: e.health.to_dict() for e in self.entries.values() if e.health.state != UNKNOWN}
        checks.update(self.saved)  # restored but not yet matched to a check: keep
        try:
            self.store.save(checks, self.down)
        except OSError as exc:
            log.warning("cannot save the health state: %s", exc)

    # ------------------------------------------------------------------ output

    def rows(self) -> Iterator[dict[str, Any]]:
        """One row per target of each rule or listener: what `clbagent health` and the metrics show."""
        for entry in list(self.entries.values()):  # a copy: the metrics thread reads this too
            h, c = entry.health, entry.check
            for s in entry.subjects:
                yield {
                    "load_balancer": s.load_balancer,
                    "listener": s.listener,
                    "rule": s.rule,
                    "target": s.target,
                    "state": h.state,
                    "HealthStatus": h.state == ALIVE,  # the API's reading: Unknown is not healthy
                    "since": h.since,
                    "last_error": h.last_error,
                    "last_probe": h.last_probe or None,
                    "check": f"{c.kind} {c.endpoint}",
                    "source": entry.source,
                }
        for s in list(self.unchecked):
            yield {
                "load_balancer": s.load_balancer,
                "listener": s.listener,
                "rule": s.rule,
                "target": s.target,
                "state": ALIVE,
                "HealthStatus": True,
                "since": None,
                "last_error": "",
                "last_probe": None,
                "check": "off (HealthSwitch 0)",
                "source": None,
            }

    def counts(self) -> dict[str, int]:
        out = {ALIVE: 0, DEAD: 0, UNKNOWN: 0}
        for entry in list(self.entries.values()):
            out[entry.health.state] += 1
        return out
