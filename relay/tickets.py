"""Play tickets: what a ``play_url`` carries instead of the API token.

A ticket names one camera (live) or one recording and expires; it grants watching that one thing and
nothing else, so an embedded player page never holds the administrator's token. It names the row by
its id *and* its creation time: ids are never reused (schema 2), but a catalogue restored from a
backup, or upgraded from one that reused ids, could hand an old id to a new camera, and a ticket for
the old one must not open it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .signing import Signer

Kind = Literal["live", "record"]
PURPOSE = "play-ticket"


class TicketError(Exception):
    """Why a ticket was refused, in words fit for the player page."""


def issue_ticket(signer: Signer, now: float, kind: Kind, target: dict[str, Any], ttl: int) -> str:
    """A ticket for ``target``, the camera or record row (its id and ``created``)."""
    return signer.sign(PURPOSE, kind, _id_of(kind, target), int(target["created"]), int(now) + ttl)


@dataclass(frozen=True)
class Ticket:
    """A valid ticket: what it names."""

    kind: Kind
    target_id: int
    created: int

    def require(self, row: dict[str, Any]) -> None:
        """Refuse unless ``row`` (the camera or record of ``target_id``) is the one it was for."""
        if int(row["created"]) != self.created:
            what = "camera" if self.kind == "live" else "recording"
            raise TicketError(f"the {what} this ticket was for no longer exists")


def check_ticket(
    signer: Signer, clock: Callable[[], float], kind: Kind, ticket: str | None, target_id: int
) -> Ticket:
    """The ticket when it is a live one of ``kind`` for ``target_id``, else ``TicketError``. The
    caller then checks it against the row it loads (``Ticket.require``)."""
    if not ticket:
        raise TicketError("missing play ticket")
    fields = signer.verify(PURPOSE, ticket, 4)
    if fields is None or not all(field.isascii() and field.isdigit() for field in fields[1:]):
        raise TicketError("invalid play ticket")
    if fields[0] != kind or int(fields[1]) != target_id:
        raise TicketError(f"this ticket is not for this {'camera' if kind == 'live' else 'recording'}")
    if clock() >= int(fields[3]):
        raise TicketError("play ticket expired")
    return Ticket(kind, target_id, int(fields[2]))


def _id_of(kind: Kind, target: dict[str, Any]) -> int:
    return int(target["camera_id"] if kind == "live" else target["record_id"])
