"""Benchmark (not a test): the health checker at 10,000 and 50,000 targets on loopback listeners.

The targets listen on 127.0.50-59.x in child processes (HTTP: one nginx worker answering 200 on
every one); IntervalTime 5 s, HealthNum and UnHealthNum 3, TimeOut 2 s. The agent's own Monitor
probes them. Once every target is Alive, the CPU of this process (user + system seconds per wall
second: the share of one core) is measured over a steady window. Then some listeners are closed
(HTTP: they answer 500), and the time until each is Dead is the detection latency (bound:
IntervalTime x UnHealthNum + 1 s); any other transition to Dead is a false one. The reference,
measured in the same run over the first ``--reference`` targets (default 2,000: the naive loop
must keep up on a busy host), is a plain connect()-per-probe asyncio loop (one task per target,
``loop.sock_connect`` with a timeout): its CPU per probe is the unit of the ratio.

    sudo nice -n 10 .venv/bin/python bench/health_bench.py [--targets 10000] [--large 50000] [--window 15]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clbagent.agent.metrics import AgentMetrics
from clbagent.health.monitor import Monitor, Transition
from clbagent.health.spec import Check, Probes, Subject
from clbagent.health.state import ALIVE, DEAD, HealthStore

INTERVAL, RISE, FALL, TIMEOUT = 5, 3, 3, 2.0
KILLED = 100
CHILD = r"""
import asyncio, resource, socket, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
first, n = int(sys.argv[1]), int(sys.argv[2])

def drop(sock):
    try:
        while True:
            sock.accept()[0].close()
    except OSError:
        pass

async def main():
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(first, first + n):
        sock = socket.socket()
        sock.bind((f"127.0.{50 + (i // 250) % 10}.{1 + i % 250}", 0))
        sock.listen(1024)
        sock.setblocking(False)
        socks.append(sock)
        loop.add_reader(sock.fileno(), drop, sock)  # accepted and closed at once (a half-open probe never gets here)
    print(" ".join("%s:%d" % s.getsockname() for s in socks), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        k = int(line)
        for s in socks[:k]:
            loop.remove_reader(s.fileno())
            s.close()
        print("closed", flush=True)

asyncio.run(main())
"""


PER_CHILD = 12500  # listeners per child process (each stays under the host's descriptor limit)


def raise_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Listeners:
    """``n`` listening sockets in child processes that accept and close."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.endpoints: list[tuple[str, int]] = []

    async def start(self, n: int) -> Listeners:
        for first in range(0, n, PER_CHILD):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                str(first),
                str(min(PER_CHILD, n - first)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,
            )
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode().split()
            self.endpoints += [(e.rsplit(":", 1)[0], int(e.rsplit(":", 1)[1])) for e in line]
            self.procs.append(proc)
        return self

    async def close_first(self, k: int) -> float:
        """Close the first ``k`` listeners (of the first child); when they are closed."""
        proc = self.procs[0]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{k}\n".encode())
        await proc.stdin.drain()
        await proc.stdout.readline()
        return time.monotonic()

    async def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            await proc.wait()


class NginxBackends:
    """``n`` HTTP targets served by one nginx worker (answering costs the backend little, so a
    starved backend never passes for a failing one). Killing a target makes it answer 500."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="clb-health-bench-"))
        self.proc: asyncio.subprocess.Process | None = None
        self.endpoints: list[tuple[str, int]] = []

    async def start(self, n: int) -> NginxBackends:
        self.endpoints = [(f"127.0.{50 + (i // 250) % 10}.{1 + i % 250}", 20000 + i // 2500) for i in range(n)]
        (self.dir / "killed.map").write_text("")
        listens = "".join(f"        listen {ip}:{port};\n" for ip, port in self.endpoints)
        (self.dir / "nginx.conf").write_text(
            f"worker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/error.log;\n"
            "worker_rlimit_nofile 19000;\nevents { worker_connections 16000; }\n"
            "http {\n    access_log off;\n"
            f"    map $server_addr:$server_port $killed {{ default 0; include {self.dir}/killed.map; }}\n"
            f"    server {{\n{listens}        location / {{ if ($killed) {{ return 500; }} return 200; }}\n    }}\n}}\n"
        )
        self.proc = await asyncio.create_subprocess_exec(
            "nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"
        )
        ip, port = self.endpoints[-1]
        while not await asyncio.to_thread(_status, ip, port):
            await asyncio.sleep(0.2)
        return self

    async def close_first(self, k: int) -> float:
        """The first ``k`` targets answer 500 from now on (a reload); when they do."""
        (self.dir / "killed.map").write_text("".join(f"{ip}:{port} 1;\n" for ip, port in self.endpoints[:k]))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        ip, port = self.endpoints[0]
        while await asyncio.to_thread(_status, ip, port) != 500:
            await asyncio.sleep(0.05)
        return time.monotonic()

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)
            await self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _status(ip: str, port: int) -> int | None:
    try:
        conn = http.client.HTTPConnection(ip, port, timeout=2)
        conn.request("GET", "/")
        return conn.getresponse().status
    except OSError:
        return None


async def scenario(kind: str, n: int, window: float, raw: bool, with_metrics: bool = True) -> dict:
    loop = asyncio.get_running_loop()
    listeners = await (NginxBackends() if kind == "http" else Listeners()).start(n)
    endpoints = listeners.endpoints
    http = {"host": "bench.health.test", "path": "/", "method": "GET", "version": "HTTP/1.1", "codes": 2}
    checks = [
        Check(kind, ip, port, TIMEOUT, INTERVAL, RISE, FALL, **(http if kind == "http" else {}))
        for ip, port in endpoints
    ]
    probes = Probes(
        {c: [Subject("lb-bench", "lis", "", c.endpoint, c.endpoint)] for c in checks}, {c: None for c in checks}
    )
    dead_at: dict[str, float] = {}
    false_dead: list[str] = []
    killed: set[str] = set()

    def on_change(transitions: list[Transition], down: frozenset[str]) -> None:
        now = time.monotonic()
        for t in transitions:
            if t.new == DEAD:
                ep = t.entry.check.endpoint
                if ep in killed:
                    dead_at.setdefault(ep, now)
                else:
                    false_dead.append(f"{ep}: {t.reason}")

    metrics = AgentMetrics()
    with tempfile.TemporaryDirectory() as tmp:
        done = [0]

        def count(kind: str, ok: bool, seconds: float) -> None:
            done[0] += 1

        def probes_done() -> float:
            """With the hook, the agent's own counter (the observer the agent passes, nothing added)."""
            if not with_metrics:
                return done[0]
            return sum(s.value for m in metrics.probes.collect() for s in m.samples if s.name.endswith("_total"))

        observe = metrics.observe_probe if with_metrics else count
        monitor = Monitor(loop, HealthStore(Path(tmp)), on_change, observe, raw=raw)
        monitor.update(probes)
        t0 = time.monotonic()
        while monitor.counts()[ALIVE] < n and time.monotonic() - t0 < INTERVAL * (RISE + 3):
            await asyncio.sleep(0.5)
        alive_after = time.monotonic() - t0
        probes_before = probes_done()
        c0, w0, lag = cpu(), time.monotonic(), 0.0
        while time.monotonic() - w0 < window:
            await asyncio.sleep(0.1)
            lag = max(lag, monitor.late)
        seconds, used = time.monotonic() - w0, cpu() - c0
        probed = probes_done() - probes_before
        killed.update(f"{ip}:{port}" for ip, port in endpoints[:KILLED])
        closed = await listeners.close_first(KILLED)
        bound = INTERVAL * FALL + 1
        while len(dead_at) < KILLED and time.monotonic() - closed < bound + 10:
            await asyncio.sleep(0.1)
            lag = max(lag, monitor.late)
        latencies = sorted(t - closed for t in dead_at.values())
        monitor.close()
    await listeners.stop()
    return {
        "kind": (kind if raw or kind != "tcp" else "tcp (connect fallback)")
        + ("" if with_metrics else ", no metrics hook"),
        "targets": n,
        "alive_after_s": round(alive_after, 1),
        "alive": monitor.counts()[ALIVE] + len(dead_at),
        "core_share": used / seconds,
        "probes_per_s": probed / seconds,
        "cpu_per_probe_us": 1e6 * used / max(probed, 1),
        "max_late_s": round(lag, 3),
        "detected": len(latencies),
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
        "bound_s": bound,
        "false_dead": len(false_dead),
        "false_examples": false_dead[:3],
    }


async def reference(n: int, window: float) -> dict:
    """A plain connect()-per-probe asyncio loop: one task per target, every INTERVAL seconds."""
    loop = asyncio.get_running_loop()
    listeners = await Listeners().start(n)
    done, stop = [0], [False]

    async def probe_forever(ip: str, port: int) -> None:
        await asyncio.sleep(random.uniform(0, INTERVAL))
        while not stop[0]:
            start = loop.time()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (ip, port)), TIMEOUT)
            except (OSError, TimeoutError):
                pass
            finally:
                sock.close()
            done[0] += 1
            await asyncio.sleep(max(0.0, INTERVAL - (loop.time() - start)))

    tasks = [asyncio.create_task(probe_forever(ip, port)) for ip, port in listeners.endpoints]
    await asyncio.sleep(INTERVAL + 1)
    c0, w0, d0 = cpu(), time.monotonic(), done[0]
    await asyncio.sleep(window)
    seconds, used, probes_done = time.monotonic() - w0, cpu() - c0, done[0] - d0
    # wait_for may swallow a cancel that meets a finishing connect (Python 3.11): the flag ends such
    # a task at its next turn, so no probe of the reference runs on into the figures measured later.
    stop[0] = True
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1)
    await listeners.stop()
    return {
        "kind": "reference: connect() per probe",
        "targets": n,
        "core_share": used / seconds,
        "probes_per_s": probes_done / seconds,
        "cpu_per_probe_us": 1e6 * used / max(probes_done, 1),
    }


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    wanted = set(args.only.split(","))
    ref = await reference(min(args.reference, args.targets), args.window)
    rows = [ref]
    print(json.dumps(ref), flush=True)
    plan = [
        ("tcp", "tcp", args.targets, True, True),
        ("tcp-bare", "tcp", args.targets, True, False),
        ("http", "http", args.targets, True, True),
        ("connect", "tcp", args.targets, False, True),
        ("large", "tcp", args.large, True, True),
    ]
    for name, kind, n, raw, with_metrics in plan:
        if n and name in wanted:
            row = await scenario(kind, n, args.window, raw, with_metrics)
            row["cpu_per_probe_vs_reference"] = row["cpu_per_probe_us"] / ref["cpu_per_probe_us"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    head = ("checker", "targets", "probes/s", "core", "us/probe", "vs ref", "late s", "p50 s", "p99 s", "false")
    line = "{:44} {:>7} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>6} {:>5}"
    print(line.format(*head))
    for r in rows:
        p50, p99 = r.get("p50_s"), r.get("p99_s")
        cells = (
            r["kind"],
            r["targets"],
            f"{r['probes_per_s']:.0f}",
            f"{r['core_share']:.1%}",
            f"{r['cpu_per_probe_us']:.1f}",
            f"{r.get('cpu_per_probe_vs_reference', 1.0):.2f}",
            r.get("max_late_s", ""),
            "" if p50 is None else f"{p50:.1f}",
            "" if p99 is None else f"{p99:.1f}",
            r.get("false_dead", ""),
        )
        print(line.format(*cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10000)
    parser.add_argument("--large", type=int, default=50000, help="0 skips the large run")
    parser.add_argument("--reference", type=int, default=2000, help="targets of the reference loop")
    parser.add_argument("--only", default="tcp,tcp-bare,http,connect,large", help="scenarios after the reference")
    parser.add_argument("--window", type=float, default=15.0, help="seconds of steady state measured")
    os.nice(10)
    asyncio.run(main(parser.parse_args()))
