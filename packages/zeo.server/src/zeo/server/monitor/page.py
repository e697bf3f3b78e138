"""The status page: the `snapshot` as one HTML page for people.

Plain HTML and a little CSS, no script: it refreshes itself with a
``<meta http-equiv="refresh">`` every `REFRESH_SECONDS`. Every value goes
through `_text` (``html.escape``) on its way into the page: labels and
addresses come from peers, and the server's own strings are escaped as
well so that nothing depends on which is which.
"""

from __future__ import annotations

import html
import time
from typing import Any, Iterable

__all__ = ["REFRESH_SECONDS", "render"]

#: Seconds between the page's own refreshes.
REFRESH_SECONDS = 5

_STYLE = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.state-committing { background: #fde2c4; } .state-waiting { background: #fff3b0; }
.state-transaction { background: #e4f0fb; }
pre { background: #f6f6f6; padding: .5em; overflow-x: auto; font-size: .85em; }
summary { cursor: pointer; }
"""


def _text(value: Any) -> str:
    """*value* as escaped HTML text ("" for None)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]],
           row_classes: Iterable[str] | None = None, empty: str = "none") -> str:
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    body = []
    classes = iter(row_classes) if row_classes is not None else None
    for row in rows:
        css = next(classes) if classes is not None else ""
        cells = "".join(
            f'<td class="n">{_text(c)}</td>' if isinstance(c, (int, float)) and not
            isinstance(c, bool) else f"<td>{_text(c)}</td>" for c in row)
        body.append(f'<tr class="{_text(css)}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    if not body:
        return f"<p>{_text(empty)}</p>"
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _storages(data: dict[str, Any]) -> str:
    parts = []
    for s in data["storages"]:
        lock = s["lock"]
        c = s["counters"]
        parts.append(f"<h2 id=\"storage-{_text(s['name'])}\">Storage {_text(s['name'])}</h2>")
        parts.append(_table(
            ["last tid", "last commit", "size (bytes)", "objects", "invalidation queue",
             "connections", "open transactions", "spooled bytes", "read-only"],
            [[s["last_tid"], _when(s["last_commit"]), s["size"], s["objects"],
              s["invalidation_queue_length"], s["connections"], s["active_transactions"],
              s["spool_bytes"], "yes" if s["read_only"] else "no"]]))
        parts.append(_table(
            ["loads", "stores", "commits", "aborts", "conflicts", "resolved", "timeouts",
             "bytes in", "bytes out"],
            [[c["loads"], c["stores"], c["commits"], c["aborts"], c["conflicts"],
              c["conflicts_resolved"], c["timeouts"], c["bytes_in"], c["bytes_out"]]]))
        if lock["holder"] is None:
            holder = "<p>Commit lock: free.</p>"
        else:
            holder = (f'<p class="lock-holder">Commit lock held by <b>{_text(lock["holder"])}'
                      f'</b> for {_text(_duration(lock["for"]))} (since'
                      f' {_text(_when(lock["since"]))}).</p>')
        parts.append(holder)
        parts.append(_table(["waiting for the lock", "since", "for"],
                            [[w["label"], _when(w["since"]), _duration(w["for"])]
                             for w in lock["waiters"]], empty="No vote waits for the lock."))
        parts.append(f"<h3>Recent slow transactions (holding the lock"
                     f" {_text(_duration(s['slow_threshold']))} or more)</h3>")
        parts.append(_table(["ended", "client", "held the lock"],
                            [[_when(t["ended"]), t["label"], _duration(t["held"])]
                             for t in s["slow_transactions"]], empty="none"))
    return "".join(parts)


def _connections(data: dict[str, Any]) -> str:
    server = data["server"]
    rows, classes = [], []
    for c in data["connections"]:
        rows.append([c["address"], c["label"], c["storage"] or "",
                     c["protocol"] or "", _when(c["connected_since"]),
                     _duration(c["last_request_ago"]) + " ago", c["state"],
                     _duration(c["state_for"])])
        classes.append(f"state-{c['state']}")
    more = server["connections"] - server["connections_listed"]
    note = f"<p>{more} more connections not listed.</p>" if more > 0 else ""
    return ("<h2>Connections</h2>"
            + _table(["address", "label", "storage", "protocol", "connected since",
                      "last request", "state", "for"], rows, classes,
                     empty="No client is connected.") + note)


def _stacks(data: dict[str, Any]) -> str:
    parts = ["<h2>Threads</h2>"]
    for t in data.get("threads", ()):
        parts.append(f"<details><summary>{_text(t['name'])}"
                     f"{' (this request)' if t['current'] else ''}</summary>"
                     f"<pre>{_text(t['stack'])}</pre></details>")
    parts.append("<h2>Event-loop tasks</h2>")
    tasks = data.get("tasks", ())
    if not tasks:
        parts.append("<p>none</p>")
    for t in tasks:
        parts.append(f"<details><summary>{_text(t['name'])}: {_text(t['coroutine'])}"
                     f"</summary><pre>{_text(t['stack'])}</pre></details>")
    return "".join(parts)


def render(data: dict[str, Any]) -> str:
    """The page for *data*, a `zeo.server.monitor.snapshot.snapshot`."""
    server = data["server"]
    addresses = ", ".join(
        a if isinstance(a, str) else f"{a[0]}:{a[1]}" for a in server["addresses"])
    refusals = sorted(server["refusals"].items())
    summary = _table(
        ["process", "listening on", "event loop", "connections", "spooled bytes",
         "buffered input", "unsent output", "transaction iterators"],
        [[server["pid"], addresses, server["event_loop"], server["connections"],
          server["spool_bytes"], server["input_buffer_bytes"],
          server["output_buffer_bytes"], server["open_transaction_iterators"]]])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
        "<title>zeo server status</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>zeo server status</h1><p>As of {_text(_when(server['now']))};"
        f" refreshes every {REFRESH_SECONDS} s. Also as <a href=\"status.json\">JSON</a>"
        " and <a href=\"metrics\">metrics</a>.</p>"
        + summary
        + "<h3>Refused or cut off, by limit</h3>"
        + _table(["limit", "count"], refusals, empty="none")
        + _storages(data) + _connections(data) + _stacks(data)
        + "</body></html>\n")
