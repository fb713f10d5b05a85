"""`clbagent run`: one asyncio process that keeps the host serving the desired state.

Every reason to apply (a document changed, the periodic resync, SIGHUP) marks the state dirty; one
applier task coalesces bursts with a quiescence window (apply when nothing changed for ``wait_min``,
at the latest ``wait_max`` after the first change) and runs applies one at a time, in a worker
thread, so that the status socket and the systemd watchdog stay responsive. Stopping the agent
never stops nginx and never touches IPVS: the data plane outlives the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbagent.agent.config import AgentConfig, ConfigError
from clbagent.agent.engine import ApplyReport, Engine
from clbagent.agent.l4_metrics import L4Collector
from clbagent.agent.l7_connections import listener_addresses
from clbagent.agent.metrics import AgentMetrics
from clbagent.agent.source import FileSource
from clbagent.agent.status import serve
from clbagent.agent.systemd import notify, watchdog_interval
from clbagent.health.monitor import Monitor, Transition
from clbagent.health.report import describe
from clbagent.health.spec import derive
from clbagent.health.state import HealthStore
from clbagent.nginx.metrics_channel import read_text
from clbagent.nginx.upstreams_channel import SOCKET
from clbagent.settings import SettingsError

if TYPE_CHECKING:
    from clbagent.agent.etcd import EtcdFeed


def log(event: str, **fields: Any) -> None:
    """One structured JSON line per event on standard error (journald keeps it)."""
    record = {"ts": round(time.time(), 3), "event": event, **fields}
    print(json.dumps(record, default=str, ensure_ascii=False), file=sys.stderr, flush=True)


class Agent:
    def __init__(self, config_path: Path | None, config: AgentConfig):
        self.config_path = config_path
        self.config = config
        self.engine = Engine(config)
        self.source = self._source(config)
        self.metrics = AgentMetrics()
        self.started = time.time()
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._first_change = 0.0
        self._last_change = 0.0
        self._reasons: set[str] = set()
        self._applying = False
        self.health: Monitor | None = None
        self._health_down: frozenset[str] = frozenset()
        self._probed: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.engine.store.lock()
        try:
            # Health state first: the last known dead targets stay down through the restart.
            self.health = Monitor(
                loop, HealthStore(self.config.state_dir), self._health_changed, self.metrics.observe_probe
            )
            self._health_down = self.health.down
            self.engine.set_down(self._health_down)
            if not isinstance(self.source, FileSource):
                self.source.writer.health = self.health.rows  # status keys carry the health summary
            await asyncio.to_thread(self.engine.start)
            await self._apply("start")
            endpoint = self.config.metrics_endpoint
            if endpoint is not None:
                self.metrics.watch_nginx(self.engine.nginx.workers)
                self.metrics.watch_health(self.health.rows)
                self.metrics.watch_l7(self._l7_text())
                self.metrics.watch_listeners(lambda: listener_addresses(self.engine.serving))
                self.metrics.add_collector(L4Collector.of(self.engine.l4))
                self.metrics.serve(*endpoint)
            server = await serve(self.config.status_socket, self.snapshot)
            for sig, handler in ((signal.SIGTERM, self._stop.set), (signal.SIGINT, self._stop.set)):
                loop.add_signal_handler(sig, handler)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reconfigure()))
            notify("READY=1", f"STATUS=serving generation {self.engine.good.generation}")
            log("ready", generation=self.engine.good.generation, status_socket=str(self.config.status_socket))
            watch = self._watch() if isinstance(self.source, FileSource) else self.source.run(self.mark)
            tasks = [
                asyncio.create_task(self._applier()),
                asyncio.create_task(watch),
                asyncio.create_task(self._resync()),
                asyncio.create_task(self._watchdog()),
            ]
            await self._stop.wait()
            notify("STOPPING=1")
            log("stopping", note="nginx and IPVS are left serving")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            server.close()
            self.config.status_socket.unlink(missing_ok=True)
            return 0
        finally:
            if self.health is not None:
                self.health.close()
            self.engine.l4.close()
            self.engine.store.unlock()

    def _source(self, config: AgentConfig) -> FileSource | EtcdFeed:
        """The documents directory, or etcd for a fleet (docs/fleet.md)."""
        if config.source == "etcd":
            from clbagent.agent.etcd import EtcdFeed

            return EtcdFeed(config, self.engine.settings, log)
        return FileSource([config.documents], config.cert_dir, self.engine.settings)

    def _l7_text(self) -> Callable[[], bytes] | None:
        """What reads nginx's L7 metrics at scrape time; None when nginx runs without Lua."""
        if not self.engine.dynamic:
            return None
        ctl = self.config.nginx_root / SOCKET
        return lambda: read_text(ctl, self.engine.good_units)

    def mark(self, reason: str) -> None:
        now = time.monotonic()
        if not self._dirty.is_set():
            self._first_change = now
        self._last_change = now
        self._reasons.add(reason)
        self._dirty.set()

    # ------------------------------------------------------------------ tasks

    async def _applier(self) -> None:
        while True:
            await self._dirty.wait()
            while True:
                now = time.monotonic()
                quiet = now - self._last_change
                waited = now - self._first_change
                if quiet >= self.config.wait_min or waited >= self.config.wait_max:
                    break
                await asyncio.sleep(min(self.config.wait_min - quiet, self.config.wait_max - waited))
            self._dirty.clear()
            reasons, self._reasons = self._reasons, set()
            try:
                await self._apply(",".join(sorted(reasons)))
            except Exception as exc:  # bookkeeping after an apply (metrics, probes, etcd status) must not stop the loop
                log("apply_error", reason=",".join(sorted(reasons)), error=f"{type(exc).__name__}: {exc}")

    async def _apply(self, reason: str) -> ApplyReport | None:
        start = time.perf_counter()
        self._applying = True
        self.engine.set_down(self._health_down)  # fixed for the whole apply
        try:
            if "resync" in reason:
                for repaired in await asyncio.to_thread(self.engine.repair):
                    log("repaired", what=repaired)
            snap = await asyncio.to_thread(self.source.read)
            if snap is None:
                log("source_not_ready", reason=reason, note="the last good state keeps serving until etcd is listed")
                return None
            report = await asyncio.to_thread(self.engine.apply, snap.docs, snap.issues, snap.failed_files)
        except Exception as exc:  # the loop must survive anything one apply does
            log("apply_error", reason=reason, error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self._applying = False
        seconds = time.perf_counter() - start
        self.metrics.observe(report, seconds, len(self.engine.good.status))
        self._watch_targets()
        if report.result != "nothing to do" or report.quarantined:
            log(
                "apply",
                reason=reason,
                result=report.result,
                generation=report.generation,
                reloaded=report.reloaded,
                changed=report.changed,
                quarantined={k: [str(i) for i in v] for k, v in report.quarantined.items()},
                error=report.error or None,
                seconds=round(seconds, 4),
                timings={k: round(v, 4) for k, v in report.timings.items()},
            )
        if not isinstance(self.source, FileSource):
            self.source.applied(report, self.engine.good.status)
        return report

    def _watch_targets(self) -> None:
        """Probe the targets being served; called after every apply, as targets come and go."""
        serving = self.engine.serving
        if self.health is None or serving is None or _same_objects(serving.load_balancers, self._probed):
            return
        self._probed = serving.load_balancers
        self.health.update(derive(serving.load_balancers, serving.state.settings))

    def _health_changed(self, transitions: list[Transition], down: frozenset[str]) -> None:
        """Every transition is an event; a changed set of dead targets is applied (coalesced)."""
        for t in transitions:
            check = f"{t.entry.check.kind} {t.entry.check.endpoint}"
            for s in t.entry.subjects:
                log(
                    "health",
                    load_balancer=s.load_balancer,
                    listener=s.listener,
                    rule=s.rule or None,
                    target=s.target,
                    old=t.old,
                    new=t.new,
                    reason=t.reason,
                    check=check,
                )
                self.metrics.observe_transition(s.load_balancer, s.listener, s.target, t.new)
        if down != self._health_down:
            self._health_down = down
            self.mark("health")

    async def _watch(self) -> None:
        """inotify through watchfiles; polling where inotify is unavailable or asked for."""
        from watchfiles import awatch

        directory = self.config.documents
        while True:
            if not directory.is_dir():
                await asyncio.sleep(1)
                continue
            force_polling = True if self.config.watch == "poll" else None
            try:
                async for _ in awatch(
                    directory, debounce=50, step=20, force_polling=force_polling, poll_delay_ms=500, recursive=True
                ):
                    self.mark("documents")
            except (OSError, RuntimeError) as exc:
                log("watch_error", error=str(exc), fallback="polling")
                self.config = self.config.model_copy(update={"watch": "poll"})
            await asyncio.sleep(1)
            self.mark("documents")

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            self.mark("resync")

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _reconfigure(self) -> None:
        try:
            config = AgentConfig.load(self.config_path)
        except ConfigError as exc:
            log("config_error", error=str(exc), note="keeping the running configuration")
            return
        notify("RELOADING=1")
        try:
            self.engine.reconfigure(config)
        except SettingsError as exc:
            log("config_error", error=f"settings: {exc}", note="keeping the running configuration")
            return
        if isinstance(self.source, FileSource) and config.source == "files":
            self.source = FileSource([config.documents], config.cert_dir, self.engine.settings)
        else:
            log("config_note", note="the source (files or etcd) and the etcd keys are read at start only")
            if not isinstance(self.source, FileSource):
                self.source.reconfigure(self.engine.settings)
        self.config = config
        log("config_reloaded", path=str(self.config_path))
        self.mark("sighup")
        notify("READY=1")

    # ------------------------------------------------------------------ status

    def snapshot(self, request: str) -> dict[str, Any]:
        engine = self.engine
        active, draining = engine.nginx.workers()
        master = engine.nginx.master()
        last = engine.last_report
        if request == "upstreams":
            return {"upstreams": engine.upstreams_report()}
        if request == "health":
            return {"health": describe(self.health.rows() if self.health else [])}
        return {
            "agent": {
                "pid": os.getpid(),
                "started_at": self.started,
                "documents": str(self.config.documents),
                **({} if isinstance(self.source, FileSource) else {"etcd": self.source.describe()}),
                "applying": self._applying,
                "task_status": 2 if self._applying or self._dirty.is_set() else last.task_status if last else 0,
                "last_apply": None
                if last is None
                else {
                    "result": last.result,
                    "error": last.error,
                    "changed": last.changed,
                    "timings": last.timings,
                },
            },
            "nginx": {
                "master_pid": master.pid if master else None,
                "generation": engine.good.generation,
                "workers": active,
                "draining_workers": len(draining),
            },
            "ipvs": {
                "available": engine.l4.available,
                "error": engine.l4.unavailable or None,
                "services": engine.l4.service_count(),
            },
            "load_balancers": engine.good.status,
        }


def _same_objects(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same keys with the very same objects (the serving view reuses unchanged ones)."""
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def run_agent(config_path: Path | None) -> int:
    try:
        config = AgentConfig.load(config_path)
    except ConfigError as exc:
        print(f"clbagent run: {exc}", file=sys.stderr)
        return 2
    agent = Agent(config_path, config)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(agent.run())
    return 0
