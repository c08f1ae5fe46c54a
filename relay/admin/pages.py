"""The /admin pages as HTML strings; every value is escaped here, nowhere else."""

from __future__ import annotations

from html import escape

_STYLE = """
body { font: 15px system-ui, sans-serif; max-width: 44rem; margin: 3rem auto; padding: 0 1rem;
  color: #222; }
h1 { font-size: 1.4rem; } code { background: #f3f3f3; padding: 2px 6px; border-radius: 4px;
  word-break: break-all; } pre { background: #f3f3f3; padding: .75rem; white-space: pre-wrap;
  word-break: break-all; } .error { color: #b00020; } .note { color: #0a6b2c; }
label { display: block; margin: .6rem 0 .2rem; } input[type=text], input[type=password] {
  width: 18rem; padding: .35rem; } button { margin-top: .8rem; padding: .4rem 1rem; }
form.inline { display: inline; }
"""


def _layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=zh><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)} · 云监控</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def login_page(csrf: str, error: str = "") -> str:
    message = f"<p class=error id=error>{escape(error)}</p>" if error else ""
    return _layout(
        "登录 Sign in",
        "<h1>云监控后台 · Sign in</h1>"
        f"{message}"
        "<form method=post action=/admin/login>"
        f"<input type=hidden name=csrf value='{escape(csrf)}'>"
        "<label for=name>帐号 Account</label>"
        "<input type=text id=name name=name autocomplete=username required maxlength=64>"
        "<label for=password>密码 Password</label>"
        "<input type=password id=password name=password autocomplete=current-password required>"
        "<br><button type=submit id=sign-in>登录 Sign in</button></form>",
    )


def dashboard_page(
    name: str, is_admin: bool, credential: str, base_url: str, csrf: str, note: str = ""
) -> str:
    notice = f"<p class=note id=note>{escape(note)}</p>" if note else ""
    logout = (
        "<form class=inline method=post action=/admin/logout>"
        f"<input type=hidden name=csrf value='{escape(csrf)}'>"
        "<button type=submit id=sign-out>退出 Sign out</button></form>"
    )
    if not is_admin:
        return _layout(
            "后台 Admin",
            f"<h1>云监控后台</h1><p>已登录 Signed in as <b>{escape(name)}</b>.</p>"
            "<p id=no-api>非管理员帐号不开放 API 接口 · API access is for administrators only; "
            "ask an administrator if you need it.</p>"
            f"{logout}",
        )
    example = f"curl '{base_url}/api/v1/access_token?unionid={credential}'"
    return _layout(
        "后台 Admin",
        f"<h1>云监控后台</h1><p>已登录 Signed in as <b>{escape(name)}</b> (administrator).</p>"
        f"{notice}"
        "<h2>API 凭证 · API credential (unionid)</h2>"
        f"<p><code id=credential>{escape(credential)}</code></p>"
        "<p>Exchange it for an access token (valid 2 hours):</p>"
        f"<pre id=example>{escape(example)}</pre>"
        "<form method=post action=/admin/rotate>"
        f"<input type=hidden name=csrf value='{escape(csrf)}'>"
        "<button type=submit id=rotate>更换凭证 Rotate credential</button></form>"
        "<p>Rotating issues a new credential; the old one and every token issued for it stop "
        "working at once.</p>"
        f"{logout}",
    )


def message_page(title: str, text: str) -> str:
    return _layout(title, f"<h1>{escape(title)}</h1><p class=error>{escape(text)}</p>"
                          "<p><a href=/admin>Back</a></p>")
