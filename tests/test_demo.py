"""The README's run command, ``relay demo``: server, demo agent, demo camera, and a recording a
newcomer can open within about a minute of the start."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from conftest import RELAY, eventually, free_port, wait_for_http
from live_system import no_tracebacks


def test_the_demo_records_a_lesson_that_plays(tmp_path: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([*RELAY, "demo", "--data", str(tmp_path / "data"), "--listen",
                                f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ})
    try:
        wait_for_http(base + "/healthz", process, timeout=60)
        os.set_blocking(process.stdout.fileno(), False)  # type: ignore[union-attr]
        banner = eventually(lambda: (process.stdout.read() or b"").decode(), timeout=10)  # type: ignore[union-attr]
        credential = re.search(r"API credential:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]

        def api(name: str, **params: Any) -> dict[str, Any]:
            with urllib.request.urlopen(f"{base}/api/v1/{name}?{urlencode(params)}",
                                        timeout=30) as response:
                answer = json.load(response)
            assert answer["err_code"] == 0, answer
            return answer

        token = api("access_token", unionid=credential)["token"]
        [camera] = eventually(lambda: api("list_camera", token=token)["data"], timeout=60)
        [course] = api("list_course", token=token, camera_id=camera["camera_id"])["data"]
        assert course["elapse_sec"] >= 60
        eventually(lambda: api("get_camera_status", token=token,
                               camera_id=camera["camera_id"])["recording"] == 1, timeout=30)
        # One-minute slices: the first recording is listed a little over a minute after the start.
        [record] = eventually(lambda: api("list_record", token=token)["data"], timeout=120,
                              interval=1)
        assert 55 <= record["duration"] <= 65 and record["camera_id"] == camera["camera_id"]
        play_url = api("play_record", token=token, record_id=record["record_id"])["play_url"]
        with urllib.request.urlopen(play_url, timeout=30) as page:
            assert page.status == 200 and b"<video" in page.read()
        # Where to click, printed once the demo is up (after the first start's password).
        banner += (process.stdout.read() or b"").decode()  # type: ignore[union-attr]
        password = re.search(r"account: admin\s+password: (\S+)", banner).group(1)  # type: ignore[union-attr]
        data = (tmp_path / "data").resolve()
        assert banner.index("password: ") < banner.index("The demo is up.")
        assert f"{base}/admin   account: admin" in banner.split("The demo is up.")[1]
        assert f"relay user credential admin --data {data}" in banner
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log = process.stderr.read().decode()  # type: ignore[union-attr]
    assert process.returncode == 0, log[-2000:]
    assert f"demo up: console {base}/admin" in log and password not in log
    assert credential not in log
    agent_log = "\n".join(path.read_text(errors="replace")
                          for path in (tmp_path / "data").rglob("*.log"))
    no_tracebacks({"demo": log, "agent": agent_log})
