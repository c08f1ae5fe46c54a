"""The catalogue's tables (SQLAlchemy Core, portable between SQLite and PostgreSQL).

Times are stored as integer Unix seconds and formatted in the configured zone on the way out.
``SCHEMA_VERSION`` is written to ``meta``; ``MIGRATIONS`` maps each later version to the statements
that bring the previous version up to it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 1

#: version -> SQL statements applied, in order, to reach that version from the one before.
MIGRATIONS: dict[int, list[str]] = {}

metadata = MetaData()


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
    Column("account_id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("is_admin", Integer, nullable=False, default=0),
    Column("credential", String(64), nullable=False, unique=True),
    *_timestamps(),
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
    Column("key_id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("revoked", BigInteger, nullable=False, default=0),
    Column("created", BigInteger, nullable=False),
)

gatherers = Table(
    "gatherers",
    metadata,
    Column("gather_id", Integer, primary_key=True, autoincrement=True),
    Column("mac_addr", String(64), nullable=False, unique=True),
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
    *_timestamps(),
)

cameras = Table(
    "cameras",
    metadata,
    Column("camera_id", Integer, primary_key=True, autoincrement=True),
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
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("image_id", Integer, primary_key=True, autoincrement=True),
    Column(
        "camera_id",
        Integer,
        ForeignKey("cameras.camera_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("image_fdfs", String(1024), nullable=False),
    Column("created", BigInteger, nullable=False),
)

records = Table(
    "records",
    metadata,
    Column("record_id", Integer, primary_key=True, autoincrement=True),
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
)

courses = Table(
    "courses",
    metadata,
    Column("course_id", Integer, primary_key=True, autoincrement=True),
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
)

Index("courses_by_camera_day", courses.c.camera_id, courses.c.week_id)
