"""The catalogue: the one owner of persistent state, and the desired state every agent receives.

All database access in relay goes through here. Each table family has its own object
(``catalogue.cameras``, ``catalogue.courses`` …); every method runs in one transaction, so an API
call either applies whole or not at all. SQLAlchemy Core keeps the queries portable: an embedded
SQLite file by default, PostgreSQL by ``database_url``. Writes take one path per backend
(``database.py``); the rows every request reads are cached per node beside it (``cache.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .accounts import Account, Accounts
from .agent_keys import AgentKey, AgentKeys
from .cache import HotRows
from .cameras import Cameras, DeletedCameras
from .courses import Courses
from .database import CatalogueUnavailable, Database
from .errors import AlreadyExists, CatalogueError, CourseOverlap, GathererRefused, NotFound
from .gatherers import Gatherers
from .paging import Page
from .records import Records
from .uploads import Committed, UploadConflict, Uploads

__all__ = [
    "Account",
    "AgentKey",
    "AlreadyExists",
    "Catalogue",
    "CatalogueError",
    "CatalogueUnavailable",
    "Committed",
    "CourseOverlap",
    "DeletedCameras",
    "GathererRefused",
    "NotFound",
    "Page",
    "UploadConflict",
]


class Catalogue:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.hot = HotRows(db.dialect)  # this node's cache of the request path's rows
        self.accounts = Accounts(db, clock, self.hot)
        self.agent_keys = AgentKeys(db, clock, self.hot)
        self.gatherers = Gatherers(db, clock)
        self.cameras = Cameras(db, clock, self.hot)
        self.courses = Courses(db, clock)
        self.records = Records(db, clock)
        self.uploads = Uploads(db, clock)

    @classmethod
    async def open(cls, url: str, clock: Callable[[], float] = time.time, create: bool = True
                   ) -> Catalogue:
        """Connect, creating (unless ``create`` is False) or upgrading the schema first; on
        PostgreSQL also start listening for other nodes' changes (``cache.py``)."""
        catalogue = cls(await Database.open(url, create), clock)
        await catalogue.hot.start(url)
        return catalogue

    async def close(self) -> None:
        await self.hot.close()
        await self.db.close()

    async def signing_key(self) -> bytes:
        return await self.db.signing_key()

    async def ping(self) -> None:
        await self.db.ping()
