"""``relay demo``: the whole system on one machine, for a first look.

Runs ``relay serve`` in this process and a real ``relay agent`` as a child process, with an agent
key kept in ``DATA/demo/agent.key`` and a demo camera (mode 1) playing the MP4 the agent generates
on its first start. Stopping the demo (Ctrl-C) stops the agent too.

So that a newcomer sees recording at work, the demo camera gets a course from a minute ago until
two hours from now (or midnight) on each start, and its gatherer one-minute slices: a recording
appears in ``list_record`` about a minute after the start, ready for ``play_record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from .agent import demo_video
from .catalogue import CourseOverlap, NotFound
from .config import Settings
from .services import SERVICES, Services

log = logging.getLogger(__name__)

DEMO_CAMERA = "演示通道 Demo camera"
DEMO_COURSE_SECONDS = 2 * 3600
DAY = 86_400


#: The demo video's file is named after its picture's version: the agent makes the file only when
#: it does not exist, so a data dir from before the clock overlay gets the new picture under the
#: new name, and :func:`ensure_demo_camera` points its demo camera there (the old file stays).
DEMO_VIDEO = f"demo-v{demo_video.VERSION}.mp4"
#: Names the demo video had before: a demo camera still playing one of them is moved to DEMO_VIDEO.
OLD_DEMO_VIDEOS = ("demo.mp4",)


def demo_paths(settings: Settings) -> tuple[Path, Path, Path]:
    """The demo's key file, the agent's data dir and the demo video."""
    root = settings.data.resolve() / "demo"  # the camera names its file by absolute path
    return root / "agent.key", root / "agent", root / "agent" / DEMO_VIDEO


async def demo_key(services: Services, key_file: Path) -> str:
    """The demo agent's key, made (and kept, readable only by us) on the first run."""
    if key_file.exists():
        return key_file.read_text().strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = await services.catalogue.agent_keys.add(f"demo-{os.urandom(3).hex()}")
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    return key


async def ensure_demo_camera(services: Services, video: Path) -> None:
    """Once the demo agent has registered, give its gatherer the demo camera if it has none."""
    while True:
        gatherers = (await services.catalogue.gatherers.page(1, 100)).rows
        online = [row for row in gatherers if await services.hub.online(row["gather_id"])]
        if online:
            break
        await asyncio.sleep(0.2)
    gather_id = online[0]["gather_id"]
    cameras = await services.catalogue.cameras.of_gatherer(gather_id)
    if cameras:
        await use_current_video(services, gather_id, cameras[0], video)
        await record_now(services, gather_id, cameras[0]["camera_id"])
        return
    try:
        row = await services.catalogue.cameras.add(
            gather_id, {"camera_name": DEMO_CAMERA, "stream_prop": 1, "stream_mp4": str(video)}
        )
    except NotFound:
        return
    transmit = await services.hub.camera_added(row)
    log.info("demo camera %d added to gatherer %d: %s", row["camera_id"], gather_id,
             transmit.get("err_msg"))
    await record_now(services, gather_id, row["camera_id"])


async def use_current_video(services: Services, gather_id: int, camera: dict[str, Any],
                            video: Path) -> None:
    """A demo camera made by an older demo plays an older file: move it to this one's video."""
    if camera["stream_mp4"] not in [str(video.with_name(name)) for name in OLD_DEMO_VIDEOS]:
        return
    row = await services.catalogue.cameras.update(camera["camera_id"],
                                                  {"stream_mp4": str(video)})
    transmit = await services.hub.camera_changed(row)
    log.info("demo camera %d now plays %s: %s", row["camera_id"], video.name,
             transmit.get("err_msg"))


def _local_now(services: Services) -> dt.datetime:
    zone = services.settings.timezone
    return dt.datetime.now(ZoneInfo(zone)) if zone else dt.datetime.now().astimezone()


async def record_now(services: Services, gather_id: int, camera_id: int) -> None:
    """One-minute slices on the gatherer, and a course around now on the camera (unless one of
    its courses already covers now), both sent to the agent."""
    catalogue = services.catalogue
    settings = await catalogue.gatherers.update(gather_id, {"slice_val": 1})
    await services.hub.gatherer_changed(settings)
    now = _local_now(services)
    second = now.hour * 3600 + now.minute * 60 + now.second
    start = max(0, second - 60)
    length = min(DEMO_COURSE_SECONDS, DAY - 1 - start)
    try:
        course = await catalogue.courses.add(camera_id=camera_id, week_id=(now.weekday() + 1) % 7,
                                             start_sec=start, elapse_sec=length)
    except CourseOverlap:
        log.info("demo camera %d already has a course now", camera_id)
        return
    schedule = await catalogue.courses.of_camera(camera_id)
    transmit = await services.hub.schedules_changed([(gather_id, camera_id, schedule)])
    ends = (now + dt.timedelta(seconds=start + length - second)).strftime("%H:%M")
    log.info("demo camera %d records now (course %d, until about %s, one-minute slices): %s",
             camera_id, course["course_id"], ends, transmit.get("err_msg"))


def attach_demo_agent(app: web.Application) -> None:
    """Start the demo agent with the app and stop it (by its PID) with the app."""
    state: dict[str, object] = {}

    async def start(app: web.Application) -> None:
        services = app[SERVICES]
        key_file, agent_data, video = demo_paths(services.settings)
        key = await demo_key(services, key_file)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "agent", "--server", services.settings.base_url,
            "--data", str(agent_data), "--demo-video", str(video),
            env={**os.environ, "RELAY_AGENT_KEY": key},
        )
        state["process"] = process
        state["camera"] = asyncio.create_task(ensure_demo_camera(services, video))
        log.info("demo agent started (pid %d)", process.pid)

    async def stop(app: web.Application) -> None:
        task = state.get("camera")
        if isinstance(task, asyncio.Task):
            task.cancel()
        process = state.get("process")
        if isinstance(process, asyncio.subprocess.Process) and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                with contextlib.suppress(ProcessLookupError):
                    await process.wait()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
