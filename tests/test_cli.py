"""The ``relay`` command as a newcomer uses it: real processes, real data dirs.

A first start and the user commands beside a running relay (``BOTH``) run on the data dir's
SQLite file and on a fresh PostgreSQL database (``RELAY_DATABASE_URL``); the rest are about the
data dir and the settings themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RELAY, eventually, postgres_database, start_relay, stop_relay

#: A test of the catalogue through the command: on SQLite and on PostgreSQL.
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def backend(request) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The commands' environment: RELAY_DATABASE_URL of a fresh PostgreSQL database for the
    postgresql run of a ``BOTH`` test (on a loop of its own, kept open for the test: a loop that
    ends would finalize the context manager at once), nothing (the SQLite file) otherwise."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield {}
        return
    with postgres_database() as url:
        yield {"RELAY_DATABASE_URL": url}


def relay(*args: str, env: dict[str, str] | None = None, check: bool = True):
    result = subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@BOTH
def test_first_start_prints_admin_and_credential_once(tmp_path: Path, backend: dict[str, str]):
    data = tmp_path / "data"
    first = start_relay(data, env=backend)
    try:
        assert first.password and first.credential
        assert f"curl '{first.base_url}/api/v1/access_token?unionid={first.credential}'" in (
            first.banner)
        token = get_json(f"{first.base_url}/api/v1/access_token?unionid={first.credential}")
        assert token["err_code"] == 0
        listing = get_json(f"{first.base_url}/api/v1/list_camera/token/{token['token']}")
        assert listing["err_code"] == 0
    finally:
        log = stop_relay(first)
    assert first.credential not in log and first.password not in log
    assert (data / "relay.sqlite3").exists() == (not backend)  # the catalogue is where it says
    second = start_relay(data, env=backend)
    try:
        assert second.banner == ""  # nothing printed again: the account exists
        token = get_json(f"{second.base_url}/api/v1/access_token?unionid={first.credential}")
        assert token["err_code"] == 0
    finally:
        restart_log = stop_relay(second)
    # The restart logs how to get the credential (or a new password) again, never a secret.
    assert f"`relay user credential admin --data {data.resolve()}`" in restart_log
    assert f"`relay user password admin --data {data.resolve()}`" in restart_log
    assert first.credential not in restart_log and first.password not in restart_log


def make_catalogue(data: str, env: dict[str, str] | None = None) -> None:
    """What a first ``relay serve`` leaves behind: a catalogue (the commands refuse a data dir
    without one)."""
    stop_relay(start_relay(Path(data), env=env))


def test_management_commands_refuse_a_data_dir_without_a_catalogue(tmp_path: Path):
    empty = tmp_path / "elsewhere"
    for command in (("user", "list"), ("user", "credential", "admin"), ("agent-key", "list"),
                    ("agent-key", "add", "site"), ("user", "add", "x")):
        result = relay(*command, "--data", str(empty), env={"RELAY_PASSWORD": "long enough"},
                       check=False)
        assert result.returncode == 1, command
        assert f"no catalogue at {empty.resolve() / 'relay.sqlite3'}" in result.stderr, result.stderr
        assert "--data" in result.stderr and "Traceback" not in result.stderr
    assert not empty.exists()  # nothing was made there
    # Run from another folder without --data: the message names ./data, resolved.
    result = subprocess.run([*RELAY, "user", "list"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env={k: v for k, v in os.environ.items()
                                               if k != "RELAY_DATA"})
    assert result.returncode == 1 and str(tmp_path / "data") in result.stderr
    assert not (tmp_path / "data").exists()


def test_user_commands(tmp_path: Path, backend: dict[str, str]):  # (SQLite: CI's time)
    data = str(tmp_path / "data")

    def cli(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        return relay(*args, env={**backend, **(env or {})})

    make_catalogue(data, backend)
    cli("user", "add", "boss", "--admin", "--data", data, env={"RELAY_PASSWORD": "long enough"})
    cli("user", "add", "teacher", env={"RELAY_PASSWORD": "long enough", "RELAY_DATA": data})
    credential = cli("user", "credential", "boss", "--data", data).stdout.strip()
    assert len(credential) == 32
    listing = cli("user", "list", "--data", data).stdout
    assert "boss\tadmin" in listing and "teacher\tuser" in listing

    server = start_relay(Path(data), env=backend)
    try:
        assert server.banner == ""  # the first start printed its banner already
        base = server.base_url
        token = get_json(f"{base}/api/v1/access_token?unionid={credential}")["token"]
        assert get_json(f"{base}/api/v1/list_gather?token={token}")["err_code"] == 0
        teacher = cli("user", "credential", "teacher", "--data", data).stdout.strip()
        assert get_json(f"{base}/api/v1/access_token?unionid={teacher}")["err_code"] == 1003

        rotated = cli("user", "rotate", "boss", "--data", data).stdout.strip()
        assert rotated != credential and len(rotated) == 32
        assert cli("user", "credential", "boss", "--data", data).stdout.strip() == rotated
        assert get_json(f"{base}/api/v1/access_token?unionid={credential}")["err_code"] == 1002
        # Token checks see another process's change within TOKEN_CHECK_TTL (1 s).
        eventually(lambda: get_json(f"{base}/api/v1/list_gather?token={token}")["err_code"] == 1007,
                   timeout=3)
        fresh = get_json(f"{base}/api/v1/access_token?unionid={rotated}")["token"]
        cli("user", "admin", "boss", "off", "--data", data)
        eventually(lambda: get_json(f"{base}/api/v1/list_gather?token={fresh}")["err_code"] == 1003,
                   timeout=3)
    finally:
        stop_relay(server)


def test_user_command_errors_are_clear(tmp_path: Path):
    data = str(tmp_path / "data")
    make_catalogue(data)
    short = relay("user", "add", "x", "--data", data, env={"RELAY_PASSWORD": "short"},
                  check=False)
    assert short.returncode == 1 and "at least 8" in short.stderr
    no_password = relay("user", "add", "x", "--data", data, check=False,
                        env={"RELAY_PASSWORD": ""} if False else None)
    assert no_password.returncode == 1 and "RELAY_PASSWORD" in no_password.stderr
    missing = relay("user", "credential", "ghost", "--data", data, check=False)
    assert missing.returncode == 1 and "ghost" in missing.stderr
    relay("user", "add", "dup", "--data", data, env={"RELAY_PASSWORD": "long enough"})
    again = relay("user", "add", "dup", "--data", data, env={"RELAY_PASSWORD": "long enough"},
                  check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad_name = relay("user", "add", "a b", "--data", data, env={"RELAY_PASSWORD": "long enough"},
                     check=False)
    assert bad_name.returncode == 1 and "Traceback" not in bad_name.stderr


def test_settings_from_toml_env_and_flags(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "relay.toml").write_text('token_ttl = 60\npublic_url = "http://cam.example:9"\n')
    server = start_relay(data, env={"RELAY_STORAGE_ADDR": "http://files.example"})
    try:
        token = get_json(f"{server.base_url}/api/v1/access_token?unionid={server.credential}")
        assert token["expires"] == 60
        assert "http://cam.example:9/admin" in server.banner
        listing = get_json(f"{server.base_url}/api/v1/list_camera?token={token['token']}")
        assert listing["storage_addr"] == "http://files.example"
    finally:
        stop_relay(server)
    bad = relay("serve", "--data", str(data), "--listen", "nowhere", check=False)
    assert bad.returncode == 1 and "listen" in bad.stderr and "Traceback" not in bad.stderr
    (data / "relay.toml").write_text("colour = 'red'\n")
    unknown = relay("serve", "--data", str(data), check=False)
    assert unknown.returncode == 1 and "colour" in unknown.stderr


def test_every_setting_is_described_in_serve_and_demo_help():
    """Each Settings field has a help text, its flag, its variable and its default (0 and empty
    too) in ``relay serve --help`` and ``relay demo --help``."""
    import dataclasses

    from relay.config import HELP, Settings

    assert set(HELP) == {field.name for field in dataclasses.fields(Settings)}
    defaults = Settings()
    for command in ("serve", "demo"):
        text = " ".join(relay(command, "--help").stdout.split())  # as argparse wraps it
        for field in dataclasses.fields(Settings):
            flag = "--data" if field.name == "data" else f"--{field.name.replace('_', '-')}"
            value = getattr(defaults, field.name)
            shown = {None: "unset", "": "empty"}.get(value, str(value))  # type: ignore[call-overload]
            help_text = " ".join(HELP[field.name].split())
            entry = f"{help_text} (RELAY_{field.name.upper()}; default: {shown})"
            assert f"{flag} {field.name.upper()} {entry}" in text, (command, flag, entry)
        assert "default: 0)" in text and "RELAY_RECORD_KEEP_DAYS; default: 0" in text


def test_cluster_settings_are_checked(tmp_path: Path):
    """A cluster node's settings: a Redis URL (never echoed: it may hold a password), a prefix of
    plain characters, and a URL the other nodes can reach when it listens on every address."""
    from relay.config import ConfigError, load_settings

    secret = "redis://:hunter2-secret@cache:6379/0"
    assert load_settings({"redis_url": secret}, environ={}).redis_url == secret
    with pytest.raises(ConfigError) as bad:
        load_settings({"redis_url": "http://:hunter2-secret@cache"}, environ={})
    assert "redis_url" in str(bad.value) and "hunter2" not in str(bad.value)
    with pytest.raises(ConfigError, match="node_url"):
        load_settings({"redis_url": "redis://cache", "listen": "0.0.0.0:8080"}, environ={})
    assert load_settings({"redis_url": "redis://cache", "listen": "0.0.0.0:8080",
                          "node_url": "http://10.0.0.7:8080/"}, environ={}).own_url == \
        "http://10.0.0.7:8080"
    with pytest.raises(ConfigError, match="redis_prefix"):
        load_settings({"redis_url": "redis://cache", "redis_prefix": "a:b*"}, environ={})
    shown = relay("serve", "--data", str(tmp_path / "d"), "--redis-url", "ftp://:hunter2@x",
                  check=False)
    assert shown.returncode == 1 and "hunter2" not in shown.stderr + shown.stdout
    assert "Traceback" not in shown.stderr
