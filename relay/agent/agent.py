"""The agent's life: dial the relay, adopt the desired state, apply commands, keep sources open.

It reconnects with jittered exponential backoff (capped at 30 s) for as long as it runs, including
after its key is refused (an operator may fix the key on the relay side). Between connections it
keeps running the cameras of the state it last received, which it keeps on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .. import __version__
from ..link import protocol
from .config import AgentConfig
from .sources import CameraSource, SourceError, source_url
from .state import DesiredState

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class LinkRefused(Exception):
    """The relay ended the link or refused it; the message says why."""


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
        self.url = agent_url(server)
        self._key = key
        self.config = config
        self.state = DesiredState(data / "state.json")
        self.sources: dict[int, CameraSource] = {}
        self.statuses: dict[int, tuple[int, str]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # Running

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.reconcile()
        failures = 0
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                session = asyncio.create_task(self._session(http))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not session.done():
                    session.cancel()
                try:
                    welcomed = await session
                except asyncio.CancelledError:
                    break
                except (aiohttp.ClientError, OSError, TimeoutError, LinkRefused, ValueError) as exc:
                    log.warning("link to %s: %s", self.url, exc or exc.__class__.__name__)
                    welcomed = False
                failures = 0 if welcomed else failures + 1
                delay = min(MAX_BACKOFF, 0.5 * 2 ** failures) * random.uniform(0.5, 1.0)
                log.info("reconnecting in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
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
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    await self._on_message(ws, message.json())
                log.warning("the relay closed the link: %s",
                            ws.exception() or f"code {ws.close_code}")
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise LinkRefused("the relay refused our key (unknown or revoked)") from exc
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
        try:
            reply = self.apply(str(message.get("action")), message.get("data") or {})
        except (KeyError, TypeError, ValueError) as exc:
            reply = protocol.answer(protocol.BAD_COMMAND, f"malformed command: {exc}")
        await ws.send_json({"type": "reply", "id": message.get("id"), **reply})

    def apply(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Apply one command to the desired state (saved at once) and the running sources."""
        state = self.state
        if action == protocol.GATHER_MOD:
            state.gather = {key: data[key] for key in protocol.GATHER_FIELDS}
            state.save()
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
            return protocol.answer(data={"camera_id": camera_id, "courses": len(data["courses"])})
        else:
            return protocol.answer(protocol.BAD_COMMAND, f"unknown action {action[:32]!r}")
        state.save()
        self.reconcile()
        return protocol.answer(data={"camera_id": camera_id,
                                     "started": state.cameras[camera_id]["started"]})

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
                                  self._auto_reconnect)
            self.sources[camera_id] = source
            source.start()

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
        if self.statuses.get(camera_id) == (status, err_msg):
            return
        self.statuses[camera_id] = (status, err_msg)
        if self._ws is not None and self._loop is not None:
            self._loop.create_task(self._send_status(camera_id, status, err_msg))

    async def _send_status(self, camera_id: int, status: int, err_msg: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        # On failure, the next login sends every status again.
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_json({"type": "status", "camera_id": camera_id, "status": status,
                                "err_msg": err_msg})

    def _stop_sources(self) -> None:
        for source in self.sources.values():
            source.stop()
        for source in self.sources.values():
            source.join(timeout=2)
        self.sources.clear()
