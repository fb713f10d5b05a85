"""Every hostile document of the corpus is refused with its documented code, on a path inside the
hostile document, with a sentence and never a traceback; the other tenant stays valid."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clbagent.errors import Code
from clbagent.validate import validate_documents
from tests.isolation.corpus import EVIL, Case, all_cases, port_range_flood, regex_cases
from tests.l7.conftest import listener, load_balancer, rule, target

CODES = {c.value for c in Code}
CASES = all_cases()
FLOOD = next(c for c in CASES if c.name == "targets-25000")


def tenant_a() -> dict:
    acl = {"AclId": "acl-a", "AclEntries": [{"Entry": "127.0.30.0/24"}]}
    rules = [rule("a", "www.a.test", "/", [target("127.0.20.1", 18001)], DefaultServer=True)]
    lis = listener("a-http", "HTTP", 18080, rules, AclStatus="on", AclId="acl-a", AclType="white")
    return load_balancer("lb-a", "127.0.10.61", [lis], Acls=[acl])


@pytest.mark.parametrize("case", [c for c in CASES if c is not FLOOD], ids=lambda c: c.id)
def test_hostile_document_is_refused_with_its_code(case: Case) -> None:
    state = validate_documents([("a.yaml", tenant_a()), ("evil.yaml", case.doc)])
    a, evil = state.documents
    assert a.ok, a.issues
    errors = [i for i in evil.issues if i.severity == "error"]
    assert errors, f"{case.name} was accepted"
    assert case.code in {i.code for i in errors}, errors
    for issue in errors:
        assert issue.code in CODES and issue.path.startswith(EVIL) and issue.message
    assert set(state.load_balancers()) == {"lb-a"}


@pytest.mark.parametrize("case", regex_cases()[::25], ids=lambda c: c.id)
def test_the_real_cli_refuses_without_a_traceback(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(case.doc))
    proc = subprocess.run(
        [sys.executable, "-m", "clbagent.cli", "validate", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    issues = json.loads(proc.stdout[: proc.stdout.rindex("]") + 1])
    assert case.code in {i["code"] for i in issues}


def _targets(n: int) -> dict:
    rule = dict(FLOOD.doc["Listeners"][0]["Rules"][0], Targets=[{"EniIp": "127.0.20.66", "Port": 18099}] * n)
    return dict(FLOOD.doc, Listeners=[dict(FLOOD.doc["Listeners"][0], Rules=[rule])])


def test_25000_duplicate_targets_cost_linear_time() -> None:
    timings = []
    for n in (2_500, 25_000):
        doc = _targets(n)
        start = time.process_time()
        state = validate_documents([("evil.yaml", doc)])
        timings.append(time.process_time() - start)
        assert "LimitExceeded" in {i.code for i in state.issues}
    assert timings[1] < 20 * timings[0] + 1.0, timings  # 10x the targets, about 10x the time


def test_port_ranges_on_many_vips_are_checked_as_intervals() -> None:
    start = time.process_time()
    state = validate_documents([("a.yaml", tenant_a()), ("evil.yaml", port_range_flood())])
    assert time.process_time() - start < 5
    assert state.documents[0].ok
