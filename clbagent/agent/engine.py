"""One apply: desired state in, the host serving it (or the last good state) out.

The order of an apply:

1. validate every document; a document with errors keeps its last good version (quarantine);
2. compile each load balancer on its own (one nginx unit per load balancer);
3. if the nginx file set is byte-identical to the served generation, nginx is left alone;
4. VIPs are put on the host (``nginx -t`` binds them), the new generation is staged and tested;
   when the test fails, only the load balancers changed since the last good generation can be the
   cause: they are bisected, the culprits keep their last good version, the rest goes on;
5. IPVS is reconciled (new destinations before old ones go, undo on failure);
6. ``current`` is switched, nginx reloads, the reload is verified; any failure switches back,
   reloads and verifies again, and IPVS is put back to the last good plan;
7. the new good state is written to the state directory.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from clbagent.agent.config import AgentConfig
from clbagent.agent.incremental import IncrementalValidator
from clbagent.agent.l4plane import L4Plane
from clbagent.agent.serving import Serving, ServingView
from clbagent.agent.store import GoodState, Store
from clbagent.agent.vips import prepare_vips
from clbagent.errors import Code, Issue
from clbagent.l4 import IpvsPlan
from clbagent.l7 import names
from clbagent.l7.compile import compile_unit, main_conf
from clbagent.nginx.controller import NginxController
from clbagent.nginx.metrics_channel import module_path
from clbagent.nginx.upstreams_channel import (
    ChannelError,
    Upstream,
    UpstreamsChannel,
    upstreams_of,
)
from clbagent.settings import Settings
from clbagent.validate import DesiredState, DocumentResult, check_transition

Files = dict[str, str]
LUA_MODULE = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")


@dataclass
class ApplyReport:
    """What one apply did, for the exit code, the status and the metrics."""

    result: str = "nothing to do"  # applied | nothing to do | rolled back | failed
    generation: int | None = None
    changed: list[str] = field(default_factory=list)
    quarantined: dict[str, list[Issue]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    reloaded: bool = False
    nginx_tests: int = 0

    @property
    def ok(self) -> bool:
        return self.result in ("applied", "nothing to do")

    @property
    def task_status(self) -> int:
        """The product's task status of a finished apply: 0 success, 1 failure (2, in progress,
        is reported by the running agent while an apply is queued or running)."""
        return 0 if self.ok else 1


@dataclass
class Compiled:
    """The effective desired state and its nginx units (one per load balancer with L7)."""

    serving: Serving
    units: dict[str, Files]
    failed: dict[str, list[Issue]] = field(default_factory=dict)


def revision(raw: Any) -> str:
    """A short content hash of a raw document: what `status` calls its revision."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Revisions:
    """Revisions by source, computed once per raw object (the source keeps unchanged objects)."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[Any, str]] = {}

    def of(self, source: str, raw: Any) -> str:
        cached = self._memo.get(source)
        if cached is None or cached[0] is not raw:
            cached = (raw, revision(raw))
            self._memo[source] = cached
        return cached[1]

    def keep(self, sources: set[str]) -> None:
        self._memo = {s: v for s, v in self._memo.items() if s in sources}


class Engine:
    """Owns the nginx controller, the IPVS plane and the good state of one host."""

    def __init__(self, config: AgentConfig):
        self.config = config
        self.store = Store(config.state_dir)
        self.nginx = NginxController(config.nginx_root, config.nginx_binary, config.reload_timeout)
        self.settings = Settings.load(config.settings)
        self.l4 = L4Plane(config)
        self.good = GoodState()
        self.good_units: dict[str, Files] = {}
        self.good_plan = IpvsPlan()
        self.desired = IncrementalValidator(self.settings)  # the documents as given
        self.served = IncrementalValidator(self.settings)  # with quarantined ones at their last good version
        self._units: dict[str, tuple[DocumentResult, int, frozenset[str], Files]] = {}
        self.down: frozenset[str] = frozenset()  # health: keys of dead targets, marked down when compiled
        self._down_by_lb: dict[str, frozenset[str]] = {}
        self.serving: Serving | None = None  # what the last good apply serves (the targets to probe)
        self.view = ServingView()
        self._main: list[tuple[tuple[Any, ...], str]] = []  # nginx.conf, by what it depends on
        self._composed: list[tuple[dict[str, Files], str, Files]] = []  # the last file sets composed
        self.revisions = Revisions()
        self.dynamic = config.upstreams == "dynamic" or (config.upstreams == "auto" and LUA_MODULE.exists())
        self._parsed: dict[str, tuple[Files, dict[str, Upstream]]] = {}
        self.secret = b""
        self.last_report: ApplyReport | None = None

    def reconfigure(self, config: AgentConfig) -> None:
        """A re-read agent config (SIGHUP): new settings mean every document is judged again.
        The state directory and the nginx root are fixed for the life of the process."""
        settings = Settings.load(config.settings)
        self.config = config.model_copy(update={"state_dir": self.config.state_dir})
        self.nginx.binary, self.nginx.reload_timeout = config.nginx_binary, config.reload_timeout
        if settings != self.settings:
            self.settings = settings
            self.desired = IncrementalValidator(settings)
            self.served = IncrementalValidator(settings)

    def set_down(self, down: frozenset[str]) -> None:
        """The dead targets' keys (``<lb>/<listener>/<location>/<ip:port>``, L4 ``<lb>/<listener>/<ip:port>``);
        the next apply compiles again only the load balancers whose keys changed."""
        if down != self.down:
            self.down = down
            self._down_by_lb = _by_load_balancer(down)

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Serve the last good state: the generation it names is current and nginx runs it."""
        self.store.prepare()
        self.secret = self.store.secret()
        self.nginx.generations.prepare()
        self.good = self.store.load()
        gens = self.nginx.generations
        if self.good.generation is not None and self.good.generation not in gens.numbers():
            self.good = GoodState()
        compiled = self._compile(list(self.good.documents.items()), full=True)
        self.good_units = compiled.units
        self.serving = compiled.serving
        self.good_plan = self._plan(compiled)
        if self.good.generation is None:
            return
        if gens.current() != self.good.generation:
            # Killed between the switch and the verification: go back to what was proven.
            gens.switch(self.good.generation)
            if self.nginx.master() is not None:
                self.nginx.reload()
        self.nginx.ensure_running()
        self._sync(self._compose(self.good_units))

    # ------------------------------------------------------------------ apply

    def apply(
        self, docs: list[tuple[str, Any]], load_issues: list[Issue], failed_files: set[str], full: bool = False
    ) -> ApplyReport:
        """Apply the documents; ``full`` validates and compiles everything again (periodic resync)."""
        if full:
            gc.unfreeze()  # what earlier commits froze is collected again like everything else
        report = ApplyReport(generation=self.good.generation)
        t = time.perf_counter()
        new = self.desired.validate(docs, full)
        self._check_transitions(new)
        bad = {d.source for d in new.documents if not d.ok}
        bad |= {src for src, _ in docs if any(_under(i.path, src) for i in load_issues)}
        effective = self._effective(docs, bad, failed_files)
        report.issues = load_issues + new.issues
        report.timings["validate"] = time.perf_counter() - t

        t = time.perf_counter()
        compiled = self._compile(effective, full) if (bad or failed_files) else self._compile_state(new, self.desired)

        served_sources = dict(effective)
        self._note_quarantine(report, new, docs, bad, load_issues, failed_files)
        for lb_id, issues in compiled.failed.items():
            report.quarantined.setdefault(lb_id, []).extend(issues)

        units = {**compiled.units}
        for lb_id in compiled.failed:  # could not compile: keep the last good unit
            if lb_id in self.good_units:
                units[lb_id] = self.good_units[lb_id]
        files = self._compose(units)
        gens = self.nginx.generations
        good_files = self._compose(self.good_units)
        unchanged = self.good.generation is not None and files == good_files
        plan = self._plan(compiled)

        vips = compiled.serving.vips
        vip_errors = prepare_vips(vips, self.config.vip_interface, self.l4.available)
        staged = None
        differing = _differing(files, good_files)
        # Members, weights and down marks only: the data files change, nginx.conf and the includes
        # do not; the change goes over the channel without a test or a reload.
        members_only = (
            self.dynamic
            and not unchanged
            and self.good.generation is not None
            and self.nginx.master() is not None
            and all(p.startswith("upstreams/") for p in differing)
        )
        report.timings["compile"] = time.perf_counter() - t  # units, file set, IPVS plan, VIPs, what changed
        if not unchanged:
            t = time.perf_counter()
            layout = gens.layout(files)
            staged = gens.stage(layout, self.good.generation, _differing(layout, gens.layout(good_files)))
            report.timings["write"] = time.perf_counter() - t
            t = time.perf_counter()
            check = self.nginx.test(staged.number) if not members_only else None
            report.nginx_tests += check is not None
            if check is not None and not check.ok:
                gens.discard(staged.number)
                culprits = self._bisect(units, check.output, report)
                units = {**units}  # a new set (composed file sets are kept by the identity of theirs)
                for lb_id, reason in culprits.items():
                    hint = f" ({vip_errors[lb_id]})" if lb_id in vip_errors else ""
                    report.quarantined.setdefault(lb_id, []).append(
                        Issue(lb_id, Code.FAILED_OPERATION, f"nginx refused its configuration: {reason}{hint}")
                    )
                    served_sources = {s: raw for s, raw in served_sources.items() if self._root_of(s) != lb_id} | {
                        s: raw for s, raw in self.good.documents.items() if self._root_of(s) == lb_id
                    }
                    if lb_id in self.good_units:
                        units[lb_id] = self.good_units[lb_id]
                    else:
                        units.pop(lb_id, None)
                compiled = self._compile(list(served_sources.items()))
                plan = self._plan(compiled)
                vips = compiled.serving.vips
                files = self._compose(units)
                unchanged = files == self._compose(self.good_units)
                if not unchanged:
                    staged = gens.stage(gens.layout(files), self.good.generation)
                    check = self.nginx.test(staged.number)
                    report.nginx_tests += 1
                    if not check.ok:  # the good units alone pass; this should not happen
                        gens.discard(staged.number)
                        report.result, report.error = "failed", f"nginx -t: {_excerpt(check.output)}"
                        return self._finish(report)
            report.timings["nginx_test"] = time.perf_counter() - t

        t = time.perf_counter()
        l4_report = self.l4.apply(plan, vips)
        report.timings["ipvs"] = time.perf_counter() - t
        if l4_report.error:
            if staged is not None:
                gens.discard(staged.number)
            report.result, report.error = "rolled back", f"IPVS: {l4_report.error}"
            return self._finish(report)
        for lb_id, message in self.l4.notes(plan).items():
            report.issues.append(Issue(lb_id, Code.FAILED_OPERATION, message, "warning"))

        if not unchanged and staged is not None:
            t = time.perf_counter()
            error = "reload"
            if members_only:
                gens.switch(staged.number)
                error = self._send_members(files, good_files, differing)
                report.timings["send"] = time.perf_counter() - t
            if error:  # a reload loads the data files whatever the channel did
                error = self._switch(staged.number, files)
                report.timings["reload"] = time.perf_counter() - t
                report.reloaded = True
            if error:
                report.result, report.error = "rolled back", error
                self._rollback(staged.number)
                return self._finish(report)
            report.generation = staged.number
        elif self.nginx.master() is None and self.good.generation is not None:
            self.nginx.ensure_running()

        report.changed = sorted(
            set(units) ^ set(self.good_units) | {k for k in units if units[k] != self.good_units.get(k)}
        )
        report.result = "applied" if (report.changed or not unchanged) else "nothing to do"
        self.serving = compiled.serving
        self._commit(report, served_sources, units, plan, docs)
        return self._finish(report)

    def _check_transitions(self, new: DesiredState) -> None:
        """Rules about changes rather than states (SNI, once on, stays on: R15), for the documents
        validated anew, against the versions being served."""
        previous, fresh = self.served.state, self.desired.fresh
        if previous is None or not fresh:
            return
        roots = {d.root for d in fresh}
        before = DesiredState([d for d in previous.documents if d.root in roots], previous.catalog, previous.settings)
        check_transition(before, DesiredState(fresh, new.catalog, new.settings))

    def repair(self) -> list[str]:
        """Periodic repair: restart a dead master, restore hand-edited generated files."""
        done: list[str] = []
        gen = self.good.generation
        if gen is None:
            return done
        gens = self.nginx.generations
        if gens.current() != gen:
            gens.switch(gen)
            done.append("current generation restored")
        if gens.files(gen) != gens.layout(self._compose(self.good_units)):
            staged = gens.stage(gens.layout(self._compose(self.good_units)), None)
            if self.nginx.test(staged.number).ok and not self._switch(staged.number, self._compose(self.good_units)):
                self.good.generation = staged.number
                self.store.save(self.good, {s: self.revisions.of(s, raw) for s, raw in self.good.documents.items()})
                done.append(f"generated files restored as generation {staged.number}")
            else:
                gens.switch(gen)
                gens.discard(staged.number)
        if self.nginx.master() is None:
            self.nginx.ensure_running()
            done.append("nginx master restarted")
        error = self._sync(self._compose(self.good_units))
        if error:
            done.append(f"upstreams not in sync: {error}")
        return done

    # ------------------------------------------------------------------ steps

    def _effective(self, docs: list[tuple[str, Any]], bad: set[str], failed_files: set[str]) -> list[tuple[str, Any]]:
        """The documents to serve: new ones where valid, the last good version where not."""
        out = [(s, raw) for s, raw in docs if s not in bad]
        out += [(s, self.good.documents[s]) for s, _ in docs if s in bad and s in self.good.documents]
        present = {s for s, _ in docs}
        out += [
            (s, raw)
            for s, raw in self.good.documents.items()
            if s not in present and any(_in_file(s, f) for f in failed_files)
        ]
        return out

    def _compile_state(self, state: DesiredState, validator: IncrementalValidator) -> Compiled:
        """One nginx unit per load balancer with L7; a unit is compiled again only when its
        document's verdict or the shared objects changed."""
        out = Compiled(self.view.of(state), {})
        units: dict[str, tuple[DocumentResult, int, frozenset[str], Files]] = {}
        for doc, lb in out.serving.l7:
            down = self._down_by_lb.get(doc.root, frozenset())
            cached = self._units.get(doc.root)
            if cached is not None and cached[0] is doc and cached[1] == validator.catalog_version and cached[2] == down:
                out.units[doc.root] = cached[3]
                units[doc.root] = cached
                continue
            files, issues = compile_unit(
                lb,
                state.catalog,
                down,
                self.secret,
                legacy_tls=self.settings.legacy_tls_default,
                dynamic=self.dynamic,
            )
            if not files:
                out.failed[doc.root] = [i for i in issues if i.severity == "error"]
                continue
            out.units[doc.root] = files
            units[doc.root] = (doc, validator.catalog_version, down, files)
        self._units = units
        return out

    def _compile(self, docs: list[tuple[str, Any]], full: bool = False) -> Compiled:
        return self._compile_state(self.served.validate(docs, full), self.served)

    def _compose(self, units: dict[str, Files]) -> Files:
        """The whole file set of a generation: nginx.conf and every unit. An apply composes the new
        set and the served one; both are kept while their units and nginx.conf stay the same."""
        main = self._main_conf(units)
        for memo in self._composed:
            if memo[0] is units and memo[1] is main:
                return memo[2]
        files = {"nginx.conf": main}
        for lb_id in sorted(units):
            files.update(units[lb_id])
        self._composed = [(units, main, files), *self._composed[:1]]
        return files

    def _main_conf(self, units: dict[str, Files]) -> str:
        """nginx.conf. In dynamic mode it sizes the shared memory from every upstream, so it is
        rendered again only when a data file changed (unchanged units keep their very strings,
        which compare at once)."""
        data = tuple(unit.get(names.data_file(lb_id)) for lb_id, unit in sorted(units.items())) if self.dynamic else ()
        # the metrics module as it fits the binary now: an nginx upgraded in place renders anew
        module = module_path(nginx=self.config.nginx_binary) if self.dynamic else None
        key = (self.config.worker_shutdown_timeout, self.config.nginx_binary, module, data)
        for known, text in self._main:
            if known == key:
                return text
        root = self.config.nginx_root
        main = main_conf(
            str(root),
            self.config.worker_shutdown_timeout,
            dynamic=self.dynamic,
            upstreams=self._upstreams(units) if self.dynamic else None,
            conf_dir=str(root / "current"),
            nginx=self.config.nginx_binary,
        )
        self._main = [(key, main), *self._main[:1]]  # the new one and the one served
        return main

    def _upstreams(self, units: dict[str, Files]) -> dict[str, Upstream]:
        """Every dynamic upstream of the units (each unit's data file parsed once)."""
        out: dict[str, Upstream] = {}
        parsed: dict[str, tuple[Files, dict[str, Upstream]]] = {}
        for lb_id, unit in units.items():
            cached = self._parsed.get(lb_id)
            if cached is None or cached[0] is not unit:
                cached = (unit, upstreams_of(unit))
            parsed[lb_id] = cached
            out.update(cached[1])
        self._parsed.update(parsed)
        return out

    def _sync(self, files: Files) -> str:
        """Make nginx hold the upstreams of ``files`` and check it (after every reload and start,
        and for a change of members only); '' when it does, else the error."""
        if not self.dynamic or self.nginx.master() is None:
            return ""
        try:
            with UpstreamsChannel.of_prefix(self.config.nginx_root) as channel:
                channel.sync(upstreams_of(files))
        except (ChannelError, httpx.HTTPError, OSError) as exc:
            return f"the upstreams channel: {exc}"
        return ""

    def upstreams_report(self) -> dict[str, Any]:
        """Per load balancer and rule upstream: the members nginx really holds (weight, down, active
        connections) next to the desired ones, and whether they agree (``status --upstreams``)."""
        if not self.dynamic:
            return {"mode": "static", "load_balancers": {}, "note": "members are compiled into the configuration"}
        try:
            with UpstreamsChannel.of_prefix(self.config.nginx_root) as channel:
                held = channel.held()
        except (ChannelError, httpx.HTTPError, OSError) as exc:
            return {"mode": "dynamic", "load_balancers": {}, "error": f"the upstreams channel: {exc}"}
        out: dict[str, dict[str, Any]] = {}
        desired_names: set[str] = set()
        for lb_id, unit in sorted(self.good_units.items()):
            for name, want in sorted(upstreams_of(unit).items()):
                desired_names.add(name)
                have = held.upstreams.get(name)
                have_members = {m.endpoint: m for m in have.members} if have else {}
                members = [
                    {
                        "endpoint": m.endpoint,
                        "weight": m.weight,
                        "down": m.down,
                        "held_weight": have_members[m.endpoint].weight if m.endpoint in have_members else None,
                        "held_down": have_members[m.endpoint].down if m.endpoint in have_members else None,
                        "active": held.active.get(name, {}).get(m.endpoint, 0),
                    }
                    for m in want.members
                ]
                out.setdefault(lb_id, {})[name] = {"in_sync": have == want, "members": members}
        extra = sorted(set(held.upstreams) - desired_names)
        return {"mode": "dynamic", "instance": held.instance, "load_balancers": out, "unexpected": extra}

    def _send_members(self, files: Files, base: Files, paths: set[str]) -> str:
        """A change of members, weights or down marks only: the upstreams of the changed data
        files go over the channel, no reload. '' when nginx holds them, else the error."""
        new = upstreams_of({p: files[p] for p in paths if p in files})
        old = upstreams_of({p: base[p] for p in paths if p in base})
        try:
            with UpstreamsChannel.of_prefix(self.config.nginx_root) as channel:
                if new:
                    channel.send(new)
                gone = sorted(set(old) - set(new))
                for name in gone:
                    channel.delete(name)
                # Read back only what changed: the whole table would cost as much as the state.
                left = [
                    f"upstream {n}: nginx does not hold what was sent" for n in new if channel.held_one(n) != new[n]
                ]
                left += [f"upstream {n}: still held after its removal" for n in gone if channel.held_one(n) is not None]
        except (ChannelError, httpx.HTTPError, OSError) as exc:
            return f"the upstreams channel: {exc}"
        return "; ".join(left)

    def _plan(self, compiled: Compiled) -> IpvsPlan:
        return self.view.plan(compiled.serving, self.down)

    def _bisect(self, units: dict[str, Files], failed_output: str, report: ApplyReport) -> dict[str, str]:
        """The changed load balancers whose new unit makes ``nginx -t`` fail, found by bisection
        among the changed ones only (the last good generation passed). Those that pass join the
        base as soon as they are cleared, so later halves are tested with them."""
        changed = sorted(k for k in set(units) | set(self.good_units) if units.get(k) != self.good_units.get(k))
        base = dict(self.good_units)
        culprits: dict[str, str] = {}

        def with_changes(selection: list[str]) -> dict[str, Files]:
            trial = dict(base)
            for k in selection:
                if k in units:
                    trial[k] = units[k]
                else:
                    trial.pop(k, None)
            return trial

        def search(group: list[str], output: str | None) -> None:
            if output is None:
                gens = self.nginx.generations
                staged = gens.stage(gens.layout(self._compose(with_changes(group))), self.good.generation)
                check = self.nginx.test(staged.number)
                self.nginx.generations.discard(staged.number)
                report.nginx_tests += 1
                if check.ok:
                    base.update(with_changes(group))
                    for k in group:
                        if k not in units:
                            base.pop(k, None)
                    return
                output = check.output
            if len(group) == 1:
                culprits[group[0]] = _excerpt(output)
                return
            half = len(group) // 2
            search(group[:half], None)
            search(group[half:], None)

        if changed:
            search(changed, failed_output)
        return culprits

    def _switch(self, number: int, files: Files) -> str:
        """Make a staged generation current and serving; '' when verified, else the error."""
        self.nginx.generations.switch(number)
        if self.nginx.master() is None:
            try:
                self.nginx.start()
            except Exception as exc:  # any start failure is reported and rolled back
                return str(exc)
        else:
            result = self.nginx.reload()
            if not result.ok:
                return f"reload not taken: {result.error}"
        return self._sync(files)

    def _rollback(self, failed: int) -> None:
        gens = self.nginx.generations
        if self.good.generation is not None:
            gens.switch(self.good.generation)
            if self.nginx.master() is not None:
                self.nginx.reload()
            else:
                self.nginx.ensure_running()
            self._sync(self._compose(self.good_units))
        gens.discard(failed)
        self.l4.apply(self.good_plan, {})

    def _commit(
        self,
        report: ApplyReport,
        served: dict[str, Any],
        units: dict[str, Files],
        plan: IpvsPlan,
        docs: list[tuple[str, Any]],
    ) -> None:
        now = time.time()
        generation = report.generation
        status: dict[str, dict[str, Any]] = {}
        desired = {self._root_of(s, raw): self.revisions.of(s, raw) for s, raw in docs}
        served_roots = {self._root_of(s, raw): (s, raw) for s, raw in served.items()}
        previous = self.good.status
        for root in sorted(set(desired) | set(served_roots) | set(report.quarantined)):
            source, raw = served_roots.get(root, ("", None))
            rev = self.revisions.of(source, raw) if raw is not None else None
            old = previous.get(root, {})
            changed = rev != old.get("revision") or root in report.changed
            errors = [i.to_dict() for i in report.quarantined.get(root, [])]
            status[root] = {
                "source": source,
                "revision": rev,
                "desired_revision": desired.get(root),
                "generation": generation if changed else old.get("generation", generation),
                "applied_at": now if changed else old.get("applied_at", now),
                "result": "quarantined" if errors else "applied",
                "task_status": 1 if errors else 0,
                "errors": errors,
            }
        self.good = GoodState(generation, dict(sorted(served.items())), status)
        self.good_units = units
        self.good_plan = plan
        self.store.save(self.good, {s: self.revisions.of(s, raw) for s, raw in self.good.documents.items()})
        self.revisions.keep({s for s, _ in docs} | set(self.good.documents))
        gens = self.nginx.generations
        gens.prune(self.config.keep_generations, {generation} if generation is not None else set())
        # The committed state lives until the next change. Frozen, it is no longer scanned by the
        # collector: a full collection over a thousand load balancers costs more than an edit.
        gc.freeze()

    def _note_quarantine(
        self,
        report: ApplyReport,
        new: DesiredState,
        docs: list[tuple[str, Any]],
        bad: set[str],
        load_issues: list[Issue],
        failed_files: set[str],
    ) -> None:
        for doc in new.documents:
            if doc.source in bad:
                errors = [i for i in doc.issues if i.severity == "error"]
                errors += [i for i in load_issues if _under(i.path, doc.source)]
                report.quarantined.setdefault(doc.root, []).extend(errors)
        for f in failed_files:
            report.quarantined.setdefault(self._root_of_file(f), []).extend(i for i in load_issues if _under(i.path, f))

    def _root_of(self, source: str, raw: Any = None) -> str:
        raw = raw if raw is not None else self.good.documents.get(source)
        if isinstance(raw, dict):
            ident = raw.get("LoadBalancerId") or raw.get("loadBalancerId")
            if isinstance(ident, str) and ident:
                return ident
        return source

    def _root_of_file(self, path: str) -> str:
        roots = [self._root_of(s) for s in self.good.documents if _in_file(s, path)]
        return roots[0] if len(roots) == 1 else path

    def _finish(self, report: ApplyReport) -> ApplyReport:
        if report.generation is None:
            report.generation = self.good.generation
        self.last_report = report
        return report


def _by_load_balancer(down: frozenset[str]) -> dict[str, frozenset[str]]:
    """Health keys grouped by load balancer (their first part)."""
    out: dict[str, set[str]] = {}
    for key in down:
        out.setdefault(key.split("/", 1)[0], set()).add(key)
    return {lb: frozenset(keys) for lb, keys in out.items()}


def _differing(files: Files, base: Files) -> set[str]:
    return {rel for rel, text in files.items() if base.get(rel) is not text and base.get(rel) != text}


def _under(path: str, source: str) -> bool:
    return path == source or path.startswith(f"{source}/")


def _in_file(source: str, path: str) -> bool:
    """Whether a document came from ``path`` (a file, or a directory that could not be read)."""
    return source == path or source.startswith((f"{path}#", f"{path}/"))


def _excerpt(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if "[emerg]" in line or "failed" in line]
    text = (lines or output.strip().splitlines() or ["nginx -t failed"])[0]
    return text.split("] ", 1)[-1][:300]
