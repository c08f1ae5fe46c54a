"""The agent's life: dial the relay, adopt the desired state, apply commands, keep sources open.

It reconnects with jittered exponential backoff (capped at 30 s) for as long as it runs, including
after its key is refused (an operator may fix the key on the relay side). Between connections it
keeps running the cameras of the state it last received, which it keeps on disk.

``--server`` may name several relay nodes (comma-separated), or one load-balanced URL. The agent
starts at a random one of them (agents spread over the nodes without a balancer) and, when a
connection fails, tries the next one: a node that dies costs its agents one refused connection and
a backoff of about a second before they are linked to another.

Live pushes (``live.start``/``live.stop``/``live.keyframe``) run beside the link, one media WebSocket
per pushed camera (see :mod:`.push`); a push ends when its camera is stopped, deleted or changed,
when its source fails, when the relay closes its socket, or when the agent stops.

Recordings follow the timetable whether or not the link is up (:mod:`.recording`); finished
slices and snapshots wait in the spool (:mod:`.spool`, finished at start after a crash) until the
uploader (:mod:`.uploader`) has the relay's confirmation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from .. import __version__
from ..link import protocol
from ..media.pipelines import DEFAULT_KBPS
from .config import AgentConfig
from .push import Push
from .recording import Recordings
from .sources import CameraSource, SourceError, source_url
from .spool import Spool, SpoolEntry
from .state import DesiredState
from .uploader import Uploader

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
#: How long live.start waits for a source that is still opening, and for the media socket; both
#: together stay under the relay's command timeout (10 s).
SOURCE_WAIT = 3.0
MEDIA_CONNECT_TIMEOUT = 6.0
MAX_PUSH_ID = 64


class LinkRefused(Exception):
    """The relay ended the link or refused it; the message says why."""


class ComeBackLater(Exception):
    """The relay is letting in as many agents as it can serve (a restart, say): try again after
    ``delay`` seconds, which it chose to spread the agents out."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"the relay is busy; coming back in {delay:.0f} s")
        self.delay = delay


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failed links in a row: jittered, doubling, capped."""
    return min(MAX_BACKOFF, 0.5 * 2 ** failures) * random.uniform(0.5, 1.0)


def retry_after(headers: Any) -> float:
    """A 503's ``Retry-After`` in seconds (1 to ``MAX_BACKOFF``; 5 when missing or a date)."""
    try:
        return min(MAX_BACKOFF, max(1.0, float((headers or {}).get("Retry-After", "5"))))
    except ValueError:
        return 5.0


def agent_urls(servers: str) -> list[str]:
    """``--server``'s comma-separated URLs, each as :func:`agent_url` makes it."""
    urls = [agent_url(server.strip()) for server in servers.split(",") if server.strip()]
    if not urls:
        raise ValueError("--server names no URL")
    return list(dict.fromkeys(urls))


def agent_url(server: str) -> str:
    """``http(s)://host[:port]`` (or ``ws(s)://…``) → the relay's ``ws(s)://…/agent``."""
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"--server must be an http(s):// or ws(s):// URL, not {server!r}")
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, parts.netloc, path if path.endswith("/agent") else path + "/agent",
                       "", ""))


def _local_ip(url: str) -> str:
    """The address this machine uses to reach the relay (no packet is sent)."""
    parts = urlsplit(url)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((parts.hostname or "127.0.0.1", parts.port or 80))
            return probe.getsockname()[0]
    except OSError:
        return ""


class Agent:
    def __init__(self, server: str, key: str, data: Path, config: AgentConfig) -> None:
        self.urls = agent_urls(server)
        self._next_url = random.randrange(len(self.urls))
        self.url = self.urls[self._next_url]
        self._key = key
        self.config = config
        self.state = DesiredState(data / "state.json")
        self.sources: dict[int, CameraSource] = {}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.pushes: dict[int, Push] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.spool = Spool(data / "spool", config.spool_max_mb * 1024 * 1024,
                           on_ready=self._spool_ready, on_drop=self._spool_dropped)
        self.uploader: Uploader | None = None
        self.recordings = Recordings(self.state, config, self.spool, lambda: self.sources,
                                     self._upload_error)

    # Running

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        recovered = await asyncio.to_thread(self.spool.recover)
        if recovered:
            log.info("spool: %d recording(s) and snapshot(s) wait for upload", len(recovered))
        self.reconcile()
        failures = 0
        async with aiohttp.ClientSession() as http:
            self._http = http
            self.uploader = Uploader(http, self.url, self._key, self.spool, self._keep_uploading)
            background = [asyncio.create_task(self.uploader.run(stop), name="uploader"),
                          asyncio.create_task(self.recordings.run(stop, self._send_recording),
                                              name="recordings")]
            for task in background:
                task.add_done_callback(_report_crash)
            while not stop.is_set():
                session = asyncio.create_task(self._session(http))
                linked_to = self.url
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not session.done():
                    session.cancel()
                try:
                    welcomed = await session
                except asyncio.CancelledError:
                    break
                except ComeBackLater as busy:  # not a failure: the relay set the time
                    log.info("link to %s: %s", self.url, busy)
                    delay = busy.delay * random.uniform(0.9, 1.1)  # an appointment: keep it
                except (aiohttp.ClientError, OSError, TimeoutError, LinkRefused, ValueError) as exc:
                    log.warning("link to %s: %s", self.url, exc or exc.__class__.__name__)
                    failures += 1
                    delay = backoff(failures)
                else:
                    failures = 0 if welcomed else failures + 1
                    delay = backoff(failures)
                if failures and len(self.urls) > 1 and self.url == linked_to:
                    self._next_url = (self._next_url + 1) % len(self.urls)
                    self.url = self.urls[self._next_url]
                    if self.uploader is not None:
                        self.uploader.use(self.url)
                    log.info("trying relay node %s next", self.url)
                log.info("reconnecting in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            stop.set()
            await self._stop_pushes()
            await asyncio.gather(*background, return_exceptions=True)
            self._http = None
        self._stop_sources()

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One connection, until it ends; True when it got as far as the welcome."""
        welcomed = False
        try:
            async with http.ws_connect(
                self.url, headers={"Authorization": f"Bearer {self._key}"},
                heartbeat=protocol.HEARTBEAT, max_msg_size=protocol.MAX_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ) as ws:
                await ws.send_json(self._hello())
                welcome = await asyncio.wait_for(ws.receive(), protocol.HELLO_TIMEOUT * 2)
                if welcome.type != aiohttp.WSMsgType.TEXT:
                    if ws.close_code == protocol.REFUSED_GATHERER:
                        raise LinkRefused(f"the relay refused this gatherer: {welcome.extra or ''}")
                    raise LinkRefused(f"no welcome: {ws.close_code} {welcome.extra or ''}".strip())
                body = welcome.json()
                self.state.adopt(body["gather_id"], body["state"])
                welcomed = True
                self._ws = ws
                log.info("connected to %s as gatherer %d with %d camera(s)", self.url,
                         body["gather_id"], len(self.state.cameras))
                self.reconcile()
                for camera_id, (status, err_msg) in list(self.statuses.items()):
                    await self._send_status(camera_id, status, err_msg)
                self.recordings.linked()
                if self.uploader is not None:
                    self.uploader.relay_is_back()
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    await self._on_message(ws, message.json())
                log.warning("the relay closed the link: %s",
                            ws.exception() or f"code {ws.close_code}")
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise LinkRefused("the relay refused our key (unknown or revoked)") from exc
            if exc.status == 503:
                raise ComeBackLater(retry_after(exc.headers)) from exc
            raise
        finally:
            self._ws = None
            if welcomed:
                log.info("disconnected from %s", self.url)
        return welcomed

    def _hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "protocol": protocol.PROTOCOL,
            "version": __version__,
            "mac_addr": self.config.mac_addr,
            "ip_addr": _local_ip(self.url),
            "name_pc": self.config.name_pc,
            "os_name": self.config.os_name,
            "devices": [device.hello() for device in self.config.devices],
        }

    # Commands

    async def _on_message(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        if message.get("type") != "command":
            log.warning("ignoring a %r message from the relay", message.get("type"))
            return
        # Awaited before the next message is read: commands are applied in order.
        reply = await self.command(str(message.get("action")), message.get("data") or {})
        await ws.send_json({"type": "reply", "id": message.get("id"), **reply})

    async def command(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Apply one command and return its reply; ``live.start`` waits for its media socket."""
        try:
            if action == protocol.LIVE_START:
                return await self._live_start(data)
            return self.apply(action, data)
        except (KeyError, TypeError, ValueError) as exc:
            return protocol.answer(protocol.BAD_COMMAND, f"malformed command: {exc}")

    def apply(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Apply one command to the desired state (saved at once) and the running sources
        (``live.start`` needs the event loop: it goes through :meth:`command`)."""
        state = self.state
        if action == protocol.GATHER_MOD:
            state.gather = {key: data[key] for key in protocol.GATHER_FIELDS}
            state.save()
            self.recordings.changed()
            return protocol.answer(data=state.gather)
        if action == protocol.CAMERA_DEL:
            deleted = [camera_id for camera_id in data["camera_ids"]
                       if state.cameras.pop(camera_id, None) is not None]
            for camera_id in data["camera_ids"]:
                state.courses.pop(camera_id, None)
            state.save()
            self.reconcile()
            return protocol.answer(data={"deleted": deleted})
        camera_id = data["camera_id"]
        if action != protocol.CAMERA_ADD and camera_id not in state.cameras:
            return protocol.answer(protocol.UNKNOWN_CAMERA, f"no camera {camera_id} on this gatherer")
        if action in (protocol.CAMERA_ADD, protocol.CAMERA_MOD):
            state.cameras[camera_id] = {key: data[key] for key in protocol.CAMERA_FIELDS}
        elif action in (protocol.CAMERA_START, protocol.CAMERA_STOP):
            state.cameras[camera_id]["started"] = int(action == protocol.CAMERA_START)
        elif action == protocol.COURSES_SET:
            state.courses[camera_id] = list(data["courses"])
            state.save()
            self.recordings.changed()  # a window changed during itself takes effect at once
            return protocol.answer(data={"camera_id": camera_id, "courses": len(data["courses"])})
        elif action == protocol.LIVE_STOP:
            return self._live_stop(camera_id, push_id_of(data))
        elif action == protocol.LIVE_KEYFRAME:
            return self._live_keyframe(camera_id)
        elif action == protocol.LIVE_START:
            return protocol.answer(protocol.BAD_COMMAND, "live.start goes through Agent.command")
        else:
            return protocol.answer(protocol.BAD_COMMAND, f"unknown action {action[:32]!r}")
        state.save()
        self.reconcile()
        return protocol.answer(data={"camera_id": camera_id,
                                     "started": state.cameras[camera_id]["started"]})

    # Live pushes

    async def _live_start(self, data: dict[str, Any]) -> dict[str, Any]:
        camera_id, push_id = data["camera_id"], push_id_of(data)
        camera = self.state.cameras.get(camera_id)
        if camera is None:
            return protocol.answer(protocol.UNKNOWN_CAMERA, f"no camera {camera_id} on this gatherer")
        running = self.pushes.get(camera_id)
        if running is not None and running.push_id == push_id and not running.ended:
            return protocol.answer(data={"camera_id": camera_id, "push_id": push_id})
        source = self.sources.get(camera_id)
        if not camera["started"]:
            return protocol.answer(protocol.SOURCE_DOWN, f"camera {camera_id} is stopped")
        deadline = asyncio.get_running_loop().time() + SOURCE_WAIT
        while (source is not None and source.state == "opening"
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.05)
        if source is None or not source.is_open:
            return protocol.answer(protocol.SOURCE_DOWN, self._down_message(camera_id, source))
        if self._http is None:
            return protocol.answer(protocol.BAD_COMMAND, "the agent is not running")
        url = self.media_url(camera_id, push_id, data.get("media_url"))
        try:
            ws = await asyncio.wait_for(self._http.ws_connect(
                url, headers={"Authorization": f"Bearer {self._key}"}, heartbeat=protocol.HEARTBEAT,
                max_msg_size=protocol.MAX_MESSAGE, timeout=aiohttp.ClientWSTimeout(ws_close=2),
            ), MEDIA_CONNECT_TIMEOUT)
        except aiohttp.WSServerHandshakeError as exc:
            log.warning("camera %d: the relay refused the media socket of push %s: HTTP %d %s",
                        camera_id, protocol.push_label(push_id), exc.status, exc.message)
            return protocol.answer(protocol.BAD_COMMAND,
                                   f"the relay refused the media socket: HTTP {exc.status}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("camera %d: media socket of push %s failed: %s", camera_id,
                        protocol.push_label(push_id),
                        exc or exc.__class__.__name__)
            return protocol.answer(protocol.BAD_COMMAND,
                                   f"the media socket failed: {exc or exc.__class__.__name__}")
        if self.sources.get(camera_id) is not source or not source.is_open:  # changed meanwhile
            await ws.close()
            return protocol.answer(protocol.SOURCE_DOWN, self._down_message(camera_id, source))
        push = Push(camera_id, push_id, source, ws, self._push_ended)
        old = self.pushes.get(camera_id)
        self.pushes[camera_id] = push
        push.start()
        if old is not None:
            old.stop(f"replaced by push {protocol.push_label(push_id)}")
        log.info("camera %d: push %s started", camera_id, protocol.push_label(push_id))
        return protocol.answer(data={"camera_id": camera_id, "push_id": push_id})

    def _live_stop(self, camera_id: int, push_id: str) -> dict[str, Any]:
        push = self.pushes.get(camera_id)
        stopped = push is not None and push.push_id == push_id
        if stopped:
            self._end_push(camera_id, "live.stop")
        return protocol.answer(data={"camera_id": camera_id, "push_id": push_id, "stopped": stopped})

    def _live_keyframe(self, camera_id: int) -> dict[str, Any]:
        source = self.sources.get(camera_id)
        forced = camera_id in self.pushes and source is not None and source.request_keyframe()
        return protocol.answer(data={"camera_id": camera_id, "forced": forced})

    def media_url(self, camera_id: int, push_id: str, given: Any = None) -> str:
        """``<media_url>?camera_id=N&push_id=P``: where ``live.start`` said (the node that owns
        the camera's live state), else beside the link's URL (``ws(s)://relay/…/agent/media``).
        A ``media_url`` that is not a plain ws(s) URL is a malformed command (``ValueError``)."""
        base = protocol.checked_media_url(given) if given is not None else f"{self.url}/media"
        return f"{base}?{urlencode({'camera_id': camera_id, 'push_id': push_id})}"

    def _down_message(self, camera_id: int, source: CameraSource | None) -> str:
        if source is None:
            err_msg = self.statuses.get(camera_id, (0, ""))[1]
            return f"camera {camera_id}'s source is down: {err_msg or 'not running'}"
        if source.state == "opening":
            return f"camera {camera_id}'s source is not open yet"
        return f"camera {camera_id}'s source is down: {source.error or source.state}"

    def _end_push(self, camera_id: int, reason: str) -> None:
        push = self.pushes.pop(camera_id, None)
        if push is not None:
            push.stop(reason)

    def _push_ended(self, push: Push) -> None:
        if self.pushes.get(push.camera_id) is push:
            del self.pushes[push.camera_id]

    async def _stop_pushes(self) -> None:
        pushes = list(self.pushes.values())
        for push in pushes:
            self._end_push(push.camera_id, "the agent is stopping")
        for push in pushes:
            await push.wait()

    def _sub_rate(self) -> int:
        try:
            return int(self.state.gather.get("sub_rate") or DEFAULT_KBPS)
        except (TypeError, ValueError):
            return DEFAULT_KBPS

    # Sources

    def reconcile(self) -> None:
        """Make the running sources match the desired state: one per started camera."""
        for camera_id in list(self.sources):
            camera = self.state.cameras.get(camera_id)
            if camera is None or not camera["started"] or self._url(camera) != self.sources[camera_id].url:
                self.sources.pop(camera_id).stop()
                if camera is None:
                    self.statuses.pop(camera_id, None)
        for camera_id, camera in self.state.cameras.items():
            if camera_id in self.sources:
                continue
            if not camera["started"]:
                self._report(None, camera_id, 0, "stopped")
                continue
            try:
                url = source_url(camera, self.config)
            except SourceError as exc:
                self._report(None, camera_id, 0, str(exc))
                continue
            source = CameraSource(camera_id, url, camera["stream_prop"] == 1, self._threadsafe_report,
                                  self._auto_reconnect, self._sub_rate)
            self.sources[camera_id] = source
            source.start()
        for camera_id, push in list(self.pushes.items()):
            if self.sources.get(camera_id) is not push.source:
                camera = self.state.cameras.get(camera_id)
                self._end_push(camera_id, "camera deleted" if camera is None else
                               "camera stopped" if not camera["started"] else "camera source changed")
        self.recordings.changed()

    def _url(self, camera: dict[str, Any]) -> str | None:
        try:
            return source_url(camera, self.config)
        except SourceError:
            return None

    def _auto_reconnect(self) -> bool:
        return bool(self.state.gather.get("auto_dvr"))

    def _threadsafe_report(self, source: CameraSource, status: int, err_msg: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._report, source, source.camera_id, status, err_msg)

    def _report(self, source: CameraSource | None, camera_id: int, status: int, err_msg: str) -> None:
        if source is not None and self.sources.get(camera_id) is not source:
            return  # a report from a source that has since been replaced
        if status == 0 and camera_id in self.pushes:
            self._end_push(camera_id, f"source failed: {err_msg}")
        if self.statuses.get(camera_id) == (status, err_msg):
            return
        self.statuses[camera_id] = (status, err_msg)
        if self._ws is not None and self._loop is not None:
            self._loop.create_task(self._send_status(camera_id, status, err_msg))

    async def _send_status(self, camera_id: int, status: int, err_msg: str) -> None:
        await self._send({"type": "status", "camera_id": camera_id, "status": status,
                          "err_msg": err_msg})

    async def _send(self, message: dict[str, Any]) -> None:
        """One unasked message to the relay, if linked (on failure, the next login sends every
        status and recording report again)."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_json(message)

    # Recordings and uploads

    def _keep_uploading(self) -> bool:
        """The gatherer's auto_fds: 1 retries a failed upload forever, 0 at the next start."""
        return bool(self.state.gather.get("auto_fds", 1))

    def _upload_error(self, camera_id: int) -> str:
        return self.uploader.last_error.get(camera_id, "") if self.uploader is not None else ""

    def _spool_ready(self, entry: SpoolEntry) -> None:
        """A slice or snapshot is ready to upload (called from a spool thread)."""
        if self.uploader is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the agent is gone
                self.uploader.wake()

    def _spool_dropped(self, entry: SpoolEntry, reason: str) -> None:
        log.warning("camera %d: dropped a %s of %.0f s from the spool without uploading it: %s",
                    entry.camera_id, entry.kind, entry.duration, reason)

    def _send_recording(self, report: dict[str, Any]) -> None:
        if self._ws is not None and self._loop is not None:
            self._loop.create_task(self._send(report))

    def _stop_sources(self) -> None:
        self.recordings.close("the agent is stopping")
        for camera_id in list(self.pushes):
            self._end_push(camera_id, "the agent is stopping")
        for source in self.sources.values():
            source.stop()
        for source in self.sources.values():
            source.join(timeout=2)
        self.sources.clear()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A background task that ends with an exception is a bug: say so at once, whole."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the agent's %s stopped", task.get_name(), exc_info=task.exception())


def push_id_of(data: dict[str, Any]) -> str:
    push_id = data["push_id"]
    if isinstance(push_id, bool) or not isinstance(push_id, str | int):
        raise ValueError("push_id must be a string")
    push_id = str(push_id)
    if not 0 < len(push_id) <= MAX_PUSH_ID:
        raise ValueError(f"push_id must have 1 to {MAX_PUSH_ID} characters")
    return push_id
