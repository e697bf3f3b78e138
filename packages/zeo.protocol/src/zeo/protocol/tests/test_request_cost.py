"""What a small request costs in Python function calls (issue #21).

A ping's round trip runs through the sans-IO connections of both sides,
and every Python function on that path is paid on every request.  The
budgets below are counted (``sys.setprofile``), not timed, so they hold on
any machine; raise one only for a reason worth its cost.
"""

import sys
import unittest
from typing import Any, Callable

from zeo.protocol import NEED_DATA
from zeo.protocol.events import Call
from zeo.protocol.events import Reply
from zeo.protocol.tests.support import connected_pair


#: Python functions per step of a ping, per encoding (msgpack's decoding
#: is compiled whole; the Z codec's small pickles take the compiled
#: plain_loads).  Before issue #21's work: M 6, 9, 2, 9; Z 7, 15, 3, 15.
BUDGETS = {
    "M": {"client sends": 2, "server receives": 6, "server replies": 2, "client receives": 6},
    "Z": {"client sends": 3, "server receives": 8, "server replies": 3, "client receives": 8},
}


def python_calls(function: Callable[[], Any]) -> tuple[Any, list[str]]:
    """What *function* returns, and the Python functions it called."""
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename != __file__:
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        result = function()
    finally:
        sys.setprofile(None)
    return result, calls


def receive(connection: Any, data: bytes) -> list[Any]:
    # As the adapters do: ask for a buffer, feed what came, take events.
    assert connection.receive_buffer() is None
    connection.receive_data(data)
    events = [connection.next_event()]
    events.append(connection.next_event())
    return events


class RequestCostTests(unittest.TestCase):

    def test_a_ping_round_trip(self):
        for encoding in ("M", "Z"):
            server, client = connected_pair(encoding)
            for msgid in (7, 300, 70000):  # warm up, then each int size
                counts = {}
                request, counts["client sends"] = python_calls(
                    lambda: client.send(Call(msgid, "ping", ())))
                events, counts["server receives"] = python_calls(
                    lambda: receive(server, request))
                self.assertEqual(events, [Call(msgid, "ping", ()), NEED_DATA])
                reply, counts["server replies"] = python_calls(
                    lambda: server.send(events[0].reply(None)))
                events, counts["client receives"] = python_calls(
                    lambda: receive(client, reply))
                self.assertEqual(events, [Reply(msgid, None), NEED_DATA])
                for step, calls in counts.items():
                    with self.subTest(encoding=encoding, step=step):
                        self.assertLessEqual(len(calls), BUDGETS[encoding][step], calls)
