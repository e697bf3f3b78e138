"""What a ping costs the client in Python function calls (issue #21).

Counted (``sys.setprofile``), not timed: the functions of zeo.client an
application thread runs for one ``ping`` on an idle connection, where it
sends and reads the reply itself (``zeo.client.connections``).  The
checked locks of the tests (``locks.py``) are left out; the sans-IO part
has budgets of its own (zeo.protocol's test_request_cost).
"""
from __future__ import annotations

import os
import sys
from typing import Any

import zeo.client
from zeo.client.tests.support import ServerFixture

CLIENT_CODE = os.path.dirname(zeo.client.__file__) + os.sep
LEFT_OUT = (os.path.join(CLIENT_CODE, 'tests') + os.sep,
            os.path.join(CLIENT_CODE, 'connections', 'locks.py'))

#: ping, Runner.call and _channel; Channel.call with its Waiter, the
#: baton, PendingReplies.add and Output.send; _wait, _read_for, the
#: baton's wait, _read and _handle; the reply settled (replied_in_thread,
#: _settle, set_result); the baton given back and the result taken.
#: Before replied_in_thread: 24 (the reply went through _for_threads,
#: for_threads, _dispatch and replied).
BUDGET = 21


def counted(function: Any) -> list[str]:
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        filename = frame.f_code.co_filename
        if event == 'call' and filename.startswith(CLIENT_CODE) \
                and not filename.startswith(LEFT_OUT):
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        function()
    finally:
        sys.setprofile(None)
    return calls


class ClientRequestCostTests(ServerFixture):

    def test_a_ping(self):
        client = self.client()
        client.ping()
        calls = min((counted(client.ping) for _ in range(5)), key=len)
        self.assertLessEqual(len(calls), BUDGET, calls)
