"""The catalogue's tables (SQLAlchemy Core, portable between SQLite and PostgreSQL).

Times are stored as integer Unix seconds and formatted in the configured zone on the way out.
``SCHEMA_VERSION`` is written to ``meta``; ``migrations.py`` brings an older catalogue up to it.

Ids are never reused (SQLite ``AUTOINCREMENT``, PostgreSQL identity columns): a deleted camera's id
never names a new camera, so nothing that still carries the old id (a play ticket, a bookmark, an
agent's state file) can open the new one.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 4

metadata = MetaData()


def _id(name: str) -> Column:
    """A primary key that never hands out an id twice."""
    return Column(name, Integer, Identity(), primary_key=True)


#: What every table with an id takes, so SQLite's rowid keeps counting past deleted rows.
_NEVER_REUSE = {"sqlite_autoincrement": True}


def _timestamps() -> list[Column]:
    return [
        Column("created", BigInteger, nullable=False),
        Column("updated", BigInteger, nullable=False),
    ]


meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    _id("account_id"),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("is_admin", Integer, nullable=False, default=0),
    Column("credential", String(64), nullable=False, unique=True),
    *_timestamps(),
    **_NEVER_REUSE,
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column(
        "account_id",
        Integer,
        ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("expires", BigInteger, nullable=False),
    Column("created", BigInteger, nullable=False),
)

agent_keys = Table(
    "agent_keys",
    metadata,
    _id("key_id"),
    Column("name", String(64), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("revoked", BigInteger, nullable=False, default=0),
    Column("created", BigInteger, nullable=False),
    # How many gatherers this key may register (each agent machine is one gatherer).
    Column("max_gatherers", Integer, nullable=False, default=1, server_default="1"),
    # An operator's re-bind (``relay agent-key rebind``): the next hello with this key from a MAC no
    # gatherer has takes this gatherer over (replaced hardware keeps its cameras and history).
    Column("takeover_gather_id", Integer, nullable=True),
    **_NEVER_REUSE,
)

gatherers = Table(
    "gatherers",
    metadata,
    _id("gather_id"),
    Column("mac_addr", String(64), nullable=False, unique=True),
    # The agent key this gatherer belongs to: only a hello with this key is welcomed as it.
    Column("key_id", Integer, ForeignKey("agent_keys.key_id"), nullable=True, index=True),
    Column("ip_addr", String(64), nullable=False, default=""),
    Column("name_pc", String(128), nullable=False, default=""),
    Column("name_set", String(128), nullable=False, default=""),
    Column("os_name", String(128), nullable=False, default=""),
    Column("main_rate", Integer, nullable=False, default=1024),
    Column("sub_rate", Integer, nullable=False, default=512),
    Column("auto_dvr", Integer, nullable=False, default=0),
    Column("auto_fds", Integer, nullable=False, default=1),
    Column("slice_val", Integer, nullable=False, default=0),
    Column("inter_val", Integer, nullable=False, default=0),
    Column("snap_val", Integer, nullable=False, default=2),
    Column("status", Integer, nullable=False, default=0),
    # The epoch of the link that last made it online (``relay.hub``: newer links, larger epochs,
    # whichever node holds them): a link going offline writes status 0 only while no newer link
    # has registered since, so a node that lost its agent never shows a relinked gatherer offline.
    Column("link_epoch", BigInteger, nullable=False, default=0, server_default="0"),
    *_timestamps(),
    **_NEVER_REUSE,
)

cameras = Table(
    "cameras",
    metadata,
    _id("camera_id"),
    Column(
        "gather_id",
        Integer,
        ForeignKey("gatherers.gather_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("camera_name", String(128), nullable=False),
    Column("image_id", Integer, nullable=False, default=0),
    Column("stream_prop", Integer, nullable=False),
    Column("stream_url", String(1024), nullable=False, default=""),
    Column("stream_mp4", String(1024), nullable=False, default=""),
    Column("device_ip", String(255), nullable=False, default=""),
    Column("device_user", String(128), nullable=False, default=""),
    Column("device_pass", String(255), nullable=False, default=""),
    Column("device_cmd_port", Integer, nullable=False, default=8000),
    Column("device_mirror", Integer, nullable=False, default=0),
    Column("device_osd", Integer, nullable=False, default=0),
    Column("device_twice", Integer, nullable=False, default=0),
    Column("device_show", Integer, nullable=False, default=1),
    Column("started", Integer, nullable=False, default=1),
    Column("status", Integer, nullable=False, default=0),
    Column("clicks", BigInteger, nullable=False, default=0),
    *_timestamps(),
    **_NEVER_REUSE,
)

snapshots = Table(
    "snapshots",
    metadata,
    _id("image_id"),
    Column(
        "camera_id",
        Integer,
        ForeignKey("cameras.camera_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("image_fdfs", String(1024), nullable=False),
    Column("created", BigInteger, nullable=False),
    **_NEVER_REUSE,
)

records = Table(
    "records",
    metadata,
    _id("record_id"),
    Column("gather_id", Integer, nullable=False),
    Column(
        "camera_id",
        Integer,
        ForeignKey("cameras.camera_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("file_fdfs", String(1024), nullable=False),
    Column("image_fdfs", String(1024), nullable=False, default=""),
    Column("file_size", BigInteger, nullable=False, default=0),
    Column("duration", Integer, nullable=False, default=0),
    Column("clicks", BigInteger, nullable=False, default=0),
    *_timestamps(),
    # Wall-clock unix seconds of the recording's first and last packet (``created`` = start).
    # Server defaults: schema 2's rebuild copies old rows into this definition.
    Column("start_time", BigInteger, nullable=False, default=0, server_default="0"),
    Column("end_time", BigInteger, nullable=False, default=0, server_default="0"),
    **_NEVER_REUSE,
)

#: Agents' uploads (docs/RECORDING.md, "The upload protocol"): what each declared, where its file is
#: to be stored (named when it is declared), and, once committed, the row it became. The agent's
#: ``upload_id`` is its idempotency key, scoped to its agent key. No id of its own: the pair is the
#: key, and an upload outlives its camera (a commit for a deleted camera is refused, not lost).
uploads = Table(
    "uploads",
    metadata,
    Column("key_id", Integer, ForeignKey("agent_keys.key_id"), primary_key=True),
    Column("upload_id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("camera_id", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("start_time", BigInteger, nullable=False),
    Column("end_time", BigInteger, nullable=False),
    Column("duration", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("file_fdfs", String(1024), nullable=False),
    Column("image_fdfs", String(1024), nullable=False, default=""),
    Column("state", String(16), nullable=False, default="open"),
    Column("record_id", Integer, nullable=True),
    Column("image_id", Integer, nullable=True),
    Column("created", BigInteger, nullable=False),
)

courses = Table(
    "courses",
    metadata,
    _id("course_id"),
    Column(
        "camera_id",
        Integer,
        ForeignKey("cameras.camera_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("repeat_id", Integer, nullable=False, default=2),
    Column("week_id", Integer, nullable=False),
    Column("start_sec", Integer, nullable=False),
    Column("elapse_sec", Integer, nullable=False),
    *_timestamps(),
    **_NEVER_REUSE,
)

Index("courses_by_camera_day", courses.c.camera_id, courses.c.week_id)
