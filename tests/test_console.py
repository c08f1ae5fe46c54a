"""The console's actions over real HTTP (the app on a real socket, a real SQLite file), with a
gatherer that is offline: each change goes through API v1's own rules and says so, the agent's
``transmit`` in words; deletions ask first; the console's last-administrator rule; a new agent key
shown once and working.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape

import pytest
from test_admin import ADMIN_PASSWORD, Visitor

OFFLINE = "The gatherer is offline: the change is saved and reaches it when it connects."


@pytest.fixture
async def admin(api) -> AsyncIterator[tuple[Visitor, str]]:  # type: ignore[no-untyped-def]
    base = f"http://{api.client.server.host}:{api.client.server.port}"
    visitor = Visitor(base)
    page = await visitor.signed_in("admin", ADMIN_PASSWORD)
    try:
        yield visitor, page.csrf
    finally:
        await visitor.http.close()


async def act(visitor: Visitor, path: str, csrf: str, **fields: str) -> str:
    """Post a console form; follow its redirect; the flash the next page shows (unescaped)."""
    reply = await visitor.post(path, {"csrf": csrf, **fields})
    assert reply.status == 303, (path, reply.status, reply.text[:300])
    page = await visitor.get(reply.headers["Location"])
    assert page.status == 200, page.text[:300]
    found = re.search(r"<p class=\"flash (ok|error)\" id=flash role=status>([^<]*)</p>", page.text)
    assert found, page.text[:500]
    return f"{found.group(1)}: {unescape(found.group(2))}"


async def test_the_root_leads_to_the_console(api):
    response = await api.client.get("/", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/admin"


async def test_cameras_and_courses_through_the_apis_rules(api, admin):
    visitor, csrf = admin
    gather_id = await api.gatherer()
    said = await act(visitor, f"/admin/gatherers/{gather_id}/cameras", csrf, camera_name="三班",
                     stream_prop="1", stream_mp4="/videos/c.mp4")
    assert said == f"ok: 已添加通道 · Camera added. 采集端不在线：已保存，采集端连接后生效 · {OFFLINE}"
    [camera] = (await api.call("list_camera"))["data"]
    camera_id = camera["camera_id"]
    # The API's own refusals, in its words: a URL for mode 1 (1009), no name (1008).
    said = await act(visitor, f"/admin/gatherers/{gather_id}/cameras", csrf, camera_name="x",
                     stream_prop="1", stream_mp4="http://evil/x.mp4")
    assert said.startswith("error: 参数格式不正确") and "[1009]" in said, said
    said = await act(visitor, f"/admin/cameras/{camera_id}/edit", csrf, camera_name=" ")
    assert said.startswith("error: 没有名称") and "(name)" in said and "[1008]" in said, said

    said = await act(visitor, f"/admin/cameras/{camera_id}/edit", csrf, camera_name="三年三班",
                     device_password="p@ss word")
    assert said.startswith("ok: 已保存 · Saved.")
    row = await api.services.catalogue.cameras.get(camera_id)
    assert row["camera_name"] == "三年三班" and row["device_pass"] == "cEBzcyB3b3Jk"  # base64
    assert (await act(visitor, f"/admin/cameras/{camera_id}/stop", csrf)).startswith("ok: 已停止")
    assert (await api.services.catalogue.cameras.get(camera_id))["started"] == 0
    assert (await act(visitor, f"/admin/cameras/{camera_id}/start", csrf)).startswith("ok: 已启动")

    courses = f"/admin/cameras/{camera_id}/courses"
    for fields, code in (({"week_id": "1", "start": "25:00", "minutes": "10"}, 1011),
                         ({"week_id": "9", "start": "08:00", "minutes": "10"}, 1011),
                         ({"week_id": "1", "start": "08:00", "minutes": "ten"}, 1011),
                         ({"week_id": "1", "start": "23:30", "minutes": "45"}, 1013)):
        said = await act(visitor, courses, csrf, **fields)
        assert said.startswith("error:") and f"[{code}]" in said, (fields, said)
    said = await act(visitor, courses, csrf, week_id="1", start="8:00", minutes="45")
    assert said.startswith("ok: 已添加课程 · Course added.") and OFFLINE in said
    [course] = (await api.call("list_course", camera_id=camera_id))["data"]
    assert (course["week_id"], course["elapse_sec"], course["start_time"][-8:]) == (
        1, 2700, "08:00:00")
    said = await act(visitor, courses, csrf, week_id="1", start="08:30", minutes="30")
    assert "输入时间与已有时间发生重叠: 08:00:00-08:45:00" in said and "[1012]" in said, said

    course_id = course["course_id"]
    said = await act(visitor, f"/admin/courses/{course_id}/move", csrf, camera_id=str(camera_id),
                     week_id="2", start="09:15", minutes="40")
    assert said.startswith("ok: 已修改课程")
    [moved] = (await api.call("list_course", camera_id=camera_id))["data"]
    assert (moved["week_id"], moved["elapse_sec"], moved["start_time"][-8:]) == (
        2, 2400, "09:15:00")

    # Deleting asks first: the first post only shows the question, and changes nothing.
    asked = await visitor.post(f"/admin/courses/{course_id}/delete",
                               {"csrf": csrf, "camera_id": str(camera_id)})
    assert asked.status == 200 and "id=confirm" in asked.text and "name=confirm value=yes" in asked.text
    assert len((await api.call("list_course", camera_id=camera_id))["data"]) == 1
    said = await act(visitor, f"/admin/courses/{course_id}/delete", csrf,
                     camera_id=str(camera_id), confirm="yes")
    assert said.startswith("ok: 已删除课程")
    assert (await api.call("list_course", camera_id=camera_id))["data"] == []

    asked = await visitor.post(f"/admin/cameras/{camera_id}/delete", {"csrf": csrf})
    assert asked.status == 200 and "三年三班" in asked.text
    said = await act(visitor, f"/admin/cameras/{camera_id}/delete", csrf, confirm="yes")
    assert said.startswith("ok: 已删除")
    assert (await api.call("list_camera"))["data"] == []


async def test_gatherer_settings_are_mod_gather(api, admin):
    visitor, csrf = admin
    gather_id = await api.gatherer()
    page = await visitor.get(f"/admin/gatherers/{gather_id}")
    assert page.status == 200 and "id=gatherer-settings" in page.text
    said = await act(visitor, f"/admin/gatherers/{gather_id}/settings", csrf, name_set="东楼",
                     slice_val="10", inter_val="2", snap_val="5")
    assert said == f"ok: 设置已保存 · Settings saved. 采集端不在线：已保存，采集端连接后生效 · {OFFLINE}"
    [row] = (await api.call("list_gather"))["data"]
    assert (row["name_set"], row["slice_val"], row["inter_val"], row["snap_val"]) == (
        "东楼", 10, 2, 5)
    said = await act(visitor, f"/admin/gatherers/{gather_id}/settings", csrf, snap_val="0")
    assert "[1009]" in said and "(snap_val)" in said, said
    assert (await api.call("list_gather"))["data"][0]["snap_val"] == 5


async def test_the_last_administrator_keeps_their_rights(api, admin):
    visitor, csrf = admin
    said = await act(visitor, "/admin/accounts/role", csrf, name="admin", is_admin="0")
    assert said.startswith("error: 至少要保留一个管理员")
    assert (await api.services.catalogue.accounts.by_name("admin")).is_admin
    said = await act(visitor, "/admin/accounts", csrf, name="deputy", password="long enough",
                     is_admin="1")
    assert said == "ok: 已创建 · Created deputy (administrator)."
    said = await act(visitor, "/admin/accounts/role", csrf, name="admin", is_admin="0")
    assert said.startswith("ok: admin: 现在只能观看")
    assert not (await api.services.catalogue.accounts.by_name("admin")).is_admin


async def test_a_new_agent_key_is_shown_once_and_works(api, admin):
    visitor, csrf = admin
    made = await visitor.post("/admin/keys", {"csrf": csrf, "name": "east", "gatherers": "3"})
    assert made.status == 200 and made.headers["Cache-Control"] == "no-store"
    [key] = re.findall(r"<code id=new-key>(rk_[A-Za-z0-9_-]+)</code>", made.text)
    checked = await api.services.catalogue.agent_keys.check(key)
    assert checked is not None and checked.name == "east" and checked.max_gatherers == 3
    listing = await visitor.get("/admin/keys")
    assert "data-key=\"east\"" in listing.text and key not in listing.text
    again = await act(visitor, "/admin/keys", csrf, name="east")
    assert again.startswith("error: 未创建 · Not created:") and "already exists" in again
    assert (await act(visitor, "/admin/keys", csrf, name="no spaces")).startswith("error:")
    assert (await act(visitor, "/admin/keys", csrf, name="x", gatherers="0")).startswith("error:")


async def test_a_new_password_ends_the_accounts_other_sessions(api, admin):
    """A session stolen before a reset does not outlive it; the one making the change goes on."""
    visitor, csrf = admin
    await api.services.catalogue.accounts.add("teacher", "password1", is_admin=False)
    base = f"http://{api.client.server.host}:{api.client.server.port}"
    teacher = Visitor(base)
    try:
        await teacher.signed_in("teacher", "password1")
        said = await act(visitor, "/admin/accounts/password", csrf, name="teacher",
                         password="a new one here")
        assert said == "ok: teacher: 密码已更改 · password changed."
        assert (await teacher.get()).is_sign_in_form  # the old session is gone
        assert (await teacher.sign_in("teacher", "password1")).status == 401
        assert (await teacher.sign_in("teacher", "a new one here")).status == 303
        # An administrator changing their own password keeps the session they did it from.
        other = Visitor(base)
        await other.signed_in("admin", ADMIN_PASSWORD)
        said = await act(visitor, "/admin/accounts/password", csrf, name="admin",
                         password="another horse")
        assert said.startswith("ok: admin:")
        assert not (await visitor.get()).is_sign_in_form
        assert (await other.get()).is_sign_in_form
        await other.http.close()
    finally:
        await teacher.http.close()
