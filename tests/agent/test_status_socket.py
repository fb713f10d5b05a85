"""The status socket answers from a worker thread, whatever the snapshot does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from clbagent.agent.status import request, serve


def test_snapshot_runs_outside_the_event_loop(tmp_path: Path) -> None:
    """A snapshot may make blocking calls that run an event loop of their own (pyroute2 does)."""

    def snapshot(what: str) -> dict[str, Any]:
        loop = asyncio.new_event_loop()
        try:
            return {"what": what, "inner": loop.run_until_complete(asyncio.sleep(0, result="ran"))}
        finally:
            loop.close()

    async def main() -> dict[str, Any]:
        path = tmp_path / "run" / "status.sock"
        server = await serve(path, snapshot)
        async with server:
            return await asyncio.to_thread(request, path, "status")

    assert asyncio.run(main()) == {"what": "status", "inner": "ran"}
