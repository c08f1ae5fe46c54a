"""``relay agent``: run the reference gatherer agent until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from .agent import Agent
from .config import load_agent_config
from .demo_video import make_demo_video

log = logging.getLogger(__name__)


async def run_agent(server: str, key: str, data: Path, config_file: Path | None,
                    demo_video: Path | None) -> None:
    config = load_agent_config(config_file)
    if demo_video is not None:
        await asyncio.to_thread(make_demo_video, demo_video)
    agent = Agent(server, key, data, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("agent %s (%s) starting; relay %s; data in %s", config.name_pc, config.mac_addr,
             agent.url, data.resolve())
    await agent.run(stop)
    log.info("agent stopped")
