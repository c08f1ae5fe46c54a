"""Settings: defaults, then a TOML file, then ``RELAY_*`` variables, then command-line flags.

Every setting has the same name everywhere: ``token_ttl`` in the TOML file is ``RELAY_TOKEN_TTL`` in
the environment and ``--token-ttl`` where a subcommand offers the flag. The TOML file is the one named
by ``--config`` / ``RELAY_CONFIG``, else ``relay.toml`` in the data dir when it exists.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A setting has a value we cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    data: Path = Path("data")
    listen: str = "127.0.0.1:8080"
    public_url: str = ""
    storage_addr: str = ""
    database_url: str = ""
    timezone: str = ""
    token_ttl: int = 7200
    command_timeout: float = 10.0
    agent_heartbeat: float = 20.0
    agent_key_recheck: float = 30.0
    agent_admit: int = 500
    live_heartbeat: float = 12.0
    live_viewer_timeout: float = 30.0
    live_close_after: float = 10.0
    live_reconcile: float = 10.0
    live_keyframe_interval: float = 1.0
    webrtc_fallback_after: float = 4.0
    ice_addresses: str = ""
    ice_public_ip: str = ""
    ice_ports: str = ""
    node_url: str = ""
    redis_url: str = ""
    redis_prefix: str = "relay"
    node_lease: float = 6.0
    trusted_proxies: str = ""
    ice_deadline: float = 20.0
    play_ticket_ttl: int = 600
    session_ttl: int = 12 * 3600
    log_level: str = "info"
    metrics_listen: str = ""
    header_timeout: float = 10.0
    upload_max_mb: int = 4096
    record_keep_days: int = 0
    storage_min_free: int | None = None
    storage_quota: int = 0
    retention_interval: float = 60.0
    player_dir: Path = field(default_factory=lambda: Path(__file__).resolve().parent.parent / "player")

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where /metrics is served on its own, or None: on the main listener."""
        if not self.metrics_listen:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def ice_port_range(self) -> range | None:
        """The UDP ports of WebRTC host candidates (``ice_ports``), or None: any port."""
        if not self.ice_ports:
            return None
        first, _, last = self.ice_ports.partition("-")
        return range(int(first), int(last or first) + 1)

    @property
    def base_url(self) -> str:
        """The URL clients reach us at, without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def storage_url(self) -> str:
        return (self.storage_addr or self.base_url).rstrip("/")

    @property
    def own_url(self) -> str:
        """How the other nodes (and agents' media sockets) reach this node: ``node_url``, else the
        listen address when it is one they can dial."""
        if self.node_url:
            return self.node_url.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def files_dir(self) -> Path:
        return self.data / "files"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.data / 'relay.sqlite3').resolve()}"


#: What each setting means, for ``relay serve --help`` (the README's table says the same).
HELP = {
    "data": "data directory: relay.sqlite3 (WAL) and files/",
    "listen": "HOST:PORT to listen on",
    "public_url": "how clients reach us, for play URLs and examples; empty = http://LISTEN",
    "storage_addr": "base of stored-file URLs; empty = the public URL",
    "database_url": "SQLAlchemy URL of the catalogue; empty = SQLite in the data dir",
    "timezone": "zone of the YYYY-MM-DD HH:MM:SS times answered; empty = the server's",
    "token_ttl": "API token lifetime, seconds",
    "command_timeout": "how long transmit waits for an agent, seconds",
    "agent_heartbeat": "ping interval on agent links, seconds; silent links go after 1.5 times it",
    "agent_key_recheck": "seconds between checks that a link's key is valid and owns its gatherer",
    "agent_admit": "agents let in at once at least; more are told to come back (503 Retry-After)",
    "live_heartbeat": "the live page's heartbeat interval, seconds",
    "live_viewer_timeout": "a viewer without a heartbeat this long is gone, seconds",
    "live_close_after": "a push stops this long after its last viewer left, seconds",
    "live_reconcile": "seconds between passes that stop orphan pushes and restart needed ones",
    "live_keyframe_interval": "at most one keyframe request per camera this often, seconds",
    "webrtc_fallback_after": "the page switches to MSE when WebRTC has not played by then, seconds",
    "ice_addresses": "comma list of local addresses for ICE candidates; empty = all but loopback",
    "ice_public_ip": "public address of a 1:1 NAT (or of a container's host), advertised as a "
                     "candidate too; empty = none",
    "node_url": "this node's own http(s):// URL for the agents' live media sockets (live.start "
                "names it; for nodes behind one balanced URL); empty = beside the agent's link URL",
    "redis_url": "Redis URL (redis://HOST:PORT/DB) shared by every node of a cluster; empty = one "
                 "node alone. Needs node_url (or a listen address other nodes can reach)",
    "redis_prefix": "prefix of this cluster's Redis keys (clusters sharing one Redis differ in it)",
    "node_lease": "a node silent this long is dead: its gatherers go offline, seconds",
    "trusted_proxies": "comma list of the balancers' addresses or networks whose X-Forwarded-For "
                       "names the client (sign-in counts, logs); empty = believe no one",
    "ice_ports": "FIRST-LAST: the UDP ports WebRTC host candidates bind (publish them from a "
                 "container, see docs/DOCKER.md); one port per viewer; empty = any port",
    "ice_deadline": "a WebRTC viewer whose ICE has not connected by then is closed, seconds",
    "play_ticket_ttl": "how long a play URL can be opened, seconds",
    "session_ttl": "/admin session lifetime, seconds",
    "log_level": "debug, info, warning or error",
    "metrics_listen": "HOST:PORT that serves /metrics alone; the main listener then answers 404 "
                      "for it; empty = /metrics on the main listener",
    "header_timeout": "seconds a client has to send a whole request head, from connecting or from "
                      "a kept-alive request's first byte; then 408 and closed",
    "player_dir": "folder of the player pages",
    "upload_max_mb": "largest recording an agent may upload, MiB",
    "record_keep_days": "recordings older than this many days are deleted; 0 = kept forever",
    "storage_min_free": "bytes kept free for stored files: below it the oldest recordings are "
                        "deleted; unset = the smaller of 5 percent of the disk (or of "
                        "storage_quota) and 2 GiB; 0 = none",
    "storage_quota": "cap on the bytes under the files directory, counted as a full disk when "
                     "reached; 0 = the whole disk",
    "retention_interval": "seconds between retention passes (age and free space)",
}

#: Whole-number settings where 0 means something (forever, none); the others must be positive.
_ZERO_ALLOWED = frozenset({"record_keep_days", "storage_min_free", "storage_quota"})

_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "Path":
            return Path(value).expanduser()
        if kind == "int" or name in _ZERO_ALLOWED:
            number = int(value)
            if number < 0 or (number == 0 and name not in _ZERO_ALLOWED):
                raise ValueError
            return number
        if kind == "float":
            number = float(value)
            if not number > 0:
                raise ValueError
            return number
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: {value!r} is not a valid {kind}") from exc


def _check_address(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or \
            not 0 < int(port) < 65536:
        raise ConfigError(f"setting {name!r}: {value!r} is not HOST:PORT")


def _check_ports(value: str) -> None:
    first, sep, last = value.partition("-")
    numbers = [first, last] if sep else [first]
    if not all(n.strip().isascii() and n.strip().isdigit() for n in numbers) or \
            not 0 < int(first) <= int(numbers[-1]) < 65536:
        raise ConfigError(f"setting 'ice_ports': {value!r} is not FIRST-LAST (UDP ports, e.g. "
                          "40000-40099)")


def _validate(settings: Settings) -> Settings:
    _check_address("listen", settings.listen)
    if settings.ice_ports:
        _check_ports(settings.ice_ports)
    if settings.metrics_listen:
        _check_address("metrics_listen", settings.metrics_listen)
        if settings.metrics_address == (settings.host, settings.port):
            raise ConfigError("setting 'metrics_listen': must differ from 'listen' (leave it empty "
                              "to serve /metrics on the main listener)")
    for name in ("public_url", "storage_addr", "node_url"):
        url = getattr(settings, name)
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"setting {name!r}: {url!r} must start with http:// or https://")
    if settings.redis_url:
        if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("setting 'redis_url': must start with redis://, rediss:// or "
                              "unix:// (the value is not shown: it may hold a password)")
        if not settings.node_url and settings.host in ("", "0.0.0.0", "::"):
            raise ConfigError("setting 'node_url': a cluster node listening on all addresses "
                              "needs its own URL that the other nodes can reach")
        if not settings.redis_prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"setting 'redis_prefix': {settings.redis_prefix!r} is not letters, "
                              "digits, - and _")
    if settings.trusted_proxies:
        from .forwarded import parse_networks

        try:
            parse_networks(settings.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"setting 'trusted_proxies': {exc}") from exc
    if settings.timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(settings.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"setting 'timezone': unknown zone {settings.timezone!r}") from exc
    return settings


def load_settings(
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, ``RELAY_*`` variables and ``overrides`` (flags), in that order."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_env = {
        name: environ[f"RELAY_{name.upper()}"]
        for name in _FIELDS
        if f"RELAY_{name.upper()}" in environ
    }
    data_dir = Path(overrides.get("data") or from_env.get("data") or Settings.data)
    config_path = config_file or environ.get("RELAY_CONFIG")
    from_file: dict[str, Any] = {}
    if config_path or (data_dir / "relay.toml").is_file():
        path = Path(config_path or data_dir / "relay.toml")
        try:
            from_file = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        unknown = sorted(set(from_file) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    merged: dict[str, Any] = {}
    for source in (from_file, from_env, overrides):
        for name, value in source.items():
            merged[name] = _coerce(name, value)
    return _validate(Settings(**merged))
