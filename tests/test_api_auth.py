"""version, access_token, and the token every other call needs (1001–1007), in both URL forms."""

from __future__ import annotations

import platform

from relay.api.registry import ENDPOINTS
from relay.signing import Signer


async def test_version_needs_no_token(api):
    answer = await api.call("version", token=None)
    assert answer["err_code"] == 0 and answer["err_msg"] == "OK"
    assert answer["API"] == "v1"
    assert answer["Name"] == "云监控"
    assert answer["Version"]
    assert answer["Server"].startswith(platform.system())


async def test_access_token_answers_a_token_for_an_admin_credential(api):
    answer = await api.call("access_token", token=None, unionid=api.credential)
    assert answer["err_code"] == 0
    assert answer["expires"] == 7200
    token = answer["token"]
    assert all(ch.isalnum() or ch in "._-" for ch in token)
    listing = await api.call("list_gather", token=token)
    assert listing["err_code"] == 0


async def test_access_token_errors(api):
    assert (await api.call("access_token", token=None))["err_code"] == 1001
    bad = await api.call("access_token", token=None, unionid="short")
    assert bad == {"err_code": 1001, "err_msg": "无效的 unionid", "err_param": "unionid"}
    unknown = await api.call("access_token", token=None, unionid="A" * 32)
    assert unknown["err_code"] == 1002 and unknown["err_msg"] == "没有找到 unionid 指定的帐号"
    user = await api.services.catalogue.accounts.add("teacher", "password1", is_admin=False)
    refused = await api.call("access_token", token=None, unionid=user.credential)
    assert refused["err_code"] == 1003
    assert refused["err_msg"] == "unionid 对应的帐号没有接口访问权限"


async def test_every_endpoint_but_two_needs_a_token(api):
    for name, endpoint in ENDPOINTS.items():
        answer = await api.call(name, token=None)
        if name in ("version", "access_token"):
            assert not endpoint.needs_token
            continue
        assert answer == {"err_code": 1004, "err_msg": "没有凭证, 请确认参数", "err_param": "token"}
        path_answer = await api.call_path(name, token=None)
        assert path_answer["err_code"] == 1004


async def test_malformed_and_forged_tokens_are_1006(api):
    fields, _, signature = api.token.rpartition(".")
    forged_fields = fields.split(".")
    forged_fields[0] = "2"  # claim another account with the same signature
    other_key = Signer(b"k" * 32).sign("api-token", *fields.split("."))
    wrong_purpose = api.services.signer.sign("play-ticket", *fields.split("."))
    for token in (
        "garbage",
        api.token + "x",
        ".".join(forged_fields) + "." + signature,
        other_key,
        wrong_purpose,
        "../../etc/passwd",
        "' OR 1=1 --",
        "x" * 5000,
    ):
        answer = await api.call("list_camera", token=token)
        assert answer["err_code"] == 1006, token
        assert answer["err_msg"] == "解析 token 失败"


async def test_token_expires_after_its_ttl(api):
    assert (await api.call("list_camera"))["err_code"] == 0
    api.clock.advance(7199)
    assert (await api.call("list_camera"))["err_code"] == 0
    api.clock.advance(1)
    expired = await api.call("list_camera")
    assert expired["err_code"] == 1007 and expired["err_msg"] == "凭证已过期, 请重新获取"
    fresh = await api.call("access_token", token=None, unionid=api.credential)
    assert (await api.call("list_camera", token=fresh["token"]))["err_code"] == 0


async def test_rotation_voids_old_tokens_and_credential(api):
    new_credential = await api.services.catalogue.accounts.rotate("admin")
    assert (await api.call("list_camera"))["err_code"] == 1007
    old = await api.call("access_token", token=None, unionid=api.credential)
    assert old["err_code"] == 1002
    fresh = await api.call("access_token", token=None, unionid=new_credential)
    assert (await api.call("list_camera", token=fresh["token"]))["err_code"] == 0


async def test_token_of_an_account_no_longer_admin_is_refused(api):
    await api.services.catalogue.accounts.set_admin("admin", False)
    assert (await api.call("list_camera"))["err_code"] == 1003
    await api.services.catalogue.accounts.set_admin("admin", True)
    assert (await api.call("list_camera"))["err_code"] == 0


async def test_both_url_forms_are_equivalent(api):
    gather_id = await api.gatherer()
    camera_id = await api.camera(gather_id, "二班")
    by_query = await api.call("get_camera_status", camera_id=camera_id)
    by_path = await api.call_path("get_camera_status", camera_id=camera_id)
    assert by_query == by_path == {
        "err_code": 0, "err_msg": "OK", "camera_id": camera_id, "status": 0,
        "recording": 0, "spool_bytes": 0, "upload_error": "",
        "record_error": "",
    }
    # The token itself travels in the path, and values with '/' survive percent-encoding.
    added = await api.call_path(
        "add_camera", camera_name="三班/A", gather_id=gather_id, stream_prop=1,
        stream_mp4="/srv/video/a b.mp4",
    )
    assert added["err_code"] == 0
    row = await api.services.catalogue.cameras.get(added["camera_id"])
    assert row["camera_name"] == "三班/A" and row["stream_mp4"] == "/srv/video/a b.mp4"
    # Mixed: some parameters in the path, the rest in the query.
    response = await api.client.get(
        f"/api/v1/get_camera_status/camera_id/{camera_id}", params={"token": api.token}
    )
    assert (await response.json())["status"] == 0


async def test_secrets_never_reach_the_access_log(api, caplog):
    import logging

    caplog.set_level(logging.INFO)
    await api.call("access_token", token=None, unionid=api.credential)
    await api.call_path("list_camera")
    await api.call("list_camera")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/api/v1/list_camera" in logged
    assert api.credential not in logged
    assert api.token not in logged



def test_remembered_signatures_still_answer_only_for_their_purpose_and_shape():
    signer = Signer(b"s" * 32)
    signed = signer.sign("api-token", 1, 2, "abc")
    assert signer.verify("api-token", signed, 3) == ["1", "2", "abc"]
    assert signer.verify("api-token", signed, 3) == ["1", "2", "abc"]  # now from memory
    assert signer.verify("play-ticket", signed, 3) is None
    assert signer.verify("api-token", signed, 2) is None
    assert signer.verify("api-token", signed[:-1] + ("A" if signed[-1] != "A" else "B"), 3) is None
    for number in range(5000):  # the memory stays bounded and keeps answering right
        assert signer.verify("api-token", signer.sign("api-token", number), 1) == [str(number)]
    assert signer.verify("api-token", signed, 3) == ["1", "2", "abc"]
    assert len(signer._verified) <= 4096
