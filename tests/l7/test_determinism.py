"""Same input → byte-identical output; a change to one load balancer rewrites only its file; the
``render`` command writes a prefix that ``nginx -t -c DIR/nginx.conf`` accepts on its own."""

from __future__ import annotations

import copy
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from clbagent.cli import main
from clbagent.l7 import write_prefix
from tests.l7.conftest import NGINX_AVAILABLE, compile_docs, listener, load_balancer, rule


def fleet(n: int) -> list[dict]:
    docs = []
    for i in range(n):
        targets = [{"EniIp": f"127.0.21.{j + 1}", "Port": 9000 + i, "Weight": 10} for j in range(3)]
        rules = [
            rule("root", f"www{i}.a.test", "/", targets, DefaultServer=True, SessionExpireTime=60 if i % 2 else 0),
            rule("api", f"www{i}.a.test", "^~/api/", targets[:2], Scheduler="LEAST_CONN"),
        ]
        docs.append(
            load_balancer(f"lb-{i:04d}", f"127.0.{11 + i // 250}.{i % 250 + 1}", [listener("l", "HTTP", 18400, rules)])
        )
    return docs


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_twice_is_byte_identical(dynamic):
    docs = fleet(20)
    assert compile_docs(docs, dynamic=dynamic).files == compile_docs(copy.deepcopy(docs), dynamic=dynamic).files


@pytest.mark.parametrize(("dynamic", "rewritten"), [(False, "conf.d/lb-0042.conf"), (True, "upstreams/lb-0042.json")])
def test_one_target_change_rewrites_one_file(tmp_path, dynamic, rewritten):
    docs = fleet(100)
    before = compile_docs(docs, prefix=str(tmp_path), dynamic=dynamic)
    write_prefix(before, tmp_path)
    docs[42]["Listeners"][0]["Rules"][1]["Targets"][0]["Weight"] = 55
    after = compile_docs(docs, prefix=str(tmp_path), dynamic=dynamic)
    changed = sorted(k for k in after.files if after.files[k] != before.files.get(k))
    assert changed == [rewritten]
    assert write_prefix(after, tmp_path) == [rewritten]
    assert write_prefix(after, tmp_path) == []  # nothing left to do


@pytest.mark.parametrize("dynamic", [False, True])
def test_removed_load_balancer_file_is_deleted(tmp_path, dynamic):
    docs = fleet(3)
    write_prefix(compile_docs(docs, prefix=str(tmp_path), dynamic=dynamic), tmp_path)
    removed = write_prefix(compile_docs(docs[:2], prefix=str(tmp_path), dynamic=dynamic), tmp_path)
    assert removed == ["conf.d/lb-0002.conf", *(["upstreams/lb-0002.json"] if dynamic else [])]
    assert not (tmp_path / "conf.d" / "lb-0002.conf").exists()


@pytest.mark.nginx
def test_render_out_is_a_self_contained_prefix(capsys):
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    work = Path(tempfile.mkdtemp(prefix="clb-render-"))
    (work / "lbs.yaml").write_text(yaml.safe_dump_all(fleet(3)))
    out = work / "prefix"
    assert main(["render", str(work / "lbs.yaml"), "--out", str(out)]) == 0
    assert (out / "certs").stat().st_mode & 0o777 == 0o700
    proc = subprocess.run(["nginx", "-t", "-c", str(out / "nginx.conf")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    capsys.readouterr()
    assert main(["render", "--dry-run", str(work / "lbs.yaml")]) == 0
    text = capsys.readouterr().out
    assert "# ==> conf.d/lb-0001.conf <==" in text and re.search(r"upstream u_[0-9a-f]{32}_root ", text)
