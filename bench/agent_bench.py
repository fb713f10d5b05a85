"""Benchmark (not a test): the agent's apply path, from a document edit on disk to the new
configuration verified serving, for 1 and for 1,000 load balancers.

Each row is split the way an operator reasons about it: load+validate, compile, write (staging
the generation), ``nginx -t``, reload+verify. The goal is that everything but ``nginx -t`` and the
reload stays under 50 ms for a one-document edit among 1,000: only that document is re-read and
re-validated, only its file is written. The reference in the same run is ``nginx -t`` itself.

    .venv/bin/python bench/agent_bench.py [--sizes 1,1000] [--edits 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
                            {"EniIp": f"10.{i // 250}.{i % 250}.{t + 1}", "Port": 80, "Weight": weight} for t in range(2)
                        ],
                    }
                    for r in range(2)
                ],
            }
        ],
    }


def write(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.rename(path)


def run(size: int, edits: int) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="clb-bench-agent-"))
    base.chmod(0o755)
    docs = base / "documents"
    docs.mkdir()
    for i in range(size):
        write(docs / f"lb-{i:05d}.yaml", document(i))
    config = AgentConfig(documents=docs, state_dir=base / "state", metrics_address="", worker_shutdown_timeout="5s")
    engine = Engine(config)
    engine.start()
    source = FileSource([docs])
    t = time.perf_counter()
    snap = source.read()
    first = engine.apply(snap.docs, snap.issues, snap.failed_files)
    full = time.perf_counter() - t
    assert first.result == "applied", first
    rows: list[dict[str, float]] = []
    for n in range(edits):
        target = docs / f"lb-{size // 2:05d}.yaml"
        write(target, document(size // 2, weight=20 + n))
        t = time.perf_counter()
        snap = source.read()
        read = time.perf_counter() - t
        report = engine.apply(snap.docs, snap.issues, snap.failed_files)
        assert report.result == "applied" and report.changed == [f"lb-{size // 2:05d}"], report
        tm = report.timings
        rows.append(
            {
                "load+validate": read + tm["validate"],
                "compile": tm["compile"],
                "write": tm["write"],
                "nginx -t": tm["nginx_test"],
                "reload+verify": tm["reload"],
                "files read": snap.files_read,
            }
        )
    engine.nginx.stop()
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    median["initial apply"] = full
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,1000")
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    print(f"{'LBs':>6} {'load+validate':>14} {'compile':>8} {'write':>7} {'ours':>8} {'nginx -t':>9} "
          f"{'reload':>8} {'ours/nginx -t':>14} {'initial':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        m = run(size, args.edits)
        ours = m["load+validate"] + m["compile"] + m["write"]
        print(
            f"{size:>6} {m['load+validate'] * 1000:>12.1f}ms {m['compile'] * 1000:>6.1f}ms {m['write'] * 1000:>5.1f}ms "
            f"{ours * 1000:>6.1f}ms {m['nginx -t'] * 1000:>7.1f}ms {m['reload+verify'] * 1000:>6.1f}ms "
            f"{ours / m['nginx -t']:>13.2f}x {m['initial apply']:>7.2f}s"
        )


if __name__ == "__main__":
    main()
