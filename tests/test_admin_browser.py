"""/admin in a real browser (Chromium through Playwright) against a real ``relay serve`` process:
sign in with the first-start password, read the credential off the page, use it over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def get_json(http: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    async with http.get(url, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def sign_in(page: Page, base: str, name: str, password: str) -> None:
    await page.goto(f"{base}/admin")
    await expect(page).to_have_title("登录 Sign in · 云监控")
    await expect(page.locator("h1")).to_have_text("云监控后台 · Sign in")
    await page.fill("#name", name)
    await page.fill("#password", password)
    await page.click("#sign-in")
    await expect(page).to_have_title("后台 Admin · 云监控")


async def test_admin_signs_in_in_a_browser_and_the_credential_works(relay_server, browser):
    base = relay_server.base_url
    assert relay_server.password and relay_server.credential, relay_server.banner
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        await sign_in(page, base, "admin", relay_server.password)
        assert page.url == f"{base}/admin"
        await expect(page.locator("h1")).to_have_text("总览 · Overview")
        await expect(page.locator("body")).to_contain_text("Signed in as admin (administrator)")
        await page.click("#nav-accounts")
        credential = (await page.locator("#credential").text_content() or "").strip()
        assert credential == relay_server.credential
        assert credential in (await page.locator("#example").text_content() or "")

        # The session cookie is what the browser holds: HttpOnly, SameSite=Strict, /admin only.
        [session] = [c for c in await context.cookies() if c["name"] == "relay_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert session["path"] == "/admin"
        # ... and page scripts cannot read it.
        assert "relay_session" not in await page.evaluate("document.cookie")

        async with aiohttp.ClientSession() as http:
            answer = await get_json(http, f"{base}/api/v1/access_token", unionid=credential)
            assert answer["err_code"] == 0, answer
            listing = await get_json(http, f"{base}/api/v1/list_gather", token=answer["token"])
            assert listing["err_code"] == 0, listing

            # Rotating in the browser shows a new credential; the old one stops working.
            await page.click("#rotate")
            await expect(page.locator("#flash")).to_contain_text("a new credential was issued")
            rotated = (await page.locator("#credential").text_content() or "").strip()
            assert rotated and rotated != credential
            old = await get_json(http, f"{base}/api/v1/access_token", unionid=credential)
            assert old["err_code"] == 1002, old
            stale = await get_json(http, f"{base}/api/v1/list_gather", token=answer["token"])
            assert stale["err_code"] == 1007, stale
            fresh = await get_json(http, f"{base}/api/v1/access_token", unionid=rotated)
            assert fresh["err_code"] == 0, fresh

        # Signing out brings back the sign-in form, and so does reloading.
        await page.click("#sign-out")
        await expect(page).to_have_title("登录 Sign in · 云监控")
        await expect(page.locator("#sign-in")).to_be_visible()
        await page.reload()
        await expect(page.locator("#sign-in")).to_be_visible()
        assert await page.locator("#credential").count() == 0
    finally:
        await context.close()


async def test_wrong_password_in_a_browser_shows_the_error(relay_server, browser):
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        await page.goto(f"{relay_server.base_url}/admin")
        await page.fill("#name", "admin")
        await page.fill("#password", relay_server.password + "-wrong")
        await page.click("#sign-in")
        await expect(page.locator("#error")).to_contain_text("Wrong account or password")
        await expect(page).to_have_title("登录 Sign in · 云监控")
        assert await page.locator("#credential").count() == 0
        assert not [c for c in await context.cookies() if c["name"] == "relay_session"]
    finally:
        await context.close()
