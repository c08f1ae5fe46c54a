"""What redacting the logs costs per line: the new access log and filter against the old ones.

    .venv/bin/python bench/redaction.py [--rounds 9] [--number 20000]

Each case logs one line through a real ``logging`` handler (the relay's format, written to
/dev/null), in turn, round after round, and the table shows the median CPU time per line (process
time, so other processes on a shared machine do not count) and each new case's ratio to its
baseline. Baselines: the access logger and URL redactor as of commit ff2d7f4 (copied here: a URL
redacted with two patterns, no filter), and the same handler without the filter.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import time
import timeit
from collections.abc import Callable

from aiohttp.abc import AbstractAccessLogger
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import BaseRequest, Response, StreamResponse

from relay import logs

_OLD_KEYS = ("token", "unionid", "ticket", "device_pass", "password", "key")
_OLD_QUERY = re.compile(r"(?<=[?&;])(" + "|".join(_OLD_KEYS) + r")=[^&;#]*", re.I)
_OLD_PATH = re.compile(r"(?<=/)(" + "|".join(_OLD_KEYS) + r")/[^/?#]*", re.I)


def old_redact(url: str) -> str:
    path, sep, query = url.partition("?")
    path = _OLD_PATH.sub(r"\1/***", path)
    if sep:
        query = _OLD_QUERY.sub(r"\1=***", "&" + query)[1:]
    return path + sep + query


class OldAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info("%s %s %s %d %.1fms", request.remote, request.method,
                         old_redact(request.raw_path), response.status, time * 1000)


def handler_logger(name: str, filtered: bool) -> logging.Logger:
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as we do)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if filtered:
        handler.addFilter(logs.RedactingFilter())
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--number", type=int, default=20000, help="lines per case per round")
    args = parser.parse_args()

    plain, filtered = handler_logger("bench.plain", False), handler_logger("bench.filtered", True)
    url = ("/api/v1/list_camera?token=1.1796171589.bc8576d163e88f68."
           "kIEiJe0WCbhvhMO2SaOwlonkQg0ZbTBlRJeEUDfFZy4&cur=1&per=10")
    request, response = make_mocked_request("GET", url), Response(status=200)
    old_access, new_access = OldAccessLogger(plain, ""), logs.AccessLogger(filtered, "")
    # (name, baseline name or None, what one line costs)
    cases: list[tuple[str, str | None, Callable[[], object]]] = [
        ("access line, old access logger", None, lambda: old_access.log(request, response, 0.0012)),
        ("access line, new access logger + filter", "access line, old access logger",
         lambda: new_access.log(request, response, 0.0012)),
        ("app line, no filter", None, lambda: plain.info("camera %d (gatherer %d) is online", 3, 1)),
        ("app line, filter", "app line, no filter",
         lambda: filtered.info("camera %d (gatherer %d) is online", 3, 1)),
        ("app line with a URL and token, no filter", None,
         lambda: plain.info("internal error on %s %s", "GET", url)),
        ("app line with a URL and token, filter", "app line with a URL and token, no filter",
         lambda: filtered.info("internal error on %s %s", "GET", url)),
        ("old URL redaction alone", None, lambda: old_redact(url)),
        ("redact_url alone (access log)", "old URL redaction alone", lambda: logs.redact_url(url)),
        ("redact alone (the filter's)", "old URL redaction alone", lambda: logs.redact(url)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.rounds):
        for name, _, line in cases:
            timer = timeit.Timer(line, timer=time.process_time)
            times[name].append(timer.timeit(number=args.number) / args.number * 1e6)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'case':45s} {'µs/line':>8s} {'vs baseline':>12s}")
    for name, baseline, _ in cases:
        ratio = f"{medians[name] / medians[baseline]:.2f}x" if baseline else "baseline"
        print(f"{name:45s} {medians[name]:8.2f} {ratio:>12s}")


if __name__ == "__main__":
    main()
