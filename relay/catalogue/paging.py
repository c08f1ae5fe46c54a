"""One page of a newest-first listing, with the total the API's page fields need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class Page:
    total: int
    rows: list[dict[str, Any]]


async def fetch_page(conn: AsyncConnection, query: Select, cur: int, per: int) -> Page:
    """Run ``query`` (already ordered) for page ``cur`` of ``per`` rows, and count all its rows."""
    count_query = select(func.count()).select_from(query.order_by(None).subquery())
    total = (await conn.execute(count_query)).scalar_one()
    rows: list[dict[str, Any]] = []
    if total > (cur - 1) * per:
        result = await conn.execute(query.limit(per).offset((cur - 1) * per))
        rows = [dict(row._mapping) for row in result]
    return Page(total, rows)
