"""The on-demand controller: the one owner of every camera's live state.

Viewers come and go (a heartbeat every 12 s keeps one alive; goodbye, a closed WebRTC connection or
``viewer_timeout`` seconds of silence end it). The first viewer of a camera makes the controller ask
the agent to push, under a fresh push id; the last one leaving starts a ``close_after`` countdown
that ends the push unless a viewer returns. A push is only ever stopped by its own id, so a late
stop cannot kill a newer start, and the relay closes the push's media socket itself as well, so a
lost stop command cannot leave a push running. A reconcile pass (every ``reconcile`` seconds) stops
any push nobody watches and restarts any push a viewer still needs (after an agent or relay
restart, say).

Log lines name viewers and pushes by sequence numbers ("viewer #12", "camera 3: push #4"), never
by their ids: a session id lets its holder watch and a push id lets an agent publish, so neither
may reach a log. The line that starts a push also gives its ``protocol.push_label``, the digest
the agent's and the media socket's lines name it by. Every task the controller starts is one it
keeps, and awaits when it closes; a task that fails is logged with its traceback when it ends, not
when the garbage collector finds it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import tasks
from ..catalogue import Catalogue, NotFound
from ..hub import Hub
from ..link import protocol
from ..metrics import Metrics
from . import census, heap
from .feed import LiveFeed
from .mse import MseFeed
from .pull import NodePull

log = logging.getLogger(__name__)


class LiveRefused(Exception):
    """Why a viewer cannot watch, in words fit for the player page; ``status`` is the HTTP answer
    (409 for a camera that is offline now and may come back, 404 for one that is gone)."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class LiveTimings:
    close_after: float = 10.0
    viewer_timeout: float = 30.0
    reconcile: float = 10.0
    keyframe_interval: float = 1.0
    heartbeat: float = 12.0
    ice_deadline: float = 20.0


@dataclass(eq=False)
class Viewer:
    viewer_id: str
    camera_id: int
    number: int  # what log lines call it ("viewer #12"): the id grants watching, this does not
    transport: str = ""
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class CameraLive:
    camera_id: int
    gather_id: int
    feed: LiveFeed
    viewers: dict[str, Viewer] = field(default_factory=dict)
    push_id: str | None = None
    push_number: int = 0  # the camera's pushes so far; log lines name a push by this, not its id
    requested_at: float = 0.0
    error: str = ""
    close_ingest: Callable[[], Awaitable[None]] | None = None
    stop_timer: asyncio.TimerHandle | None = None
    retry_timer: asyncio.TimerHandle | None = None
    last_keyframe_request: float = 0.0
    first_packet_seen: bool = False
    mse: MseFeed | None = None
    #: Its media from the node that holds the gatherer (a cluster), instead of a push here.
    pull: NodePull | None = None


class LiveController:
    def __init__(self, catalogue: Catalogue, hub: Hub, metrics: Metrics, timings: LiveTimings,
                 media_url: str = "") -> None:
        self._catalogue = catalogue
        #: Where agents push to this node (``live.start`` says so); empty: beside their link.
        self._media_url = media_url
        self._hub = hub
        self._metrics = metrics
        self.timings = timings
        self._cameras: dict[int, CameraLive] = {}
        self._viewers: dict[str, Viewer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._viewer_numbers = itertools.count(1)
        self._viewers_left = False  # since the last reconcile pass: its memory can go back

    # Lifecycle

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._reconcile_forever(), name="live reconcile")

    async def close(self) -> None:
        await tasks.stop(self._loop_task)
        for viewer_id in list(self._viewers):
            await self.close_viewer(viewer_id, "relay shutting down")
        for camera in list(self._cameras.values()):
            if camera.retry_timer is not None:
                camera.retry_timer.cancel()
            await self._stop_pull(camera)
            await self._stop_push(camera, "relay shutting down", wait=True)
        for task in list(self._tasks):  # one-offs: each ends, by its own timeouts, once cancelled
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        """Run ``coroutine`` as a task the controller keeps (and awaits in ``close``)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("live task %s failed", task.get_coro().__qualname__,  # type: ignore[union-attr]
                      exc_info=task.exception())

    def _update_gauges(self) -> None:
        self._metrics.live_pushes.set(sum(1 for c in self._cameras.values() if c.push_id))
        self._metrics.live_viewers.set(len(self._viewers))

    # Viewers

    async def open_viewer(self, camera_id: int, here_only: bool = False) -> Viewer:
        """A new viewer of the camera. Its media comes from a push to this node when the gatherer
        is linked here, else (a cluster) from the node that holds it, unless ``here_only`` (the
        viewer is another node's media link, which must never be passed on again)."""
        try:
            row = await self._catalogue.cameras.get(camera_id)
        except NotFound as exc:
            raise LiveRefused("no such camera", 404) from exc
        if not self._hub.linked_here(row["gather_id"]) and (
                here_only or await self._hub.holder_url(row["gather_id"]) is None):
            raise LiveRefused("采集端离线 · the gatherer is offline")
        if row["status"] != 1:
            raise LiveRefused("通道离线 · the camera is offline")
        camera = self._cameras.get(camera_id)
        if camera is None:
            feed = LiveFeed(lambda: self._request_keyframe(camera_id))
            camera = self._cameras[camera_id] = CameraLive(camera_id, row["gather_id"], feed)
        camera.gather_id = row["gather_id"]
        viewer = Viewer(secrets.token_urlsafe(18), camera_id, next(self._viewer_numbers))
        census.track("viewer", viewer)
        camera.viewers[viewer.viewer_id] = viewer
        self._viewers[viewer.viewer_id] = viewer
        self._arm_expiry(viewer)
        if camera.stop_timer is not None:
            camera.stop_timer.cancel()
            camera.stop_timer = None
        log.info("camera %d: viewer #%d joined (%d watching)", camera_id, viewer.number,
                 len(camera.viewers))
        self._ensure_push(camera)
        self._update_gauges()
        return viewer

    def viewer(self, viewer_id: str) -> Viewer | None:
        return self._viewers.get(viewer_id)

    def is_open(self, viewer: Viewer) -> bool:
        """``viewer`` has not ended (a transport being set up may outlive its session)."""
        return self._viewers.get(viewer.viewer_id) is viewer

    def heartbeat(self, viewer_id: str) -> Viewer | None:
        viewer = self._viewers.get(viewer_id)
        if viewer is not None:
            self._arm_expiry(viewer)
        return viewer

    def _arm_expiry(self, viewer: Viewer) -> None:
        if viewer.expiry is not None:
            viewer.expiry.cancel()
        viewer.expiry = asyncio.get_running_loop().call_later(
            self.timings.viewer_timeout,
            lambda: self.spawn(self.close_viewer(viewer.viewer_id, "no heartbeat")),
        )

    async def close_viewer(self, viewer_id: str, reason: str) -> None:
        viewer = self._viewers.pop(viewer_id, None)
        if viewer is None:
            return
        self._viewers_left = True
        if viewer.expiry is not None:
            viewer.expiry.cancel()
        camera = self._cameras.get(viewer.camera_id)
        if camera is not None:
            camera.viewers.pop(viewer_id, None)
            log.info("camera %d: viewer #%d left (%s; %d watching)", viewer.camera_id,
                     viewer.number, reason, len(camera.viewers))
            if not camera.viewers and camera.pull is not None:
                # The holder's close-after applies (this node's link was one of its viewers).
                self.spawn(self._stop_pull(camera))
            elif not camera.viewers and camera.push_id and camera.stop_timer is None:
                camera.stop_timer = asyncio.get_running_loop().call_later(
                    self.timings.close_after, self._close_after_elapsed, camera)
        # Dropping the closers also ends the cycle viewer -> closer -> transport -> viewer, so the
        # viewer and its transport are freed now rather than by a full garbage collection.
        closers, viewer.closers = viewer.closers, []
        for closer in closers:
            try:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a transport that fails to close must not keep the viewer
                log.exception("viewer #%d: closing its transport failed", viewer.number)
        self._update_gauges()

    def _close_after_elapsed(self, camera: CameraLive) -> None:
        camera.stop_timer = None
        if not camera.viewers:
            self.spawn(self._stop_push(camera, f"nobody watched for {self.timings.close_after:g} s"))

    def feed(self, camera_id: int) -> LiveFeed:
        return self._cameras[camera_id].feed

    def mse_feed(self, camera_id: int) -> MseFeed:
        """The camera's shared fMP4 muxer, started for its first MSE viewer."""
        camera = self._cameras[camera_id]
        if camera.mse is None:
            camera.mse = MseFeed(camera.feed)
        return camera.mse

    async def release_mse(self, camera_id: int) -> None:
        camera = self._cameras.get(camera_id)
        if camera is not None and camera.mse is not None and camera.mse.idle:
            mse, camera.mse = camera.mse, None
            await mse.close()

    def state_of(self, camera_id: int) -> dict[str, Any]:
        camera = self._cameras.get(camera_id)
        if camera is None:
            return {"pushing": False, "viewers": 0, "error": ""}
        return {"pushing": camera.feed.first_packet.is_set(), "viewers": len(camera.viewers),
                "error": camera.error or (camera.pull.error if camera.pull else "")}

    # Pushes

    def _ensure_push(self, camera: CameraLive) -> None:
        if camera.retry_timer is not None:  # this is that retry, or something came first
            camera.retry_timer.cancel()
            camera.retry_timer = None
        if not camera.viewers:
            return
        if not self._hub.linked_here(camera.gather_id):
            if self._drop_node_links(camera):
                self._ensure_pull(camera)
            return
        if camera.pull is not None:  # the gatherer has moved here: a push replaces the pull
            self.spawn(self._stop_pull(camera))
        if camera.push_id is None:
            camera.push_id = secrets.token_urlsafe(12)
            camera.push_number += 1
            camera.requested_at = time.monotonic()
            camera.first_packet_seen = False
            camera.error = ""
            self.spawn(self._start_push(camera, camera.push_id, camera.push_number))
            self._update_gauges()

    async def _start_push(self, camera: CameraLive, push_id: str, number: int) -> None:
        log.info("camera %d: asking gatherer %d to push (push #%d, %s)", camera.camera_id,
                 camera.gather_id, number, protocol.push_label(push_id))
        start: dict[str, Any] = {"camera_id": camera.camera_id, "push_id": push_id}
        if self._media_url:
            start["media_url"] = self._media_url
        transmit = await self._hub.send(camera.gather_id, protocol.LIVE_START, start)
        if transmit.get("err_code") and camera.push_id == push_id:
            camera.error = str(transmit.get("err_msg", ""))
            log.warning("camera %d: push #%d refused: %s", camera.camera_id, number, camera.error)
            camera.push_id = None
            self._update_gauges()

    def _drop_node_links(self, camera: CameraLive) -> bool:
        """The gatherer has left this node: other nodes' media links here end (they find the new
        holder themselves; media is never passed on twice). True when local viewers remain."""
        links = [viewer for viewer in camera.viewers.values() if viewer.transport == "node"]
        for viewer in links:
            self.spawn(self.close_viewer(viewer.viewer_id, "the gatherer moved to another node"))
        return len(links) < len(camera.viewers)

    def _ensure_pull(self, camera: CameraLive) -> None:
        if camera.pull is not None:
            return
        if camera.push_id is not None:  # the gatherer moved away: its push here is over
            self.spawn(self._stop_push(camera, "the gatherer is linked to another node now"))
        gather_id = camera.gather_id
        camera.requested_at = time.monotonic()
        camera.first_packet_seen = False
        camera.pull = NodePull(camera.camera_id, camera.feed,
                               lambda: self._hub.holder_url(gather_id), self._hub.node_headers(),
                               lambda: self._pulled_first_frame(camera))
        camera.pull.start()
        log.info("camera %d: pulling its media from the node that holds gatherer %d",
                 camera.camera_id, gather_id)

    def _pulled_first_frame(self, camera: CameraLive) -> None:
        if not camera.first_packet_seen:
            camera.first_packet_seen = True
            log.info("camera %d: first frame from the holding node after %.3f s",
                     camera.camera_id, time.monotonic() - camera.requested_at)

    async def _stop_pull(self, camera: CameraLive) -> None:
        pull, camera.pull = camera.pull, None
        if pull is not None:
            camera.feed.reset()
            await pull.close()
            log.info("camera %d: media link to the holding node closed", camera.camera_id)

    async def _stop_push(self, camera: CameraLive, reason: str, wait: bool = False) -> None:
        push_id = camera.push_id
        if push_id is None:
            return
        camera.push_id = None
        camera.feed.reset()
        close_ingest, camera.close_ingest = camera.close_ingest, None
        self._update_gauges()
        log.info("camera %d: stopping push #%d (%s)", camera.camera_id, camera.push_number, reason)
        stop = self._hub.send(camera.gather_id, protocol.LIVE_STOP,
                              {"camera_id": camera.camera_id, "push_id": push_id})
        if wait:
            await stop
        else:
            self.spawn(stop)
        if close_ingest is not None:
            await close_ingest()

    def _request_keyframe(self, camera_id: int) -> None:
        """One shared, rate-limited keyframe request per camera (viewers joining, PLI/FIR)."""
        camera = self._cameras.get(camera_id)
        now = time.monotonic()
        if camera is None or now - camera.last_keyframe_request < self.timings.keyframe_interval:
            return
        if camera.pull is not None:
            camera.last_keyframe_request = now
            self._metrics.live_keyframe_requests.inc()
            camera.pull.request_keyframe()
        elif camera.push_id:
            camera.last_keyframe_request = now
            self._metrics.live_keyframe_requests.inc()
            self.spawn(self._hub.send(camera.gather_id, protocol.LIVE_KEYFRAME,
                                       {"camera_id": camera.camera_id}))

    # The agent's media socket

    def accept_push(self, camera_id: int, push_id: str,
                    close: Callable[[], Awaitable[None]]) -> LiveFeed | None:
        """The feed a media socket may publish to, when ``push_id`` is the camera's current push."""
        camera = self._cameras.get(camera_id)
        if camera is None or camera.push_id != push_id:
            return None
        camera.close_ingest = close
        return camera.feed

    def first_packet(self, camera_id: int, push_id: str) -> None:
        camera = self._cameras.get(camera_id)
        if camera is not None and camera.push_id == push_id and not camera.first_packet_seen:
            camera.first_packet_seen = True
            elapsed = time.monotonic() - camera.requested_at
            self._metrics.live_first_packet.observe(elapsed)
            log.info("camera %d: first frame of push #%d after %.3f s", camera_id,
                     camera.push_number, elapsed)

    def push_ended(self, camera_id: int, push_id: str) -> None:
        """The media socket of ``push_id`` closed; if it was current, the push is gone."""
        camera = self._cameras.get(camera_id)
        if camera is None or camera.push_id != push_id:
            return
        log.info("camera %d: push #%d ended on the agent's side", camera_id, camera.push_number)
        camera.push_id = None
        camera.close_ingest = None
        camera.feed.reset()
        self._update_gauges()
        if camera.viewers and camera.retry_timer is None:  # an agent restart, say: try again soon
            camera.retry_timer = asyncio.get_running_loop().call_later(1.0, self._ensure_push,
                                                                        camera)

    # Reconcile

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.timings.reconcile)
            try:
                self.reconcile()
            except Exception:
                log.exception("live reconcile failed")

    def reconcile(self) -> None:
        for camera in list(self._cameras.values()):
            here = self._hub.linked_here(camera.gather_id)
            if camera.viewers:
                if camera.push_id is None and here:
                    log.info("camera %d: %d viewer(s) but no push: restarting it",
                             camera.camera_id, len(camera.viewers))
                    self._ensure_push(camera)
                elif camera.pull is None and not here and self._drop_node_links(camera):
                    self._ensure_pull(camera)
            elif camera.pull is not None:
                self.spawn(self._stop_pull(camera))
            elif camera.push_id is not None and camera.stop_timer is None:
                self.spawn(self._stop_push(camera, "reconcile: nobody watches"))
            elif camera.push_id is None and camera.stop_timer is None and camera.mse is None \
                    and camera.retry_timer is None:
                camera.feed.close()
                del self._cameras[camera.camera_id]
        self._update_gauges()
        if self._viewers_left:
            self._viewers_left = False
            started = time.perf_counter()
            if heap.give_back():
                log.debug("gave freed heap memory back in %.1f ms",
                          (time.perf_counter() - started) * 1000)
