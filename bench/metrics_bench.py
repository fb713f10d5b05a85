"""Metrics benchmark (not a test): what counting L7 metrics costs on the request path, and what a
scrape costs at 1,000 load balancers.

1. Request path, on the path a user runs: one load balancer (an HTTP listener, one rule, three
   targets) compiled by clbagent in dynamic mode and served by its own nginx as compiled
   (counted, the values from clbagent's nginx module), the same prefix with nginx.conf not loading
   that module (counted through the joined variable, as where the module is not built), the same
   prefix without the metrics (dynamic_bench's ``dynamic-nometrics``: no counting in the log
   phase, no scope variable), and a second such nginx as a control. Each
   nginx has one worker pinned to CPU 0; wrk (-t1 -c32, keep-alive) and the backends run on
   CPU 1. In each round the four serve a wrk each at the same time (run one after the other,
   two identical servers differed by ±10-20 % on the shared host; at the same time, by ±2 %);
   per round, counted / not counted and control / not counted in requests per wall-clock second
   and per CPU second of the worker; the median and the spread of the per-round ratios.
   Then the log phase alone: called in a loop inside the counted nginx after that traffic (so
   LuaJIT compiled it as the requests ran), in CPU time, against one not-counted request's CPU.
2. Instructions: the not-counted and the two counted nginx under callgrind in turn (wrk -c8 for some
   seconds after a warm-up): user-space instructions per request of the worker, a figure that
   the host's other load does not move. Kernel time (the sockets) is left out, so the share of
   counting is larger than in CPU time.
3. Scrape: 1,000 load balancers (two rules each, one target) compiled as the agent does, served
   by nginx; each rule and each domain's 404 receives a request; then the agent's metrics
   endpoint is scraped by curl: series count, wall-clock time and the CPU time of nginx's worker
   and of the agent per scrape, against a scrape of the agent's own families only and against the
   raw read of nginx's counters, in the same run.

Run:  nice -n 10 .venv/bin/python bench/metrics_bench.py [--only path|instructions|scrape] [--seconds 2] [--rounds 10]
      [--lbs 1000] [--scrapes 20]
Hold /tmp/clb-locks/bench_wrk while the request-path and instruction parts run on a shared host.
Goals: counted/not counted ≥ 95%; scrape ≤ 100 ms at 1,000 load balancers.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.dynamic_bench as dyn  # noqa: E402
from bench.dynamic_bench import COMMON, Backends, Front, free_port, prefix_dirs, start  # noqa: E402
from clbagent.agent.metrics import AgentMetrics  # noqa: E402
from clbagent.l7 import compile_nginx, write_prefix  # noqa: E402
from clbagent.nginx.metrics_channel import LOG_VAR, SCOPE_VAR, module_path, read_text  # noqa: E402
from clbagent.nginx.process import Nginx  # noqa: E402
from clbagent.nginx.upstreams_channel import SOCKET  # noqa: E402
from clbagent.settings import Settings  # noqa: E402
from clbagent.validate import validate_documents  # noqa: E402

FRONT, BACK = "127.0.64.1", "127.0.64.2"
PATH_FRONT, PATH_BACK = "127.0.61.{}", "127.0.62.{}"
COUNTED, PLAIN, CONTROL = "dynamic", "dynamic-nometrics", "control"
JOINED = "dynamic-joined"  # counted as compiled, but nginx.conf without clbagent's module: the joined variable
# A server added to the counted prefix after the wrk rounds: the log phase in a loop.
LOGCOST = f"""\
server {{
    listen {{address}};
    location /logcost {{ set ${SCOPE_VAR} bench/lbl-bench/loc-cost/www.example.com; content_by_lua_block {{
        local log, n = require("clb.metrics").log, tonumber(ngx.var.arg_n)
        local function nothing() end
        local t0 = os.clock()
        for _ = 1, n do nothing("{LOG_VAR}", "{SCOPE_VAR}") end
        local t1 = os.clock()
        for _ = 1, n do log("{LOG_VAR}", "{SCOPE_VAR}") end
        ngx.say((os.clock() - t1 - (t1 - t0)) / n)
    }} }}
}}
"""


def spread(ratios: list[float]) -> str:
    ratios = sorted(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return f"{statistics.median(ratios):.1%} (quartiles {q1:.1%}-{q3:.1%}, range {ratios[0]:.1%}-{ratios[-1]:.1%})"


def front(work: Path, name: str, vip: str, port: int, backends: Backends, serve: bool = True) -> Front:
    """The nginx of ``name``; ``JOINED`` is the counted prefix with the line that loads clbagent's
    module taken out of nginx.conf, so that the log phase reads the joined variable instead."""
    if name != JOINED:
        return Front(work / name, COUNTED if name == COUNTED else PLAIN, vip, port, backends, serve=serve)
    f = Front(work / name, COUNTED, vip, port, backends, serve=False)
    conf = f.prefix / "nginx.conf"
    module = module_path()
    assert module, "no module built for this nginx: scripts/build-nginx-module.sh"
    text = conf.read_text()
    assert f"load_module {module};\n" in text, "nginx.conf no longer loads the module this way: update the benchmark"
    conf.write_text(text.replace(f"load_module {module};\n", ""))
    if serve:
        f.nginx = start(f.prefix)
    return f


def concurrent_round(fronts: dict[str, Front], seconds: int) -> dict[str, tuple[float, float]]:
    """One wrk per nginx, all at once: requests per wall-clock second and per CPU second of each
    worker, over the same seconds of the host's life."""
    cpu = {name: f.worker_cpu() for name, f in fronts.items()}
    wrk = ["taskset", "-c", str(dyn.OTHER_CPU), "wrk", "-t1", "-c32", f"-d{seconds}s"]
    procs = {name: subprocess.Popen([*wrk, f.url], stdout=subprocess.PIPE, text=True) for name, f in fronts.items()}
    out = {}
    for name, proc in procs.items():
        text = proc.communicate()[0]
        assert proc.returncode == 0 and "Non-2xx" not in text and "Socket errors" not in text, text
        requests = int(re.search(r"(\d+) requests in", text).group(1))
        out[name] = (requests / seconds, requests / (fronts[name].worker_cpu() - cpu[name]))
    return out


def request_path(work: Path, seconds: int, rounds: int) -> None:
    """Rounds in which counted (values from clbagent's nginx module), counted through the joined
    variable (nginx without the module), not counted and a second not-counted nginx (the control)
    serve wrk at the same time, their workers sharing CPU 0: whatever else the host runs hits all
    four alike. The control's ratio to the first not-counted nginx shows what two identical
    servers differ by on this host."""
    dyn.BACK = PATH_BACK  # the backends and the document read it: this benchmark's own addresses
    backends = Backends(work)
    port = free_port(PATH_FRONT.format(1))
    names = (COUNTED, JOINED, PLAIN, CONTROL)
    fronts: dict[str, Front] = {}
    try:
        for i, name in enumerate(names):
            fronts[name] = front(work, name, PATH_FRONT.format(i + 1), port, backends)
        concurrent_round(fronts, 1)  # warm-up: LuaJIT traces, keep-alive pools
        runs = [concurrent_round(fronts, seconds) for _ in range(rounds)]
        print(
            f"request path: {rounds} rounds of {seconds} s, {len(names)} nginx served at once (wrk -t1 -c32 each), "
            f"their workers on CPU {dyn.FRONT_CPU}, wrk and the backends on CPU {dyn.OTHER_CPU}"
        )
        for name in names:
            print(f"  {name:18} req/s: " + ", ".join(f"{r[name][0]:,.0f}" for r in runs))
        print("  goal: counted/not counted >= 95%")
        ratios_of = (
            (COUNTED, "counted (module)/not counted"),
            (JOINED, "counted (joined variable)/not counted"),
            (CONTROL, "control: not counted/not counted"),
        )
        for label, k in (("per wall-clock second", 0), ("per CPU second of the worker", 1)):
            print(f"  {label}: not counted, median {statistics.median(r[PLAIN][k] for r in runs):,.0f}")
            for name, what in ratios_of:
                ratios = [r[name][k] / r[PLAIN][k] for r in runs]
                print(f"    {what} = {spread(ratios)}, median of {rounds} rounds")
        per_request = 1 / statistics.median(r[PLAIN][1] for r in runs)
        for name in (COUNTED, JOINED):
            log_cost = log_phase_alone(fronts[name])
            print(
                f"  the counting log phase alone ({name}): {log_cost * 1e6:.2f} us CPU per request (median of 5 loops "
                f"of 100,000), {log_cost / per_request:.1%} of a not-counted request's worker CPU "
                f"({per_request * 1e6:.1f} us)"
            )
    finally:
        for f in fronts.values():
            f.close()
        backends.close()


def log_phase_alone(front: Front) -> float:
    """CPU seconds of one call of the log phase, measured inside the counted nginx."""
    address = f"{PATH_FRONT.format(9)}:{free_port(PATH_FRONT.format(9))}"
    (front.prefix / "conf.d" / "zz-logcost.conf").write_text(LOGCOST.replace("{address}", address))
    front.nginx.reload()
    calls = [float(httpx.get(f"http://{address}/logcost?n=100000", timeout=60).text) for _ in range(5)]
    families = text_string_to_metric_families(read_text(front.prefix / SOCKET).decode())
    counted = sum(x.value for f in families if f.name == "clb_http_requests" for x in f.samples)
    print(f"  requests counted by the counted nginx: {counted:,.0f}")
    return statistics.median(calls)


def instructions(work: Path, warm: int, seconds: int) -> None:
    """The not-counted nginx and the counted one (values from clbagent's module, then through the
    joined variable) under callgrind in turn: user-space instructions per request of the worker,
    and their ratio. Under valgrind nginx serves a few hundred requests a second, so the
    once-a-second flush weighs on each request tens of times more than at full speed: the part
    spent in timers is printed apart (an upper bound of what the flush costs; it also holds the
    adding of the buffered requests, which at full speed the log phase does when the buffer
    fills)."""
    dyn.BACK = PATH_BACK
    backends = Backends(work)
    port = free_port(PATH_FRONT.format(1))
    got = {}
    try:
        for i, name in enumerate((PLAIN, COUNTED, JOINED)):
            f = front(work, name, PATH_FRONT.format(i + 1), port, backends, serve=False)
            per_request, requests = f.instructions(warm, seconds)
            got[name] = per_request, requests, timers(f.prefix / "callgrind.out.1") / requests
    finally:
        backends.close()
    plain, n_plain, _ = got[PLAIN]
    print(
        f"instructions per request of the nginx worker (callgrind, user space only, {seconds} s of wrk -c8 each): "
        f"not counted {plain:,.0f} ({n_plain} requests)"
    )
    for name in (COUNTED, JOINED):
        counted, n_counted, in_timers = got[name]
        print(
            f"  {name}: {counted:,.0f} ({n_counted} requests), {in_timers:,.0f} of them in timers; counting adds "
            f"{counted - plain:,.0f} ({(counted - plain) / plain:.1%}), {counted - in_timers - plain:,.0f} "
            f"({(counted - in_timers - plain) / plain:.1%}) without the timers; not counted/counted = "
            f"{plain / counted:.1%} ({plain / (counted - in_timers):.1%} without the timers)"
        )


def timers(dump: Path) -> int:
    """Instructions spent in nginx's timers (inclusive) in a callgrind dump."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(dump)], capture_output=True, text=True).stdout
    found = re.search(r"^\s*([\d,]+) \([ \d.]+%\)\s+\S*:ngx_event_expire_timers ", out, re.M)
    return int(found.group(1).replace(",", "")) if found else 0


def documents(n: int, back_port: int) -> list[tuple[str, dict]]:
    def lb(i: int) -> dict:
        target = {"EniIp": BACK, "Port": back_port, "Weight": 10}
        rules = [
            {"LocationId": f"loc-{i}-{u}", "Domain": f"lb{i}.example.com", "Url": f"/{u}", "DefaultServer": u == "a",
             "HealthCheck": {"HealthSwitch": 0}, "Targets": [target]}
            for u in ("a", "b")
        ]  # fmt: skip
        listener = {"ListenerId": f"lbl-{i}", "Protocol": "HTTP", "Port": 21000 + i, "Rules": rules}
        return {"LoadBalancerId": f"lb-{i}", "LoadBalancerVips": [FRONT], "Listeners": [listener]}

    return [(f"lb-{i}.yaml", lb(i)) for i in range(n)]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def curl_scrapes(url: str, repeats: int, nginx: Nginx, *flags: str) -> tuple[list[float], dict[str, float]]:
    """Whole scrapes as a scraper in its own process sees them (curl's total, sorted), and the CPU
    seconds per scrape of nginx's workers, of this process (the agent's endpoint) and of curl."""
    workers = [psutil.Process(pid) for pid in nginx.workers()]

    def cpu() -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        nginx_cpu = sum(sum(w.cpu_times()[:2]) for w in workers)
        return nginx_cpu, time.process_time(), children.ru_utime + children.ru_stime

    before = cpu()
    walls = sorted(
        float(subprocess.run(["curl", "-s", *flags, "-o", "/dev/null", "-w", "%{time_total}", url],
                             capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats)
    )  # fmt: skip
    after = cpu()
    return walls, {k: (a - b) / repeats for k, a, b in zip(("nginx", "agent", "curl"), after, before, strict=True)}


def scrape(work: Path, lbs: int, repeats: int) -> None:
    back = work / "back"
    prefix_dirs(back)
    back_port = free_port(BACK)
    backend = start(back, COMMON.format(body=f'    server {{ listen {BACK}:{back_port}; return 200 "ok\\n"; }}\n'))
    prefix = work / "lbs"
    t = time.perf_counter()
    state = validate_documents(documents(lbs, back_port), Settings())
    write_prefix(compile_nginx(state, prefix=str(prefix), dynamic=True), prefix)
    nginx = start(prefix, (prefix / "nginx.conf").read_text())
    print(f"scrape at {lbs:,} load balancers (2 rules each; compiled and started in {time.perf_counter() - t:.1f}s)")
    try:
        for i in range(lbs):
            conn = http.client.HTTPConnection(FRONT, 21000 + i, timeout=10)
            for path in ("/a", "/b", "/missing"):
                conn.request("GET", path, headers={"Host": f"lb{i}.example.com"})
                conn.getresponse().read()
            conn.close()
        time.sleep(1.5)  # the workers flush once a second
        own, full = AgentMetrics(), AgentMetrics()
        full.watch_l7(lambda: read_text(prefix / SOCKET))
        ports = {}
        for name, m in (("own", own), ("full", full)):
            ports[name] = free_port(FRONT)
            m.serve(FRONT, ports[name])
        url = f"http://{FRONT}:{ports['full']}/metrics"
        text = httpx.get(url, timeout=30).text
        series = sum(1 for line in text.splitlines() if line.startswith("clb_"))
        print(f"  {series:,} clb_* series ({series / lbs:.0f} per load balancer), {len(text) / 1e6:.1f} MB per scrape")
        curl_scrapes(url, 4, nginx)  # warm-up: each worker's label caches, buffer and compiled traces
        plain = None  # the median of the plain scrapes: what nginx's text read is a share of
        for label, flags in (("", ()), (" asking for gzip (served as it is)", ("--compressed",))):
            walls, cpu = curl_scrapes(url, repeats, nginx, *flags)
            wall = statistics.median(walls)
            plain = plain or wall
            print(
                f"  scrape (curl GET of the endpoint{label}), {repeats} scrapes: median {wall * 1000:.0f} ms "
                f"(min {walls[0] * 1000:.0f}, max {walls[-1] * 1000:.0f}; goal <= 100 ms: {wall / 0.1:.0%} of it); "
                f"CPU per scrape: nginx worker {cpu['nginx'] * 1000:.1f} ms, agent {cpu['agent'] * 1000:.1f} ms, "
                f"curl {cpu['curl'] * 1000:.1f} ms"
            )
        own_walls, _ = curl_scrapes(f"http://{FRONT}:{ports['own']}/metrics", repeats, nginx)
        t_read = timed(lambda: read_text(prefix / SOCKET), repeats)
        print(
            f"  the agent's own families alone {statistics.median(own_walls) * 1000:.1f} ms; nginx's text read "
            f"alone {t_read * 1000:.0f} ms ({t_read / plain:.0%} of the plain scrape); load average "
            f"{os.getloadavg()[0]:.1f}"
        )
        t = time.process_time()
        compressed = zlib.compress(text.encode(), 1)
        print(
            f"  gzip level 1 of the text would cost {(time.process_time() - t) * 1000:.0f} ms CPU per scrape "
            f"({len(text) / 1e6:.1f} -> {len(compressed) / 1e6:.2f} MB)"
        )
    finally:
        nginx.stop()
        backend.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("path", "instructions", "scrape"), help="run one part only")
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--lbs", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=20)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/apt-packages-lua.txt)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="clb-metricsbench-"))
    work.chmod(0o755)
    try:
        if args.only in (None, "path"):
            request_path(work / "path", args.seconds, args.rounds)
        if args.only in (None, "instructions"):
            if shutil.which("valgrind"):
                instructions(work / "instructions", 5, 10)
            else:
                print("instructions: valgrind is not installed (scripts/apt-packages-lua.txt)")
        if args.only in (None, "scrape"):
            scrape(work / "scrape", args.lbs, args.scrapes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
