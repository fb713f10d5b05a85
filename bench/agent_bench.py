"""Benchmark (not a test): the agent's apply path, from a document edit on disk to the new
configuration verified serving, for 1 and for 1,000 load balancers; then changes under load.

Each row is split the way an operator reasons about it: load+validate, compile, write (staging
the generation), ``nginx -t``, reload+verify. The goal is that everything but ``nginx -t`` and the
reload stays under 50 ms for a one-document edit among 1,000: only that document is re-read and
re-validated, only its pack of files is written. The reference in the same run is ``nginx -t``
itself. The commit that follows a verified apply (the good state written to the state directory)
is not on the path to serving; its cost is printed at the end of the row.

The second table applies ``--churn`` changes one after another (targets added and removed, a
load balancer added and removed) while wrk (keep-alive) and a client opening a connection per
request run, and compares wrk's throughput with a quiet run of the same length (the reference).

    .venv/bin/python bench/agent_bench.py [--sizes 1,1000] [--edits 5] [--churn 100]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clbagent.agent.config import AgentConfig
from clbagent.agent.engine import Engine
from clbagent.agent.source import FileSource


def document(i: int, weight: int = 10) -> dict:
    vip = f"127.1.{i // 250}.{i % 250 + 1}"
    return {
        "LoadBalancerId": f"lb-{i:05d}",
        "LoadBalancerVips": [vip],
        "Listeners": [
            {
                "ListenerId": f"lbl-{i:05d}",
                "Protocol": "HTTP",
                "Port": 8080,
                "Rules": [
                    {
                        "LocationId": f"loc-{i:05d}-{r}",
                        "Domain": f"www{r}.site{i}.example.com",
                        "Url": "/",
                        "DefaultServer": r == 0,
                        "HealthCheck": {"HealthSwitch": 0},
                        "Targets": [
                            {"EniIp": f"10.{i // 250}.{i % 250}.{t + 1}", "Port": 80, "Weight": weight}
                            for t in range(2)
                        ],
                    }
                    for r in range(2)
                ],
            }
        ],
    }


def target(i: int, t: int, weight: int) -> dict:
    return {"EniIp": f"10.{i // 250}.{i % 250}.{t + 1}", "Port": 80, "Weight": weight}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _first_call(fn: Callable[..., Any], marks: list[float]) -> Callable[..., Any]:
    """``fn``, noting the process CPU time when it is first called after ``marks`` was cleared."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not marks:
            marks.append(time.process_time())
        return fn(*args, **kwargs)

    return wrapped


def write(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.rename(path)


def run(size: int, edits: int, mode: str = "static") -> dict[str, float]:
    """Median figures of ``edits`` one-target edits among ``size`` load balancers."""
    base = Path(tempfile.mkdtemp(prefix="clb-bench-agent-"))
    base.chmod(0o755)
    docs = base / "documents"
    docs.mkdir()
    for i in range(size):
        write(docs / f"lb-{i:05d}.yaml", document(i))
    config = AgentConfig(
        documents=docs, state_dir=base / "state", metrics_address="", worker_shutdown_timeout="5s", upstreams=mode
    )
    engine = Engine(config)
    engine.start()
    source = FileSource([docs])
    t = time.perf_counter()
    snap = source.read()
    first = engine.apply(snap.docs, snap.issues, snap.failed_files)
    full = time.perf_counter() - t
    assert first.result == "applied", first
    # CPU seconds are steadier than wall time on a shared host: the agent's own CPU up to the
    # moment it hands over to nginx (the test, or the channel), and the CPU of ``nginx -t``.
    handed_over: list[float] = []
    engine.nginx.test = _first_call(engine.nginx.test, handed_over)  # type: ignore[method-assign]
    engine._send_members = _first_call(engine._send_members, handed_over)  # type: ignore[method-assign]
    rows: list[dict[str, float]] = []
    for n in range(edits):
        target = docs / f"lb-{size // 2:05d}.yaml"
        write(target, document(size // 2, weight=20 + n))
        handed_over.clear()
        cpu, children = time.process_time(), _children_cpu()
        t = time.perf_counter()
        snap = source.read()
        read = time.perf_counter() - t
        report = engine.apply(snap.docs, snap.issues, snap.failed_files)
        whole = time.perf_counter() - t
        assert report.result == "applied" and report.changed == [f"lb-{size // 2:05d}"], report
        tm = report.timings
        rows.append(
            {
                "load+validate": read + tm["validate"],
                "compile": tm["compile"],
                "write": tm["write"],
                "nginx -t": tm.get("nginx_test", 0.0),
                "reload+verify": tm.get("reload", 0.0),
                "send": tm.get("send", 0.0),
                "total": read + sum(tm.values()),
                "commit": whole - read - sum(tm.values()),  # after serving: the good state saved
                "ours cpu": handed_over[0] - cpu,
                "nginx -t cpu": _children_cpu() - children,
                "files read": snap.files_read,
            }
        )
    engine.nginx.stop()
    shutil.rmtree(base, ignore_errors=True)
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    median["initial apply"] = full
    return median


def churn(changes: int, mode: str) -> None:
    """Changes under load: wrk and a connection-per-request client, failures counted. Static mode:
    every change is a verified reload (the worst case for keep-alive clients)."""
    import re
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.agent.conftest import Load

    class Answer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b'{"backend": "%s"}' % self.server.server_address[0].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    pool = []
    for n in range(4):
        server = ThreadingHTTPServer((f"127.0.45.{n + 1}", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        pool.append({"EniIp": f"127.0.45.{n + 1}", "Port": server.server_address[1], "Weight": 10})
    base = Path(tempfile.mkdtemp(prefix="clb-bench-churn-"))
    base.chmod(0o755)
    docs = base / "documents"
    docs.mkdir()
    vip = "127.0.46.1"

    def lb(i: int) -> dict:
        doc = document(0)
        doc["LoadBalancerVips"] = [vip]
        rule = doc["Listeners"][0]["Rules"][0]
        rule["Domain"], rule["Targets"] = "www.example.com", [pool[(i + k) % 4] for k in range(1 + i % 3)]
        doc["Listeners"][0]["Rules"] = [rule]
        return doc

    write(docs / "a.yaml", lb(0))
    engine = Engine(
        AgentConfig(
            documents=docs, state_dir=base / "state", metrics_address="", worker_shutdown_timeout="5s", upstreams=mode
        )
    )
    engine.start()
    source = FileSource([docs])

    def apply() -> None:
        snap = source.read()
        report = engine.apply(snap.docs, snap.issues, snap.failed_files)
        assert report.ok, report

    apply()
    wrk = shutil.which("wrk")

    def run_wrk(seconds: float) -> subprocess.Popen | None:
        if wrk is None:
            return None
        return subprocess.Popen(
            [wrk, "-t1", "-c8", f"-d{max(1, round(seconds))}s", "-H", "Host: www.example.com", f"http://{vip}:8080/"],
            stdout=subprocess.PIPE,
            text=True,
        )

    def wrk_figures(proc: subprocess.Popen | None) -> tuple[int, int, int]:
        if proc is None:
            return 0, 0, 0
        out = proc.communicate()[0]
        total = int(re.search(r"(\d+) requests in", out).group(1))
        errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        return total, errors, non2xx

    start = time.perf_counter()
    with Load(vip, 8080, "www.example.com") as fresh:
        for i in range(changes):
            if i % 10 == 9:
                write(docs / "b.yaml", {**lb(i), "LoadBalancerId": "lb-b", "LoadBalancerVips": ["127.0.46.2"]})
            elif i % 10 == 0:
                (docs / "b.yaml").unlink(missing_ok=True)
            write(docs / "a.yaml", lb(i + 1))
            if i == 0:
                busy = run_wrk(changes * 0.12)
            apply()
    seconds = time.perf_counter() - start
    busy_total, busy_errors, busy_non2xx = wrk_figures(busy)
    quiet_total, _, _ = wrk_figures(run_wrk(changes * 0.12))
    engine.nginx.stop()
    print(f"\n{changes} changes applied in {seconds:.1f}s ({changes / seconds:.1f}/s), each a verified reload")
    print(f"  connection-per-request client: {fresh.sent} requests, {fresh.failed} failed")
    if wrk is None:
        print("  wrk: not installed")
        return
    ratio = busy_total / quiet_total if quiet_total else 0.0
    print(
        f"  wrk keep-alive (8 conns): {busy_total} requests, {busy_errors} socket errors, {busy_non2xx} non-2xx; "
        f"{ratio:.2f}x the requests of a quiet run of the same length ({quiet_total})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,1000")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--churn", type=int, default=100, help="changes under load (0: skip)")
    args = parser.parse_args()
    print(
        f"{'LBs':>6} {'load+validate':>14} {'compile':>8} {'write':>7} {'ours':>8} {'nginx -t':>9} "
        f"{'reload':>8} {'ours/nginx -t':>14} {'CPU: ours/nginx -t':>19} {'initial':>8} {'then: commit':>13}"
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    static = {size: run(size, args.edits, "static") for size in sizes}
    for size, m in static.items():
        ours = m["load+validate"] + m["compile"] + m["write"]
        cpu = f"{m['ours cpu'] * 1000:.1f}/{m['nginx -t cpu'] * 1000:.0f}ms"
        print(
            f"{size:>6} {m['load+validate'] * 1000:>12.1f}ms {m['compile'] * 1000:>6.1f}ms {m['write'] * 1000:>5.1f}ms "
            f"{ours * 1000:>6.1f}ms {m['nginx -t'] * 1000:>7.1f}ms {m['reload+verify'] * 1000:>6.1f}ms "
            f"{ours / m['nginx -t']:>13.2f}x {cpu:>13} {m['ours cpu'] / m['nginx -t cpu']:.3f}x "
            f"{m['initial apply']:>7.2f}s {m['commit'] * 1000:>11.1f}ms"
        )
    if Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists():
        print("\ntarget change in a document -> nginx serving it (static: test + reload; dynamic: the channel)")
        print(
            f"{'LBs':>6} {'static':>10} {'dynamic':>10} {'of which send':>14} {'dynamic/static':>15} "
            f"{'dynamic: agent CPU':>19}"
        )
        for size in sizes:
            d = run(size, args.edits, "dynamic")
            print(
                f"{size:>6} {static[size]['total'] * 1000:>8.1f}ms {d['total'] * 1000:>8.1f}ms "
                f"{d['send'] * 1000:>12.1f}ms {d['total'] / static[size]['total']:>14.3f}x "
                f"{d['ours cpu'] * 1000:>17.1f}ms"
            )
    if args.churn:
        churn(args.churn, "static")


if __name__ == "__main__":
    main()
