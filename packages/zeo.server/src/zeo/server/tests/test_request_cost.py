"""What a ping costs the server in Python function calls (issue #21).

Counted (``sys.setprofile`` in the server's loop thread), not timed: the
functions of zeo.server that handle one ``ping`` on a registered
connection, from the read to the write of its reply.  The sans-IO part
has budgets of its own (zeo.protocol's test_request_cost).
"""

import os
import sys
import threading
import unittest
from typing import Any

import zope.event

import zeo.server
from zeo.server.interfaces import IServing
from zeo.server.tests.rawclient import RawClient

SERVER_CODE = os.path.dirname(zeo.server.__file__) + os.sep
TESTS = os.path.join(SERVER_CODE, "tests") + os.sep

#: get_buffer, buffer_updated, _handle_input, _call, ping, _reply, _write,
#: _flush, _send.  Before issue #21's work 13: also _handle, _allowed,
#: the session's ``registered``, and _write again with _count_out.
BUDGET = 9


class ServerRequestCostTests(unittest.TestCase):

    def setUp(self):
        servers: list[Any] = []

        def note(event: Any) -> None:
            if IServing.providedBy(event):
                servers.append(event)

        zope.event.subscribers.append(note)
        self.addCleanup(zope.event.subscribers.remove, note)
        self.address, stop = zeo.server.server()
        self.addCleanup(stop)
        self.client = RawClient(self.address)
        self.addCleanup(self.client.close)
        self.loop = servers[0].server._loop

    def in_server_thread(self, function: Any) -> None:
        done = threading.Event()

        def run() -> None:
            function()
            done.set()

        self.loop.call_soon_threadsafe(run)
        self.assertTrue(done.wait(10))

    def counted_ping(self) -> list[str]:
        calls: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            filename = frame.f_code.co_filename
            if event == "call" and filename.startswith(SERVER_CODE) \
                    and not filename.startswith(TESTS):
                calls.append(frame.f_code.co_name)

        self.in_server_thread(lambda: sys.setprofile(profile))
        try:
            self.client.call("ping")
        finally:
            self.in_server_thread(lambda: sys.setprofile(None))
        return calls

    def test_a_ping(self):
        self.client.call("ping")
        # The fewest of a few: a timer of the server may run in between.
        calls = min((self.counted_ping() for _ in range(5)), key=len)
        self.assertLessEqual(len(calls), BUDGET, calls)
