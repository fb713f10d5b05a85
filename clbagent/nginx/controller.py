"""The nginx master clbagent owns: start or adopt it, test a generation, reload and prove it.

``nginx -s reload`` (or SIGHUP) proves nothing: the master answers it even when it refuses the new
configuration, and then keeps its old workers. A reload counts as done only when the master has
started new workers, every old worker has stopped accepting (it is shutting down or gone: until
then it still takes new connections with the old configuration), and neither the master nor a new
worker logged ``[emerg]``/``[alert]`` since the signal (read from the error log offset taken just
before it).

The master is started detached from the agent (its own session, parent init), so the data plane
outlives the agent: stopping or restarting clbagent never stops nginx.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .generations import Generations
from .process import NGINX, CheckResult

_LOG_LINE = re.compile(r"\[(emerg|alert)\] (\d+)#\d+: (.*)")


@dataclass
class ReloadResult:
    ok: bool
    seconds: float
    error: str = ""
    workers: list[int] = field(default_factory=list)


class NginxError(RuntimeError):
    """nginx could not be started or did not take a configuration."""


class NginxController:
    """One nginx master serving ``<root>/current/nginx.conf``."""

    def __init__(self, root: Path, binary: str = NGINX, reload_timeout: float = 60.0):
        self.root = root
        self.binary = binary
        self.reload_timeout = reload_timeout
        self.generations = Generations(root)
        self.pid_file = root / "run" / "nginx.pid"
        self.error_log = root / "logs" / "error.log"
        self.conf = root / "current" / "nginx.conf"

    # ------------------------------------------------------------------ the master process

    def master(self) -> psutil.Process | None:
        """The running master of this root, if the pid file names one (a stale pid file, or a pid
        reused by another process, does not count)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            proc = psutil.Process(pid)
            cmdline = " ".join(proc.cmdline())
        except (OSError, ValueError, psutil.Error):
            return None
        if "master process" in cmdline and str(self.conf) in cmdline:
            return proc
        return None

    def orphans(self) -> list[psutil.Process]:
        """Workers of this root whose master is gone (killed): they still hold the listening
        sockets, so a new master could not bind until they go. Ours have our error log open."""
        found = []
        log = str(self.error_log)
        for proc in psutil.process_iter(["name", "ppid"]):
            try:
                if proc.info["name"] != "nginx" or proc.info["ppid"] != 1 or "master" in _title(proc):
                    continue
                if any(f.path == log for f in proc.open_files()):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def start(self, timeout: float = 30.0) -> psutil.Process:
        """Start a master on the current generation (nginx daemonizes itself). Orphaned workers of a
        killed master are asked to finish their requests and go first, so the new master can bind."""
        (self.root / "run" / "ctl.sock").unlink(missing_ok=True)  # left by a killed master
        orphans = self.orphans()
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGQUIT)
        psutil.wait_procs(orphans, timeout=0.2)
        # Output goes to a file, not a pipe: the daemonized master could hold a pipe open forever.
        with tempfile.TemporaryFile(mode="w+") as out:
            try:
                code = subprocess.run(
                    [self.binary, "-p", str(self.root), "-c", str(self.conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    timeout=timeout,
                    start_new_session=True,
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
            out.seek(0)
            if code != 0:
                raise NginxError(f"nginx did not start: {_tail(out.read()) or 'no answer'}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            master = self.master()
            if master is not None and self._active_workers(master):
                return master
            time.sleep(0.02)
        raise NginxError(f"nginx started but no master with workers after {timeout:.0f}s")

    def ensure_running(self) -> tuple[psutil.Process, bool]:
        """Adopt the running master, or start one. Returns (master, started)."""
        master = self.master()
        if master is not None:
            return master, False
        return self.start(), True

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown. Only tests, the demo and an operator's explicit request use this."""
        master = self.master()
        if master is None:
            return
        master.terminate()
        try:
            master.wait(timeout)
        except psutil.TimeoutExpired:
            master.kill()

    def workers(self) -> tuple[list[int], list[int]]:
        """(active workers, old workers still draining) of the running master."""
        master = self.master()
        if master is None:
            return [], []
        active, draining = [], []
        for child in _children(master):
            title = _title(child)
            if "shutting down" in title:
                draining.append(child.pid)
            elif "worker process" in title:
                active.append(child.pid)
        return active, draining

    # ------------------------------------------------------------------ configurations

    def test(self, generation: int) -> CheckResult:
        """``nginx -t`` on a staged generation (its own nginx.conf and includes)."""
        conf = self.generations.path(generation) / "nginx.conf"
        start = time.perf_counter()
        proc = subprocess.run(
            [self.binary, "-p", str(self.root), "-c", str(conf), "-t"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        return CheckResult(proc.returncode == 0, proc.stderr + proc.stdout, time.perf_counter() - start)

    def reload(self) -> ReloadResult:
        """Signal the master to reload and verify that it really took the new configuration."""
        start = time.perf_counter()
        master = self.master()
        if master is None:
            return ReloadResult(False, 0.0, "nginx master is not running")
        before = {c.pid for c in _children(master)}
        expected = max(1, len(self._active_workers(master)))
        offset = self._log_size()
        os.kill(master.pid, signal.SIGHUP)
        deadline = time.monotonic() + self.reload_timeout
        while True:
            new = [p for p in self._active_workers(master) if p not in before]
            errors = self._errors_since(offset, {master.pid, *new})
            if errors:
                return ReloadResult(False, time.perf_counter() - start, errors)
            old_active = [p for p in self._active_workers(master) if p in before]
            if len(new) >= expected and not old_active and all(_is_child(p, master.pid) for p in new):
                return ReloadResult(True, time.perf_counter() - start, workers=new)
            if not master.is_running():
                return ReloadResult(False, time.perf_counter() - start, "nginx master exited during the reload")
            if time.monotonic() > deadline:
                return ReloadResult(
                    False, time.perf_counter() - start, f"no new workers {self.reload_timeout:.0f}s after the reload"
                )
            time.sleep(0.01)

    # ------------------------------------------------------------------ helpers

    def _active_workers(self, master: psutil.Process) -> list[int]:
        return [c.pid for c in _children(master) if "worker process" in (t := _title(c)) and "shutting" not in t]

    def _log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def _errors_since(self, offset: int, pids: set[int]) -> str:
        """``[emerg]``/``[alert]`` lines written since ``offset`` by the master or a new worker
        (old workers may legitimately alert while they are shut down)."""
        try:
            with self.error_log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        found = [m.group(3) for m in _LOG_LINE.finditer(text) if int(m.group(2)) in pids]
        return "; ".join(found[:3])


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children()
    except psutil.Error:
        return []


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _is_child(pid: int, parent: int) -> bool:
    try:
        return psutil.Process(pid).ppid() == parent
    except psutil.Error:
        return False


def _tail(text: str, lines: int = 3) -> str:
    """The last distinct lines of nginx's output (it repeats a failed bind five times)."""
    return " | ".join(dict.fromkeys(text.strip().splitlines()[-lines * 3 :]))
