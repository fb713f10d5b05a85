"""The scheduler: every check probed once per IntervalTime, spread over the interval, its results
counted into its state, transitions handed to the agent with the down keys they imply.

Probes are scheduled on a wheel of ``TICK``-long slots: the checks due in one slot are started in
one wake-up, and scheduling a check is an append to the list of a later slot (no timer, no heap
entry per probe).

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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from clbagent.health.datagram import PingProber, UdpProber
from clbagent.health.probe import TICK, Prober, Start
from clbagent.health.spec import Check, Probes, Subject
from clbagent.health.state import ALIVE, DEAD, UNKNOWN, Health, HealthStore
from clbagent.health.stream import StreamProber
from clbagent.health.syn import SynProber, raw_allowed

BATCH = 2000  # probes started per loop iteration at most (the status socket keeps answering)
RETRY = max(1, round(0.1 / TICK))  # slots (100 ms) before a probe that could not be sent is tried again
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
    ticks: int = 1  # the interval, in wheel ticks
    descriptors: int = 1  # held by a running probe (none for half-open probes and pings)
    busy: bool = False
    gone: bool = False
    started: float = 0.0
    done: Callable[[bool | None, str], None] | None = None  # bound once: no closure per probe
    start: Start | None = None  # prepared by the prober once per source: starts the next probe


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
        self._wheel: dict[int, list[Entry]] = {}  # tick number -> the checks due at that tick
        self._ticks: list[int] = []  # a heap of the wheel's tick numbers
        self._timer: asyncio.TimerHandle | None = None
        self._armed = float("inf")
        self._clock = time.time() - loop.time()  # wall clock minus loop clock: a probe's wall time
        self._pending: list[Transition] = []
        self._dead: set[Entry] = set()
        self._save: asyncio.TimerHandle | None = None
        self.in_flight = 0  # descriptors held by running probes
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
            source = probes.sources.get(check)
            entry = self.entries.get(check)
            if entry is not None:
                entry.subjects = subjects
                if source != entry.source:
                    entry.source, entry.start = source, entry.prober.prepare(check, source, entry.done)  # type: ignore[arg-type]
                continue
            prober = self.stream if check.kind == "tcp" and check.family == 6 else self.probers[check.kind]
            entry = Entry(check, source, subjects, Health.restored(self.saved.get(check.key)), prober)
            entry.ticks, entry.descriptors = max(1, round(check.interval / TICK)), prober.descriptors
            entry.done = functools.partial(self._result, entry)
            entry.start = prober.prepare(check, source, entry.done)
            self.entries[check] = entry
            if entry.health.state == DEAD:
                self._dead.add(entry)
            self._put(_tick_of(now + random.uniform(0, check.interval)), entry)  # jitter: spread over the interval
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

    def _put(self, tick: int, entry: Entry) -> None:
        bucket = self._wheel.get(tick)
        if bucket is None:
            bucket = self._wheel[tick] = []
            heapq.heappush(self._ticks, tick)
        bucket.append(entry)

    def _arm(self) -> None:
        if not self._ticks:
            return
        due = self._ticks[0] * TICK
        if due < self._armed:
            if self._timer is not None:
                self._timer.cancel()
            self._armed = due
            self._timer = self.loop.call_at(due, self._tick)

    def _tick(self) -> None:
        """Start every check due by now, oldest tick first, ``BATCH`` at most per loop iteration."""
        self._timer, self._armed = None, float("inf")
        now = self.loop.time()
        self._clock = time.time() - now
        current = int((now + 1e-6) // TICK)  # the last tick due (a microsecond early is on time)
        started, limit = 0, self.max_in_flight
        ticks, wheel = self._ticks, self._wheel
        next_tick, next_bucket = -1, []  # the bucket last appended to: most checks go to the same one
        while ticks and ticks[0] <= current and started < BATCH:
            tick = heapq.heappop(ticks)
            bucket = wheel.pop(tick)
            self.late = now - tick * TICK
            if len(bucket) > BATCH - started:  # the rest of this tick waits for the next loop iteration
                wheel[tick] = bucket[BATCH - started :]
                heapq.heappush(ticks, tick)
                bucket = bucket[: BATCH - started]
            for entry in bucket:
                if entry.gone:
                    continue
                if entry.busy or (self.in_flight >= limit and entry.descriptors):
                    self._put(current + RETRY, entry)  # still running, or out of descriptors: later
                    continue
                entry.busy, entry.started = True, now  # before the start: a probe may end within it
                self.in_flight += entry.descriptors
                if not entry.start():  # type: ignore[misc]
                    entry.busy = False
                    self.in_flight -= entry.descriptors
                    self._put(current + RETRY, entry)  # not sent (a full queue): later, not failed
                    continue
                started += 1
                # Behind by more than an interval: the next probe is one interval after this one.
                later = tick + entry.ticks
                if later <= current:
                    later = current + entry.ticks
                if later != next_tick:
                    next_bucket = wheel.get(later)  # type: ignore[assignment]
                    if next_bucket is None:
                        next_bucket = wheel[later] = []
                        heapq.heappush(ticks, later)
                    next_tick = later
                next_bucket.append(entry)
        if ticks and ticks[0] <= current:
            self._armed = now
            self._timer = self.loop.call_soon(self._tick)  # type: ignore[assignment]
        else:
            self._arm()

    def _result(self, entry: Entry, ok: bool | None, error: str) -> None:
        entry.busy = False
        self.in_flight -= entry.descriptors
        if ok is None or entry.gone:
            return  # the agent was too busy to judge: not a result
        if self.observe is not None:
            self.observe(entry.check.kind, ok, self.loop.time() - entry.started)
        old, check = entry.health.state, entry.check
        new = entry.health.record(ok, error, check.rise, check.fall, entry.started + self._clock)
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


def _tick_of(moment: float) -> int:
    """The first wheel tick at or after ``moment`` (loop time)."""
    return -int(-moment // TICK)
