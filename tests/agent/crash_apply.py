"""Runs `clbagent apply` and kills the process with SIGKILL right after one step of the apply:
``staged`` (a generation written), ``switched`` (``current`` moved), ``signalled`` (SIGHUP sent to
the master). Used by the crash tests: the next agent must converge from whatever was left."""

from __future__ import annotations

import os
import signal
import sys

import clbagent.nginx.controller as controller
from clbagent.cli import main
from clbagent.nginx.generations import Generations


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(cls: type, name: str) -> None:
    real = getattr(cls, name)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        die()
        return result

    setattr(cls, name, wrapped)


step = sys.argv[1]
if step == "staged":
    after(Generations, "stage")
elif step == "switched":
    after(Generations, "switch")
elif step == "signalled":
    real_kill = os.kill

    class _Os:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def kill(pid: int, sig: int) -> None:
            real_kill(pid, sig)
            if sig == signal.SIGHUP:
                die()

    controller.os = _Os()
sys.exit(main(sys.argv[2:]))
