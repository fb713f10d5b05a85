"""The memo of validate and render (clbagent.l7.memo): a run on unchanged input answers from the
record of the last run, and any change of what the answer depends on runs the command in full."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import pytest

from clbagent import loader
from clbagent.cli import main
from clbagent.commands import render, validate
from clbagent.loader import load
from clbagent.validate import validate_documents
from clbagent.validate.certs import load_chain
from tests.helpers import FIXTURES


@pytest.fixture
def docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the demo documents, and a cache directory of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return Path(shutil.copytree(FIXTURES / "demo", tmp_path / "docs"))


@pytest.fixture
def full_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the full runs of both commands (a replay does not call them)."""
    runs: list[str] = []
    for module, name in ((render, "render"), (validate, "check")):
        real = getattr(module, name)

        def counted(*args: object, _real=real, _name=name) -> int:
            runs.append(_name)
            return _real(*args)

        monkeypatch.setattr(module, name, counted)
    return runs


def output(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_unchanged_input_is_answered_from_the_record(docs, full_runs, capsys):
    first = output(capsys, ["validate", str(docs)])
    again = output(capsys, ["validate", str(docs)])
    assert again == first and first[0] == 0
    assert full_runs == ["check"]
    assert output(capsys, ["validate", "--no-cache", str(docs)]) == first
    assert full_runs == ["check", "check"]


def test_a_damaged_record_runs_in_full(docs, tmp_path, full_runs, capsys):
    first = output(capsys, ["validate", str(docs)])
    (record,) = (tmp_path / "cache" / "clbagent").glob("*.json")
    kept = json.loads(record.read_text())
    for damage in ({"head": kept["head"]}, {**kept, "seen": 7}, {**kept, "rc": "x"}):
        record.write_text(json.dumps({**damage, "format": kept["format"]}))
        assert output(capsys, ["validate", str(docs)]) == first
    assert full_runs == ["check"] * 4


def test_a_changed_document_or_certificate_file_runs_in_full(docs, full_runs, capsys):
    output(capsys, ["validate", str(docs)])
    shop = docs / "shop.yaml"
    shop.write_text(shop.read_text().replace("Weight: 30", "Weight: 300"))
    rc, _, err = output(capsys, ["validate", str(docs)])
    assert rc == 2 and "Weight" in err
    (docs / "extra.yaml").write_text("LoadBalancerId: lb-extra\nLoadBalancerVips: [127.0.10.9]\n")
    output(capsys, ["validate", str(docs)])
    (docs / "certs" / "www.example.com.key").write_text("not a key\n")
    rc, _, err = output(capsys, ["validate", str(docs)])
    assert "CertKey" in err
    assert full_runs == ["check"] * 4


def test_a_full_run_parses_only_the_texts_it_has_not_seen(docs, capsys, monkeypatch):
    parsed: list[str] = []
    real = loader._parse

    def counted(text: str, source: str, settings: object) -> object:
        parsed.append(Path(source).name)
        return real(text, source, settings)

    monkeypatch.setattr(loader, "_parse", counted)
    argv = ["render", "--upstreams", "static", "--format", "nginx", str(docs)]
    first = output(capsys, argv)
    assert sorted(parsed) == ["blog.yaml", "shop.yaml"]
    shop = docs / "shop.yaml"
    shop.write_text(shop.read_text().replace("Weight: 30", "Weight: 31"))
    second = output(capsys, argv)
    assert parsed[2:] == ["shop.yaml"] and "weight=31" in second[1]
    shop.write_text(shop.read_text().replace("Weight: 31", "Weight: 30"))
    assert output(capsys, argv) == first != second
    assert parsed[2:] == ["shop.yaml", "shop.yaml"]  # a record keeps the parses of its own run only


def test_a_record_holds_no_private_key(docs, tmp_path, capsys):
    key = (docs / "certs" / "www.example.com.key").read_text()
    cert = (docs / "certs" / "www.example.com.crt").read_text()
    inline = {"Certificates": [{"CertId": "inline", "CertType": "SVR", "CertContent": cert, "CertKey": key}]}
    (docs / "inline.yaml").write_text(json.dumps(inline))
    prefix = tmp_path / "prefix"
    for argv in (["validate", str(docs)], ["render", "--out", str(prefix), str(docs)]):
        assert output(capsys, argv)[0] == 0
    records = list((tmp_path / "cache" / "clbagent").glob("*.json"))
    assert len(records) == 2 and (prefix / "certs" / "cert-www.key").exists()
    body = key.splitlines()[1]  # a base64 line of the key: found even without its PEM armour
    assert not any("PRIVATE KEY" in r.read_text() or body in r.read_text() for r in records)


def test_render_out_replays_only_onto_the_prefix_it_wrote(docs, tmp_path, full_runs, capsys):
    prefix = tmp_path / "prefix"
    argv = ["render", "--upstreams", "static", "--out", str(prefix), str(docs)]
    first = output(capsys, argv)
    assert output(capsys, argv) == first
    assert full_runs == ["render"]
    conf = prefix / "conf.d" / "lb-shop.conf"
    text = conf.read_text()
    conf.write_text(text + "# edited\n")
    assert output(capsys, argv) == first
    assert conf.read_text() == text and full_runs == ["render"] * 2
    (prefix / "conf.d" / "stray.conf").write_text("")
    output(capsys, argv)
    assert not (prefix / "conf.d" / "stray.conf").exists() and full_runs == ["render"] * 3
    os.chmod(prefix / "certs" / "cert-www.key", 0o644)
    output(capsys, argv)
    assert (prefix / "certs" / "cert-www.key").stat().st_mode & 0o777 == 0o600
    assert full_runs == ["render"] * 4


def test_a_cache_directory_others_may_write_is_not_used(docs, tmp_path, full_runs, capsys):
    output(capsys, ["validate", str(docs)])
    os.chmod(tmp_path / "cache" / "clbagent", 0o777)
    output(capsys, ["validate", str(docs)])
    assert full_runs == ["check", "check"]


def test_the_record_lapses_when_a_certificate_enters_its_warning_window_or_expires(docs):
    state = validate_documents(load([docs])[0])
    end = load_chain((docs / "certs" / "www.example.com.crt").read_text())[0].not_valid_after_utc
    window = end - datetime.timedelta(days=state.settings.cert_expiry_warning_days)
    assert state.stable_until(window - datetime.timedelta(seconds=1)) == window
    assert state.stable_until(window) == end
    assert state.stable_until(end) is None
