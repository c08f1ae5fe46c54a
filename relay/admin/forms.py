"""What every console page and action shares: the id in the path, an API v1 call in this process
with its outcome as a flash, the player URL of an iframe, and the confirmation of a deletion."""

from __future__ import annotations

from aiohttp import web

from ..api.registry import call_endpoint
from ..ids import parse_id
from ..services import SERVICES
from . import words
from .sessions import Visit, done, render

PLAYER_SIZE = (960, 540)


def target_id(request: web.Request) -> int:
    found = parse_id(request.match_info["id"])
    if found is None:
        raise web.HTTPNotFound(text="no such id")
    return found


def back_to(path: str, fallback: str) -> str:
    """A console path to return to; anything else (another site, ``//host``) is ``fallback``."""
    ok = path.startswith("/admin") and not path.startswith("//") and "\\" not in path
    return path if ok else fallback


async def run_endpoint(request: web.Request, visit: Visit, endpoint: str,
                       values: dict[str, str], did: str, back: str) -> web.HTTPSeeOther:
    """Call API v1's ``endpoint`` as the signed-in account; the redirect to ``back`` carries
    what it did (and the gatherer's answer) or the API's refusal."""
    answer = await call_endpoint(request.app[SERVICES], visit.account, endpoint, values)
    ok, text = words.outcome(answer, did)
    return done(request, back, text, ok)


async def play_url(request: web.Request, visit: Visit, endpoint: str, key: str,
                   target: int) -> str:
    """The player page for an iframe, exactly as ``play_camera``/``play_record`` hand it out."""
    width, height = PLAYER_SIZE
    answer = await call_endpoint(request.app[SERVICES], visit.account, endpoint,
                                 {key: str(target), "width": str(width), "height": str(height)})
    return str(answer.get("play_url", ""))


def confirm(request: web.Request, visit: Visit, form: dict[str, str], title: str, text: str,
            back: str) -> web.StreamResponse | None:
    """The confirmation page of a deletion, unless this post is its confirmed repeat."""
    if form.get("confirm") == "yes":
        return None
    kept = {key: value for key, value in form.items() if key not in ("csrf", "confirm")}
    return render(request, "confirm.html", {"visit": visit, "title": title, "text": text,
                                            "action": request.path, "fields": kept,
                                            "back": back})
