"""Judging a ``ruok`` status answer the way Nagios expects.

Output and exit codes follow the ``zeo-nagios`` plugin of the reference
ZEO, so existing service definitions and graphs keep working:

* exit 0 (OK), 1 (WARNING: no storages, or an empty storage, or a warning
  threshold passed), 2 (CRITICAL: no status, or a critical threshold
  passed);
* the first line is the worst message (``OK`` when there is none, ``Empty
  storage '1'`` for an empty storage), the other messages follow, then one
  detail line per storage;
* with metrics (``-m``) the performance data is ``active_txns``,
  ``connections`` and ``waiting`` per storage, plus, with a status file
  (``-s``), the rates of ``aborts commits conflicts conflicts_resolved
  loads stores`` per time unit (``-u``) since the previous run. Storage
  ``'1'``'s metrics are bare names, the others' are ``NAME:metric`` (quoted
  when the name has a space). The first metric follows ``|`` on the first
  line, the others come last, after ``| ``, one per line.

Thresholds (ours; the reference has none) are "more than": a storage
whose commit lock has been held more than ``lock_*`` seconds, with more
than ``clients_*`` connections, or more than ``waiting_*`` transactions
queued for the commit lock, raises the level. Metrics with a threshold
carry it Nagios-style (``connections=12;10;20``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = ["OK", "WARNING", "CRITICAL", "UNKNOWN", "NO_TRANSACTION", "LEVEL_METRICS",
           "RATE_METRICS", "TIME_UNITS", "Thresholds", "assess", "metric",
           "level_metrics", "rate_metrics", "render"]

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
#: The ``last-transaction`` of a storage without transactions.
NO_TRANSACTION = "0" * 16
#: Gauges reported as they are.
LEVEL_METRICS = ("active_txns", "connections", "waiting")
#: Counters reported as rates between two runs.
RATE_METRICS = ("aborts", "commits", "conflicts", "conflicts_resolved", "loads", "stores")
#: Seconds per time unit of the rates.
TIME_UNITS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}


@dataclass(frozen=True)
class Thresholds:
    """Warning and critical limits; None: no limit."""

    lock_warning: float | None = None
    lock_critical: float | None = None
    clients_warning: float | None = None
    clients_critical: float | None = None
    waiting_warning: float | None = None
    waiting_critical: float | None = None

    def for_metric(self, name: str) -> tuple[float | None, float | None]:
        prefix = {"connections": "clients", "waiting": "waiting"}.get(name)
        if prefix is None:
            return None, None
        return getattr(self, f"{prefix}_warning"), getattr(self, f"{prefix}_critical")


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _text(value: float) -> str:
    return f"{value:g}"


def assess(answer: dict[str, Any], thresholds: Thresholds, now: float
           ) -> tuple[int, list[str], list[str]]:
    """``(level, messages, details)`` for a status *answer* at epoch *now*."""
    if not answer:
        return WARNING, ["No storages"], []
    found: list[tuple[int, str]] = []
    details = []
    for storage_id, data in sorted(answer.items()):
        level = OK
        empty = data.get("last-transaction") == NO_TRANSACTION
        if empty:
            found.append((WARNING, f"Empty storage {storage_id!r:.200}"))
            level = WARNING
        lock_time = data.get("lock_time")
        held = max(0.0, now - lock_time) if isinstance(lock_time, (int, float)) else None
        checks = (("lock", held, "commit lock held for {:.2f} seconds"),
                  ("clients", _number(data.get("connections")), "{:g} connections"),
                  ("waiting", _number(data.get("waiting")),
                   "{:g} transactions waiting for the commit lock"))
        for prefix, value, what in checks:
            if value is None:
                continue
            for limit_level, limit in ((CRITICAL, getattr(thresholds, f"{prefix}_critical")),
                                       (WARNING, getattr(thresholds, f"{prefix}_warning"))):
                if limit is not None and value > limit:
                    found.append((limit_level,
                                  f"{NAMES[limit_level]}: storage {storage_id!r:.200}: "
                                  f"{what.format(value)}"
                                  f" (more than {_text(limit)})"))
                    level = max(level, limit_level)
                    break
        holder = data.get("lock_holder")
        lock = ("commit lock free" if held is None else
                f"commit lock held for {held:.2f} seconds"
                f"{f' by {holder!s:.200}' if holder else ''}")
        details.append(
            f"{NAMES[level]}: storage {storage_id!s:.200}: {data.get('connections')!s:.20}"
            f" connections, {data.get('active_txns')!s:.20} active transactions,"
            f" {data.get('waiting')!s:.20} waiting for the lock, {lock},"
            f" last transaction {data.get('last-transaction')!s:.20}"
            f"{' (empty storage)' if empty else ''}")
    found.sort(key=lambda item: -item[0])
    level = max((item[0] for item in found), default=OK)
    return level, [message for _, message in found] or ["OK"], details


def metric(storage_id: str, name: str, value: Any, limits: tuple[Any, Any] = (None, None)
           ) -> str:
    """One performance datum, named as the reference plugin names it."""
    if storage_id == "1":
        label = name
    elif " " in storage_id:
        label = f"'{storage_id}:{name}'"
    else:
        label = f"{storage_id}:{name}"
    warning, critical = limits
    suffix = "" if warning is None and critical is None else \
        f";{'' if warning is None else _text(warning)};{'' if critical is None else _text(critical)}"
    return f"{label}={value!s:.40}{suffix}"


def level_metrics(answer: dict[str, Any], thresholds: Thresholds) -> list[str]:
    return [metric(storage_id, name, data.get(name), thresholds.for_metric(name))
            for storage_id, data in sorted(answer.items()) for name in LEVEL_METRICS]


def rate_metrics(answer: dict[str, Any], status_path: str, unit: str, now: float) -> list[str]:
    """Rates since the run that wrote *status_path*, then save *answer*
    there for the next run. A missing, unreadable or future file gives no
    rates; neither does a counter that went down (a restarted server)."""
    metrics = []
    try:
        elapsed = now - os.stat(status_path).st_mtime
        with open(status_path, encoding="utf-8") as file:
            previous = json.load(file) if elapsed > 0 else {}
    except (OSError, ValueError):
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    if previous:
        per = elapsed / TIME_UNITS[unit]
        for storage_id, data in sorted(answer.items()):
            old = previous.get(storage_id)
            if not isinstance(old, dict):
                continue
            for name in RATE_METRICS:
                new_value, old_value = data.get(name), old.get(name)
                if (isinstance(new_value, (int, float)) and isinstance(old_value, (int, float))
                        and new_value >= old_value):
                    metrics.append(metric(storage_id, name, (new_value - old_value) / per))
    directory = os.path.dirname(os.path.abspath(status_path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".zeo-status-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(answer, file)
        os.replace(temporary, status_path)
    except BaseException:
        os.unlink(temporary)
        raise
    return metrics


def render(messages: list[str], details: list[str], metrics: list[str]) -> str:
    """The plugin output (see the module docstring)."""
    lines = list(messages)
    if metrics:
        lines[0] += "|" + metrics[0]
    lines += details
    if len(metrics) > 1:
        lines.append("| " + "\n ".join(metrics[1:]))
    return "\n".join(lines)
