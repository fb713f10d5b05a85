"""The command line: --help everywhere, exit codes, JSON output, the schema."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import pytest

from clbagent import cli
from clbagent.cli import build_parser, main
from clbagent.loader import load
from tests.helpers import FIXTURES

COMMANDS = [
    ["validate"],
    ["schema"],
    ["import"],
    ["import", "alibaba-https"],
    ["render"],
    ["apply"],
    ["run"],
    ["status"],
    ["health"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_has_help(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: clbagent" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2


def test_validate_json_lists_code_path_message(capsys) -> None:
    rc = main(["validate", "--json", str(FIXTURES / "bad" / "range.yaml")])
    issues = json.loads(capsys.readouterr().out)
    assert rc == 2
    assert set(issues[0]) == {"code", "path", "message", "severity"}


def test_unreadable_yaml_is_a_format_error(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("LoadBalancerId: [unclosed\n")
    assert main(["validate", "--json", str(bad)]) == 2
    assert json.loads(capsys.readouterr().out)[0]["code"] == "InvalidParameter.FormatError"


def test_schema_is_json_schema_with_api_field_names(capsys) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "LoadBalancer"
    assert {"LoadBalancerId", "Listeners", "Certificates"} <= set(schema["properties"])
    assert "SessionExpireTime" in schema["$defs"]["Rule"]["properties"]


def _keys(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        out.update(node)
        for v in node.values():
            _keys(v, out)
    elif isinstance(node, list):
        for v in node:
            _keys(v, out)
    return out


def test_full_example_uses_every_field(capsys) -> None:
    main(["schema"])
    schema = json.loads(capsys.readouterr().out)
    fields = set(schema["properties"]) | {p for d in schema["$defs"].values() for p in d.get("properties", {})}
    docs, _ = load([FIXTURES / "examples" / "full.yaml"], FIXTURES / "certs")
    used = _keys([raw for _, raw in docs], set())
    not_servable = {"TrpcCallee", "TrpcFunc", "SmCertId", "SignCert", "SignCertPrivateKey"}  # refused by design
    assert fields - used - not_servable == set()


def test_parser_lists_all_commands() -> None:
    text = build_parser().format_help()
    for name in ("validate", "schema", "import", "render", "apply", "run", "status", "health"):
        assert name in text


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_each_command_is_found_in_the_module_cli_imports_for_it() -> None:
    assert _commands(build_parser()) == set(cli.COMMANDS)
    for name, module in cli.COMMANDS.items():
        assert name in _commands(build_parser(module))


def test_a_command_line_imports_only_what_its_command_needs() -> None:
    """``clbagent render --help`` loads no validation, compiler or agent library (start-up time)."""
    code = (
        "import sys\n"
        "from clbagent.cli import main\n"
        "try:\n    main(['render', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'pydantic', 'yaml', 'jinja2', 'cryptography', 'pyroute2', 'prometheus_client', 'aetcd', 'httpx',"
        " 'asyncio'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
