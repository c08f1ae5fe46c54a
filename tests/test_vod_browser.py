"""The recording page in a real Chromium: a stored H.264 MP4 (+faststart, 10 s, made with PyAV)
plays in an iframe, seeks to the middle and shows the frame of that moment, ends, and tells the
embedding page; a ticket for one recording opens no other.

The relay is the real app on a real socket over a real SQLite file (the ``api`` fixture, as the
other player-page tests), the recording a real row and real files in its storage.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import pytest
from live_system import embed
from playwright.async_api import Frame, Page

from relay.agent.demo_video import make_demo_video

SECONDS, FPS, WIDTH, HEIGHT = 10, 25, 640, 360


def faststart_copy(source: Path, target: Path) -> Path:
    """``source`` remuxed (stream copy) with its index first, as the agent's spool stores it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as src, \
            av.open(str(target), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return target


def poster_jpeg(source: Path) -> bytes:
    """The first frame of ``source`` as a JPEG (PyAV's MJPEG encoder)."""
    with av.open(str(source)) as src:
        frame = next(src.decode(video=0))
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = frame.width, frame.height, "yuvj420p"
    encoder.time_base = Fraction(1, FPS)
    packets = encoder.encode(frame.reformat(format="yuvj420p")) + encoder.encode(None)
    return b"".join(bytes(packet) for packet in packets)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    tmp = tmp_path_factory.mktemp("vod")
    source = make_demo_video(tmp / "demo.mp4", WIDTH, HEIGHT, FPS, seconds=SECONDS)
    video = faststart_copy(source, tmp / "stored.mp4").read_bytes()
    assert video[4:8] == b"ftyp" and video.index(b"moov") < video.index(b"mdat")
    return video, poster_jpeg(source)


async def stored_record(api, camera_id: int, media: tuple[bytes, bytes], name: str,
                        start: int) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    video = api.store(f"records/{camera_id}/20240601/{name}.mp4", media[0])
    poster = api.store(f"posters/{camera_id}/{name}.jpg", media[1])
    record_id = await api.services.catalogue.records.add(
        camera_id, video, poster, len(media[0]), SECONDS, start, start + SECONDS)
    return record_id, video, poster


async def play_url(api, record_id: int) -> str:  # type: ignore[no-untyped-def]
    answer = await api.call("play_record", record_id=record_id, width=WIDTH, height=HEIGHT)
    assert answer["err_code"] == 0, answer
    return answer["play_url"]


async def event(page: Page, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = await page.evaluate("window.events")
        if {"source": "relay-player", "event": name} in events:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name!r} posted: {await page.evaluate('window.events')}")


def player(page: Page) -> Frame:
    return next(f for f in page.frames if "/play/record/" in f.url)


#: Seek to ``at`` seconds and wait for that frame to be shown; answer the frame's bright bar
#: column (the demo picture's bar sits at x = frame * 8 mod width) and the ms the seek took.
SEEK = """async (at) => {
    const v = document.getElementById('video');
    const started = performance.now();
    const next = () => new Promise((done) => v.requestVideoFrameCallback((now, meta) => done(meta)));
    let shown = next();
    v.pause();
    v.currentTime = at;
    // A frame of the playback before the pause can still reach the screen first (seen once:
    // media time 0.08 after a seek to 5 s): wait on, up to 5 s, for the frame the seek shows.
    let meta = await shown;
    while (Math.abs(meta.mediaTime - at) > 0.1 && performance.now() - started < 5000) {
        shown = next();
        meta = await Promise.race([shown, new Promise((done) => setTimeout(() => done(meta),
                                                                           5000))]);
    }
    const ms = performance.now() - started;
    const canvas = document.createElement('canvas');
    canvas.width = v.videoWidth; canvas.height = v.videoHeight;
    const context = canvas.getContext('2d');
    context.drawImage(v, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let bar = -1, lit = 0, darkest = 255, brightest = 0;
    for (let x = 0; x < canvas.width; x++) {
        let low = 255;
        // The lower part only: the demo picture's label and clock box sit at its top left.
        for (let y = canvas.height >> 1; y < canvas.height; y += 4)
            low = Math.min(low, pixels[(y * canvas.width + x) * 4]);
        if (low > 215 && bar < 0) bar = x;
        darkest = Math.min(darkest, low);
    }
    for (let i = 0; i < pixels.length; i += 4) {
        brightest = Math.max(brightest, pixels[i]);
        if (pixels[i] > 24) lit++;
    }
    return {bar, ms, lit: lit / (pixels.length / 4), darkest, brightest,
            time: v.currentTime, media_time: meta.mediaTime};
}"""


async def test_a_recording_plays_seeks_and_ends_in_an_iframe(api, browser, media):
    camera = await api.camera(await api.gatherer(), "三年二班")
    start = 1_717_200_000
    record_id, video, poster = await stored_record(api, camera, media, "lesson", start)
    url = await play_url(api, record_id)
    page = await browser.new_page()  # embed()'s page, watched from its first request
    ranges: list[tuple[str, int]] = []
    page.on("response", lambda r: ranges.append((r.request.headers.get("range", ""), r.status))
            if r.url.endswith(video) else None)
    await page.set_content(
        "<script>window.events = [];"
        " addEventListener('message', e => events.push(e.data));</script>"
        f"<iframe src='{url}' width=660 height=380 allow='autoplay'></iframe>")
    await event(page, "playing")
    frame = player(page)
    shown = await frame.evaluate("""() => {
        const v = document.getElementById('video');
        return {caption: document.getElementById('caption').textContent, poster: v.poster,
                width: v.videoWidth, height: v.videoHeight, duration: v.duration,
                box: [document.getElementById('box').offsetWidth,
                      document.getElementById('box').offsetHeight]};
    }""")
    assert "三年二班" in shown["caption"]
    assert api.services.presenter.time(start) in shown["caption"]
    assert shown["poster"] == api.services.settings.storage_url + poster
    assert (shown["width"], shown["height"], shown["box"]) == (WIDTH, HEIGHT, [WIDTH, HEIGHT])
    assert abs(shown["duration"] - SECONDS) < 0.2
    assert (await api.client.get(poster)).status == 200
    assert (await api.services.catalogue.records.get(record_id))["clicks"] == 1

    middle = await frame.evaluate(SEEK, SECONDS / 2)
    assert abs(middle["time"] - SECONDS / 2) < 0.1, middle
    assert abs(middle["media_time"] - SECONDS / 2) < 0.1, middle
    assert middle["lit"] > 0.5 and middle["brightest"] > 200, middle  # a picture, not black
    expected_bar = (int(SECONDS / 2 * FPS) * 8) % WIDTH
    assert abs(middle["bar"] - expected_bar) <= 16, middle  # the frame of that moment
    early = await frame.evaluate(SEEK, 1.0)
    assert abs(early["bar"] - (FPS * 8) % WIDTH) <= 16, early
    assert any(header.startswith("bytes=") and status == 206 for header, status in ranges), ranges

    await frame.evaluate("""() => { const v = document.getElementById('video');
                                    v.currentTime = v.duration - 0.5; v.play(); }""")
    await event(page, "ended", timeout=10)
    assert {"source": "relay-player", "event": "error"} not in await page.evaluate("window.events")
    await page.close()


async def test_a_ticket_for_one_recording_opens_no_other(api, browser, media):
    gather_id = await api.gatherer()
    first = await api.camera(gather_id, "A")
    second = await api.camera(gather_id, "B")
    record_a, _, _ = await stored_record(api, first, media, "a", 1_717_200_000)
    record_b, _, _ = await stored_record(api, second, media, "b", 1_717_300_000)
    url_a = await play_url(api, record_a)
    parts = urlsplit(url_a)
    other = f"/play/record/{record_b}?{parts.query}"
    page = await browser.new_page()
    response = await page.goto(api.services.settings.base_url + other)
    assert response is not None and response.status == 403
    assert "not for this recording" in await page.content()
    info = await api.client.get(f"/play/record/{record_b}/info?{parts.query}")
    body = await info.json()
    assert info.status == 403 and body["err_code"] == 403 and "not for this" in body["err_msg"]
    assert (await api.services.catalogue.records.get(record_b))["clicks"] == 0
    # A live ticket is no recording ticket either, and the ticket opens its own recording.
    live = urlsplit((await api.call("play_camera", camera_id=first))["play_url"]).query
    assert (await api.client.get(f"/play/record/{record_a}?{live}")).status == 403
    await page.close()
    page = await embed(browser, url_a)
    await event(page, "playing")
    caption = await player(page).evaluate("document.getElementById('caption').textContent")
    assert caption.startswith("A ")
    await page.close()


async def test_a_missing_file_posts_error(api, browser, media):
    camera = await api.camera(await api.gatherer(), "C")
    record_id, video, _ = await stored_record(api, camera, media, "gone", 1_717_200_000)
    api.services.storage.path_of(video).unlink()
    page = await embed(browser, await play_url(api, record_id))
    await event(page, "error")
    assert {"source": "relay-player", "event": "playing"} not in await page.evaluate("window.events")
    await page.close()
