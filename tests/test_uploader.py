"""The uploader's waiting: backoff while the relay is away, none once the link is back (unless the
gatherer's auto_fds is 0, which leaves a failed upload for the agent's next start)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from conftest import free_port

from relay.agent.spool import Spool
from relay.agent.uploader import Uploader


def tries(caplog: pytest.LogCaptureFixture) -> int:
    return sum("upload" in record.getMessage() and "failed" in record.getMessage()
               for record in caplog.records)


@pytest.mark.parametrize("keep_trying", [True, False])
async def test_a_relay_that_is_back_ends_the_backoff(tmp_path: Path, caplog, keep_trying: bool):
    caplog.set_level(logging.WARNING, "relay.agent.uploader")
    spool = Spool(tmp_path / "spool", 0)
    spool.add_snapshot(1, b"\xff\xd8 not much of a jpeg \xff\xd9", 1_700_000_000.0, 64, 36)
    away = f"ws://127.0.0.1:{free_port()}/agent"  # nothing listens there
    async with aiohttp.ClientSession() as http:
        uploader = Uploader(http, away, "rk_test", spool, lambda: keep_trying)
        stop = asyncio.Event()
        running = asyncio.create_task(uploader.run(stop))
        for _ in range(200):  # failures in a row, until the next try is a while off
            if uploader.last_error.get(1) and uploader.next_try_in() > 1.0:
                break
            await asyncio.sleep(0.05)
        assert uploader.last_error.get(1) and uploader.next_try_in() > 1.0
        before = tries(caplog)
        uploader.relay_is_back()
        await asyncio.sleep(0.5)
        stop.set()
        await running
    # With auto_fds 1 it tried again at once; with 0 the failed upload waits for the next start.
    assert tries(caplog) == (before + 1 if keep_trying else before)
    assert len(spool.pending()) == 1  # never sent, never dropped
