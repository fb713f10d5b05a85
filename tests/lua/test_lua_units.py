"""Runs the Lua unit tests (tests/lua/unit/*_spec.lua) with Debian's busted under LuaJIT, the
interpreter nginx's Lua module embeds, so the project's test command runs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (shutil.which("busted") and shutil.which("luajit")), reason="busted or luajit missing")
def test_lua_units() -> None:
    proc = subprocess.run(
        ["busted", "-f", "tests/lua/.busted", "-o", "TAP"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not ok" not in proc.stdout
    assert "\n1.." in proc.stdout, proc.stdout
