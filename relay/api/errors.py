"""API error codes and the specification's own messages for them."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    BAD_UNIONID = 1001
    UNKNOWN_UNIONID = 1002
    NOT_ADMIN = 1003
    NO_TOKEN = 1004
    TOKEN_ISSUE_FAILED = 1005
    BAD_TOKEN = 1006
    TOKEN_EXPIRED = 1007
    NO_NAME = 1008
    BAD_PARAM = 1009
    NO_ID = 1010
    BAD_TIME = 1011
    OVERLAP = 1012
    CROSS_DAY = 1013


MESSAGES: dict[int, str] = {
    Code.OK: "OK",
    Code.BAD_UNIONID: "无效的 unionid",
    Code.UNKNOWN_UNIONID: "没有找到 unionid 指定的帐号",
    Code.NOT_ADMIN: "unionid 对应的帐号没有接口访问权限",
    Code.NO_TOKEN: "没有凭证, 请确认参数",
    Code.TOKEN_ISSUE_FAILED: "生成 token 过程中发生错误",
    Code.BAD_TOKEN: "解析 token 失败",
    Code.TOKEN_EXPIRED: "凭证已过期, 请重新获取",
    Code.NO_NAME: "没有名称, 请确认参数",
    # 1009 is ours: the spec has no code for a parameter that is present but unusable.
    Code.BAD_PARAM: "参数格式不正确",
    Code.NO_ID: "没有编号, 请确认参数",
    Code.BAD_TIME: "输入日期格式不正确",
    Code.OVERLAP: "输入时间与已有时间发生重叠",
    Code.CROSS_DAY: "不支持跨天任务",
}


class ApiError(Exception):
    """A refusal the client sees as ``err_code``/``err_msg``.

    ``param`` names the offending parameter (answered as ``err_param``) so a client can tell which
    of several values was wrong without parsing ``err_msg``; ``suffix`` is appended to the message
    (1012 names the interval it overlaps).
    """

    def __init__(self, code: Code, param: str | None = None, suffix: str = "") -> None:
        super().__init__(f"{int(code)} {param or ''} {suffix}".strip())
        self.code = code
        self.param = param
        self.suffix = suffix

    def body(self) -> dict[str, object]:
        answer: dict[str, object] = {
            "err_code": int(self.code),
            "err_msg": MESSAGES[self.code] + self.suffix,
        }
        if self.param:
            answer["err_param"] = self.param
        return answer
