"""Run the real nginx binary on a prefix written by ``clbagent.l7.write_prefix``: test, start,
reload, stop. Used by the tests and the benchmark; the safe-apply loop builds on it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = os.environ.get("CLBAGENT_NGINX", "/usr/sbin/nginx")


@dataclass
class CheckResult:
    ok: bool
    output: str
    seconds: float


def _args(prefix: Path) -> list[str]:
    return [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]


def check_config(prefix: Path, timeout: float = 600) -> CheckResult:
    """``nginx -t`` on the prefix; its verdict, its output and how long it took."""
    start = time.perf_counter()
    proc = subprocess.run([*_args(prefix), "-t"], capture_output=True, text=True, timeout=timeout)
    return CheckResult(proc.returncode == 0, proc.stderr + proc.stdout, time.perf_counter() - start)


class Nginx:
    """One nginx master serving ``prefix``."""

    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.pid_file = prefix / "run" / "nginx.pid"

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def start(self, timeout: float = 20) -> None:
        proc = subprocess.run(_args(self.prefix), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"nginx did not start: {proc.stderr}")
        self._wait(lambda: self.pid is not None, timeout, "pid file")

    def reload(self, timeout: float = 20) -> None:
        """Signal a reload and wait until the old workers are gone (new configuration in force)."""
        pid = self.pid
        assert pid is not None, "nginx is not running"
        before = set(self.workers())
        os.kill(pid, signal.SIGHUP)
        self._wait(lambda: (w := set(self.workers())) and not (w & before), timeout, "new workers")

    def workers(self) -> list[int]:
        pid = self.pid
        if pid is None:
            return []
        try:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        except OSError:
            return []
        return [int(x) for x in out.split()]

    def stop(self, timeout: float = 20, graceful: bool = False) -> None:
        """Fast shutdown (SIGTERM) by default; ``graceful`` lets requests in flight finish (SIGQUIT)."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGQUIT if graceful else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:  # the master removes its pid file on exit (it may linger as a zombie of init)
            self._wait(lambda: not self.pid_file.exists(), timeout, "exit")
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nginx: no {what} after {timeout}s")
