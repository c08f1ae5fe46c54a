"""The operator console in a real Chromium against a real ``relay serve`` and a real ``relay
agent`` with a camera playing a real H.264 file: an administrator runs the site from /admin alone
(gatherer settings, live video, courses, a recording played and sought, agent keys, credential,
accounts), a viewer account watches and can do nothing else, and a form without its CSRF token is
refused. Screenshots of the overview and camera pages go to docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from conftest import (
    AgentProcess,
    RelayProcess,
    eventually,
    run_relay,
    start_agent,
    start_relay,
    stop_agent,
    stop_relay,
)
from live_system import no_tracebacks
from playwright.async_api import Browser, BrowserContext, Frame, Page, expect
from recording_system import Client, zone_far_from_midnight
from test_vod_browser import SEEK

from relay.agent.demo_video import make_demo_video

MINUTE = 4.0  # seconds in one slice_val minute for the agent under test: 4-s recordings
TIMEOUT_MS = 20_000
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
VIEWER_PASSWORD = "watch-only-1"


@dataclass
class Site:
    tmp: Path
    relay: RelayProcess
    agent: AgentProcess
    client: Client
    zone: ZoneInfo
    gather_id: int
    camera_id: int

    @property
    def base(self) -> str:
        return self.relay.base_url


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A relay, an agent and one camera, as ``relay demo`` leaves them (its camera made through
    the API); everything after this is done in the console."""
    tmp = tmp_path_factory.mktemp("console")
    zone = zone_far_from_midnight()
    video = make_demo_video(tmp / "cam.mp4", seconds=10)
    relay = start_relay(tmp / "data", "--timezone", zone, "--ice-addresses", "127.0.0.1",
                        "--command-timeout", "5")
    agent = None
    try:
        key = run_relay("agent-key", "add", "school", "--data", str(tmp / "data")).stdout.strip()
        run_relay("user", "add", "teacher", "--data", str(tmp / "data"),
                  env={"RELAY_PASSWORD": VIEWER_PASSWORD})
        (tmp / "agent.toml").write_text(
            f'mac_addr = "02:00:00:00:c0:01"\nminute_length = {MINUTE}\nspool_max_mb = 64\n')
        agent = start_agent(relay.base_url, key, tmp / "agent", "--config", str(tmp / "agent.toml"))
        client = Client(relay.base_url, relay.credential)
        eventually(lambda: client.call("list_gather")["data"]
                   and client.call("list_gather")["data"][0]["status"] == 1)
        gather_id = client.call("list_gather")["data"][0]["gather_id"]
        camera_id = client.call("add_camera", camera_name="演示通道 Demo camera",
                                gather_id=gather_id, stream_prop=1,
                                stream_mp4=str(video))["camera_id"]
        eventually(lambda: client.call("get_camera_status", camera_id=camera_id)["status"] == 1)
        yield Site(tmp, relay, agent, client, ZoneInfo(zone), gather_id, camera_id)
    finally:
        logs = {}
        if agent is not None:
            stop_agent(agent)
            logs["agent"] = agent.log()
        logs["relay"] = stop_relay(relay)
        no_tracebacks(logs)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        await context.close()


async def sign_in(page: Page, base: str, name: str, password: str) -> None:
    await page.goto(f"{base}/admin")
    await page.fill("#name", name)
    await page.fill("#password", password)
    await page.click("#sign-in")
    await expect(page.locator("#sign-out")).to_be_visible()


async def flash(page: Page) -> str:
    await expect(page.locator("#flash")).to_be_visible()
    return await page.locator("#flash").inner_text()


def player(page: Page, kind: str) -> Frame:
    return next(frame for frame in page.frames if f"/play/{kind}/" in frame.url)


async def live_frames(page: Page, timeout: float = 30) -> dict[str, Any]:
    """Wait until the console's embedded live player has decoded frames."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        frame = next((f for f in page.frames if "/play/live/" in f.url), None)
        if frame is not None:
            state = await frame.evaluate("""() => {
                const v = document.querySelector('video');
                return v ? {frames: v.getVideoPlaybackQuality().totalVideoFrames,
                            width: v.videoWidth, height: v.videoHeight}
                         : {page: document.body ? document.body.innerText.slice(0, 300) : ''};
            }""")
            if state.get("frames") and state.get("width"):
                return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"the live player decoded nothing: {state}")


async def test_an_administrator_runs_the_site_from_the_console(site: Site, context):
    page = await context.new_page()
    await sign_in(page, site.base, "admin", site.relay.password)

    # The overview: the gatherer and its camera, online; the vital signs.
    gatherer_row = page.locator(f"tr[data-gatherer='{site.gather_id}']")
    await expect(gatherer_row).to_contain_text("online")
    await expect(gatherer_row).to_contain_text("127.0.0.1")
    camera_card = page.locator(f"li[data-camera='{site.camera_id}']")
    await expect(camera_card).to_contain_text("演示通道 Demo camera")
    await expect(camera_card).to_contain_text("online")
    await expect(page.locator("#stat-agents")).to_have_text("1")

    # The gatherer's settings: slices of one (test) minute; the agent's answer in words.
    await page.click(f"tr[data-gatherer='{site.gather_id}'] a")
    await page.fill("#gatherer-settings input[name=slice_val]", "1")
    await page.click("#save-settings")
    assert "Settings saved. 采集端已执行 · The gatherer applied it." in await flash(page)
    await expect(page.locator("#gatherer-settings input[name=slice_val]")).to_have_value("1")
    # A value out of mod_gather's range: the API's own refusal, nothing saved.
    await page.fill("#gatherer-settings input[name=inter_val]", "9")
    await page.click("#save-settings")
    refused = await flash(page)
    assert "参数格式不正确" in refused and "[1009]" in refused, refused
    assert site.client.call("list_gather")["data"][0]["inter_val"] == 0

    # The camera: live video inside the console.
    await page.goto(f"{site.base}/admin/cameras/{site.camera_id}")
    decoded = await live_frames(page)
    assert (decoded["width"], decoded["height"]) == (640, 360), decoded

    # A course around now, added in the console, is on the timetable ...
    now = dt.datetime.now(site.zone)
    start = now - dt.timedelta(minutes=1)
    today = now.isoweekday() % 7
    await page.select_option("#course-week", str(today))
    await page.fill("#course-start", start.strftime("%H:%M:%S"))
    await page.fill("#course-minutes", "30")
    await page.click("#add-course-button")
    assert "Course added. 采集端已执行" in await flash(page)
    [course] = site.client.call("list_course", camera_id=site.camera_id)["data"]
    block = page.locator(f"#timetable .day[data-week='{today}'] .course[data-course="
                         f"'{course['course_id']}']")
    await expect(block).to_have_text(f"{start:%H:%M}–{start + dt.timedelta(minutes=30):%H:%M}")
    # ... and one that overlaps it is refused with the API's 1012, naming the overlap.
    await page.select_option("#course-week", str(today))
    await page.fill("#course-start", (start + dt.timedelta(minutes=10)).strftime("%H:%M"))
    await page.fill("#course-minutes", "45")
    await page.click("#add-course-button")
    overlap = await flash(page)
    expected = (f"输入时间与已有时间发生重叠: {start:%H:%M:%S}-"
                f"{start + dt.timedelta(minutes=30):%H:%M:%S} (course_id={course['course_id']})")
    assert expected in overlap and "[1012]" in overlap, overlap
    assert len(site.client.call("list_course", camera_id=site.camera_id)["data"]) == 1

    # The course records; the slice arrives and is listed under Recordings, filtered by day.
    def recorded() -> bool:
        return bool(site.client.call("list_record", camera_id=site.camera_id)["data"])
    eventually(recorded, timeout=60)
    await page.click("#nav-recordings")
    await page.select_option("#filter-camera", str(site.camera_id))
    await page.fill("#filter-day", now.strftime("%Y-%m-%d"))
    await page.click("#filter-button")
    [record] = site.client.call("list_record", camera_id=site.camera_id, per=1)["data"]
    row = page.locator(f"tr[data-record='{record['record_id']}']")
    await expect(row).to_contain_text("演示通道 Demo camera")
    # Another day shows none.
    await page.fill("#filter-day", (now - dt.timedelta(days=3)).strftime("%Y-%m-%d"))
    await page.click("#filter-button")
    await expect(page.locator("#records-total")).to_contain_text("0 段录像")
    await page.go_back()

    # Play it and seek to the middle: the frame there is shown.
    await page.click(f"tr[data-record='{record['record_id']}'] a.play")
    await expect(page.locator("#record-player")).to_be_visible()
    vod = None
    for _ in range(100):
        vod = next((f for f in page.frames if "/play/record/" in f.url), None)
        if vod is not None:
            break
        await asyncio.sleep(0.1)
    assert vod is not None
    await vod.wait_for_function("() => document.getElementById('video').readyState >= 2")
    duration = await vod.evaluate("document.getElementById('video').duration")
    assert duration > 2, duration
    shown = await asyncio.wait_for(vod.evaluate(SEEK, duration / 2), 20)
    assert abs(shown["media_time"] - duration / 2) < 0.5, shown
    assert shown["lit"] > 0.5 and shown["brightest"] > 200, shown  # a picture, not a black frame
    download = page.locator("#download")
    assert (await download.get_attribute("href")).endswith(record["file_fdfs"])

    # An agent key: shown once, then only its name; revoked after a confirmation.
    await page.click("#nav-keys")
    await page.fill("#key-name", "school-east")
    await page.click("#add-key-button")
    new_key = await page.locator("#new-key").inner_text()
    assert re.fullmatch(r"rk_[A-Za-z0-9_-]{43}", new_key), new_key
    await expect(page.locator("#agent-command")).to_contain_text(f"--server {site.base}")
    await page.click("#nav-keys")
    row = page.locator("tr[data-key='school-east']")
    await expect(row).to_contain_text("active")
    assert new_key not in await page.content()
    await row.locator("button.revoke-key").click()
    await expect(page.locator("#question")).to_contain_text("school-east")
    await page.click("#confirm")
    assert "Revoked" in await flash(page)
    await expect(page.locator("tr[data-key='school-east']")).to_contain_text("revoked")

    # The credential: rotated, the old one stops working at once.
    await page.click("#nav-accounts")
    old = await page.locator("#credential").inner_text()
    assert old == site.relay.credential
    await page.click("#rotate")
    assert "a new credential was issued" in await flash(page)
    new = await page.locator("#credential").inner_text()
    assert new != old
    assert site.client.get("access_token", unionid=old)["err_code"] == 1002
    site.client = Client(site.base, new)

    # Another account: a viewer.
    await page.fill("#account-name", "librarian")
    await page.fill("#account-password", "x" * 7)  # one short of the rule
    await page.evaluate("document.querySelector('#account-password').removeAttribute('minlength')")
    await page.click("#add-account-button")
    assert "at least 8 characters" in await flash(page)
    await page.fill("#account-name", "librarian")
    await page.fill("#account-password", "books-and-more")
    await page.click("#add-account-button")
    assert "Created librarian (viewer)" in await flash(page)
    await expect(page.locator("tr[data-account='librarian']")).to_contain_text("viewer")

    # Deleting the recording asks first, then the row and its file are gone.
    await page.goto(f"{site.base}/admin/recordings/{record['record_id']}")
    await page.click("#delete-record")
    await expect(page.locator("#question")).to_contain_text("演示通道 Demo camera")
    await page.click("#cancel")
    assert any(r["record_id"] == record["record_id"]
               for r in site.client.call("list_record", camera_id=site.camera_id, per=100)["data"])
    await page.click("#delete-record")
    await page.click("#confirm")
    assert "Deleted the recording" in await flash(page)
    assert all(r["record_id"] != record["record_id"]
               for r in site.client.call("list_record", camera_id=site.camera_id, per=100)["data"])


ADMIN_ACTIONS = (
    ("/admin/gatherers/{gather}/settings", {"slice_val": "3"}),
    ("/admin/gatherers/{gather}/cameras", {"camera_name": "x", "stream_prop": "2",
                                           "stream_url": "rtsp://x/y"}),
    ("/admin/cameras/{camera}/stop", {}),
    ("/admin/cameras/{camera}/edit", {"camera_name": "renamed"}),
    ("/admin/cameras/{camera}/delete", {"confirm": "yes"}),
    ("/admin/cameras/{camera}/courses", {"week_id": "1", "start": "03:00", "minutes": "5"}),
    ("/admin/keys", {"name": "sneaky"}),
    ("/admin/accounts", {"name": "sneaky", "password": "long enough", "is_admin": "1"}),
    ("/admin/accounts/role", {"name": "teacher", "is_admin": "1"}),
    ("/admin/accounts/password", {"name": "admin", "password": "taken over"}),
    ("/admin/accounts/rotate", {"name": "admin"}),
    ("/admin/rotate", {}),
)


async def test_a_viewer_watches_and_can_do_nothing_else(site: Site, context):
    page = await context.new_page()
    await sign_in(page, site.base, "teacher", VIEWER_PASSWORD)
    await expect(page.locator("#no-api")).to_contain_text("for administrators")
    await expect(page.locator(f"li[data-camera='{site.camera_id}']")).to_be_visible()
    for hidden in ("#nav-keys", "#nav-accounts", "table.gatherers", "#credential"):
        assert await page.locator(hidden).count() == 0, hidden
    # The overview refreshes by itself: a rename made elsewhere shows up without a reload.
    renamed = "演示通道 Demo camera (east)"
    site.client.call("mod_camera", camera_id=site.camera_id, camera_name=renamed)
    try:
        await expect(page.locator(f"li[data-camera='{site.camera_id}'] .name")).to_have_text(
            renamed, timeout=15_000)
        assert int(await page.locator("#live").get_attribute("data-refreshed") or 0) >= 1
    finally:
        site.client.call("mod_camera", camera_id=site.camera_id,
                         camera_name="演示通道 Demo camera")
    await page.click(f"li[data-camera='{site.camera_id}'] a")
    await live_frames(page)
    assert await page.locator("form[action*='/courses'], #edit-camera, #stop-camera").count() == 0
    for path in ("/admin/accounts", "/admin/keys", f"/admin/gatherers/{site.gather_id}"):
        answer = await page.goto(site.base + path)
        assert answer is not None and answer.status == 403, path
        await expect(page.locator("#message")).to_contain_text("administrators only")

    # Direct posts with the viewer's own valid CSRF token: all refused, nothing changed.
    await page.goto(f"{site.base}/admin")
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    before = what_admins_control(site)
    for path, fields in ADMIN_ACTIONS:
        url = site.base + path.format(gather=site.gather_id, camera=site.camera_id)
        answer = await page.request.post(url, form={"csrf": csrf, **fields}, max_redirects=0)
        assert answer.status == 403, (path, answer.status)
        assert "administrators only" in await answer.text()
    assert what_admins_control(site) == before
    roles = await site_accounts(site)
    assert roles["admin"] and not roles["teacher"] and "sneaky" not in roles, roles


#: What the camera and its agent change by themselves while it records and snapshots.
RUNNING_STATE = frozenset({"image_id", "image_fdfs", "updated", "clicks", "spool_bytes",
                           "recording", "upload_error", "record_error"})


def what_admins_control(site: Site) -> tuple:
    """Cameras, gatherers, courses, agent keys and the camera's status, without what changes
    by itself (snapshots, spool, timestamps): what a refused admin action must leave alone."""
    def settled(rows: list[dict]) -> list[dict]:
        return [{key: value for key, value in row.items() if key not in RUNNING_STATE}
                for row in rows]
    status = site.client.call("get_camera_status", camera_id=site.camera_id)
    keys = run_relay("agent-key", "list", "--data", str(site.relay.data)).stdout
    return (settled([status]), settled(site.client.call("list_camera")["data"]),
            settled(site.client.call("list_gather")["data"]),
            settled(site.client.call("list_course", camera_id=site.camera_id)["data"]), keys)


async def site_accounts(site: Site) -> dict[str, bool]:
    listing = run_relay("user", "list", "--data", str(site.relay.data)).stdout
    return {name: role == "admin" for name, role in
            (line.split("\t") for line in listing.splitlines())}


async def test_a_form_without_its_csrf_token_is_refused(site: Site, context):
    page = await context.new_page()
    await sign_in(page, site.base, "admin", site.relay.password)
    await page.goto(f"{site.base}/admin/cameras/{site.camera_id}")
    await page.evaluate("document.querySelector('#edit-camera input[name=csrf]').remove()")
    await page.fill("#edit-camera input[name=camera_name]", "forged name")
    async with page.expect_response(lambda r: r.url.endswith("/edit")) as answer:
        await page.click("#save-camera")
    assert (await answer.value).status == 403
    await expect(page.locator("#message")).to_contain_text("This form has expired")
    assert site.client.call("list_camera")["data"][0]["camera_name"] == "演示通道 Demo camera"
    # The same post from another site (no session cookie: SameSite=Strict) only leads to sign-in.
    async with aiohttp.ClientSession() as http, http.post(
            f"{site.base}/admin/cameras/{site.camera_id}/edit",
            data={"camera_name": "cross-site"}, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/admin"


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
async def test_screenshots_of_the_overview_and_camera_pages(site: Site, browser: Browser,
                                                            width: int, height: int):
    context = await browser.new_context(viewport={"width": width, "height": height},
                                        device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        await sign_in(page, site.base, "admin", site.relay.password)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await expect(page.locator(f"li[data-camera='{site.camera_id}']")).to_contain_text("online")
        overview = SCREENSHOTS / f"overview-{width}x{height}.png"
        await page.screenshot(path=str(overview), full_page=False)
        await page.goto(f"{site.base}/admin/cameras/{site.camera_id}")
        await live_frames(page)
        camera = SCREENSHOTS / f"camera-{width}x{height}.png"
        await page.screenshot(path=str(camera), full_page=False)
        for shot in (overview, camera):
            png = shot.read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (
                width, height)
        # Readable at phone width: nothing makes the page wider than the screen.
        scroll_width = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, scroll_width
    finally:
        await context.close()
