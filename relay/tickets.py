"""Play tickets: what a ``play_url`` carries instead of the API token.

A ticket names one camera (live) or one recording and expires; it grants watching that one thing and
nothing else, so an embedded player page never holds the administrator's token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from .signing import Signer

Kind = Literal["live", "record"]
PURPOSE = "play-ticket"


class TicketError(Exception):
    """Why a ticket was refused, in words fit for the player page."""


def issue_ticket(signer: Signer, now: float, kind: Kind, target_id: int, ttl: int) -> str:
    return signer.sign(PURPOSE, kind, target_id, int(now) + ttl)


def check_ticket(
    signer: Signer, clock: Callable[[], float], kind: Kind, ticket: str | None, target_id: int
) -> None:
    if not ticket:
        raise TicketError("missing play ticket")
    fields = signer.verify(PURPOSE, ticket, 3)
    if fields is None or not fields[1].isdigit() or not fields[2].isdigit():
        raise TicketError("invalid play ticket")
    if fields[0] != kind or int(fields[1]) != target_id:
        raise TicketError(f"this ticket is not for this {'camera' if kind == 'live' else 'recording'}")
    if clock() >= int(fields[2]):
        raise TicketError("play ticket expired")
