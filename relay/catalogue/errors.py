"""What the catalogue refuses, independent of how the API words it."""

from __future__ import annotations


class CatalogueError(Exception):
    """Base of every refusal; the message is for logs and operators."""


class NotFound(CatalogueError):
    """A row named by id (or name) does not exist.

    ``ids`` lists the missing ones; ``kind`` says which table ("camera", "course" …) when a call
    names rows of several.
    """

    def __init__(self, message: str, ids: list[int] | None = None, kind: str = "") -> None:
        super().__init__(message)
        self.ids = ids or []
        self.kind = kind


class AlreadyExists(CatalogueError):
    """A unique name is taken."""


class GathererRefused(CatalogueError):
    """An agent may not register as this gatherer (another key owns it, or its key is full)."""


class CourseOverlap(CatalogueError):
    """A course would overlap another course of the same camera and weekday."""

    def __init__(self, course_id: int, start_sec: int, elapse_sec: int) -> None:
        super().__init__(f"overlaps course {course_id}")
        self.course_id = course_id
        self.start_sec = start_sec
        self.elapse_sec = elapse_sec


#: What a caller meets when the database cannot be reached (PostgreSQL restarting, a network cut):
#: SQLAlchemy's errors, and what the driver raises while it connects (a refused or timed-out
#: connection reaches the caller unwrapped). ``relay serve`` answers these 503, never 500.
def _database_down() -> tuple[type[BaseException], ...]:
    import socket

    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, ConnectionRefusedError, ConnectionAbortedError, socket.gaierror,
            TimeoutError)


DATABASE_DOWN = _database_down()
