"""What the server's log lines carry, and how they can be written.

Every line about a connection starts with the connection's label (the
client's label and its address once it has set one, else its address)
and passes the facts it states as *fields*: attributes of the log record
named in `FIELDS` (``extra=fields(peer=..., reason=...)``). A plain
``<logfile>`` shows the message; `JSONFormatter` writes one JSON object a
line, for log shippers::

    <eventlog>
      <logfile>
        path var/zeo/zeo.json
        formatter zeo.server.eventlog.JSONFormatter
      </logfile>
    </eventlog>

`RefusalLog` keeps a port scan or a flood of bad handshakes from filling
the log: at most ``max-refusal-log-lines`` refusal lines a minute, then
one line saying how many more there were.

`echo_to_terminal` shows the log on the terminal too when the server runs
in the foreground (``zeoctl fg``), and `log_destinations` says where it
goes, for the startup line.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Callable

__all__ = ["FIELDS", "JSONFormatter", "RefusalLog", "fields", "REFUSAL_LOG_INTERVAL",
           "TEXT_FORMAT", "echo_to_terminal", "lock_times", "log_destinations"]

#: Fields a record may carry (see `fields`); a JSON line has each one the
#: record has, after ``time``, ``level``, ``logger`` and ``message``.
FIELDS = ("peer", "label", "tls", "protocol", "storage", "read_only", "reason",
          "duration", "bytes_in", "bytes_out", "waited", "held", "size_before",
          "size_after", "count")

#: Seconds over which `RefusalLog` counts its lines.
REFUSAL_LOG_INTERVAL = 60.0


def fields(**values: Any) -> dict[str, Any]:
    """``extra`` for a log call: *values*, whose names must be in `FIELDS`
    (a record attribute of another name could clash with logging's own)."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields: {sorted(unknown)}")
    return values


class JSONFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, the record's `FIELDS`, and ``exception``
    (the traceback) when there is one.

    Usable as a ``<logfile>`` ``formatter``: ZConfig passes its ``format``,
    ``dateformat`` and ``style``, which do not apply and are ignored. (A
    JSON library such as python-json-logger picks its keys from that
    format, whose ZConfig default starts with ``------``; a fixed set of
    keys with the standard ``json`` module needs no dependency.)
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None,
                 style: str = "%", validate: bool = True, **_: Any) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(
                record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        attributes = record.__dict__
        for name in FIELDS:
            if name in attributes:
                line[name] = attributes[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=repr, ensure_ascii=False)


class RefusalLog:
    """Logs at most *max_lines* refusals per `REFUSAL_LOG_INTERVAL`
    seconds; past that it counts them, and when the interval ends logs one
    line: "N more refused connections were not logged" (*what* names them:
    the server keeps one for refused connections, one for failed calls).

    *call_later(delay, function)* runs the summary (an event loop's);
    *clock* is monotonic seconds.
    """

    def __init__(self, logger: logging.Logger, max_lines: int,
                 clock: Callable[[], float],
                 call_later: Callable[[float, Callable[[], None]], Any],
                 interval: float = REFUSAL_LOG_INTERVAL,
                 what: str = "refused connections") -> None:
        self._logger = logger
        self._what = what
        self._max_lines = max_lines
        self._clock = clock
        self._call_later = call_later
        self._interval = interval
        self._started = -interval
        self._lines = 0
        self._suppressed = 0
        self._timer: Any = None

    def warning(self, message: str, *args: Any, **extra: Any) -> None:
        """Log a refusal (WARNING), unless this interval had its lines."""
        now = self._clock()
        if now - self._started >= self._interval and self._timer is None:
            self._started, self._lines = now, 0
        if self._lines < self._max_lines:
            self._lines += 1
            self._logger.warning(message, *args, extra=fields(**extra))
            return
        self._suppressed += 1
        if self._timer is None:
            delay = max(0.0, self._started + self._interval - now)
            self._timer = self._call_later(delay, self._summarize)

    def _summarize(self) -> None:
        self._timer = None
        count, self._suppressed = self._suppressed, 0
        if count:
            self._logger.warning(
                "%d more %s in the last %g seconds were not logged"
                " (max-refusal-log-lines %d)", count, self._what, self._interval,
                self._max_lines, extra=fields(count=count))
        # The next interval starts now, with this summary as its first line.
        self._started, self._lines = self._clock(), 1

    def close(self) -> None:
        """Log the count so far (the server is stopping)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self._summarize()


def lock_times(asked: float, granted: float | None, now: float) -> tuple[float, float]:
    """Seconds a transaction waited for its commit lock and held it, for
    the slow-commit line: it asked at *asked*, got it at *granted* (None:
    never), and ends at *now*."""
    if granted is None:
        return now - asked, 0.0
    return granted - asked, now - granted


#: How lines look on a terminal, and without an ``<eventlog>``.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_destinations(logger: logging.Logger | None = None) -> list[str]:
    """Where *logger*'s (default: the root logger's) lines go: file paths,
    ``standard error``, ``standard output``, or a handler's class name."""
    where = []
    for handler in (logger or logging.getLogger()).handlers:
        path = getattr(handler, "baseFilename", None)
        stream = getattr(handler, "stream", None)
        if path:
            where.append(str(path))
        elif stream is sys.stderr or stream is sys.__stderr__:
            where.append("standard error")
        elif stream is sys.stdout or stream is sys.__stdout__:
            where.append("standard output")
        else:
            where.append(type(handler).__name__)
    return where


def echo_to_terminal(stream: Any = None) -> bool:
    """Also show the root logger's lines on *stream* (default: standard
    error) if it is a terminal that no handler writes to yet, as when
    ``zeoctl fg`` runs the server; True if a handler was added."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return False
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "stream", None) is stream:
            return False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    return True
