"""Storage calls whose cost grows with the database, run off the event loop.

Most RPCs cost the same whatever the size of the database (``loadBefore``
of a current record, ``getTid``, ``new_oids``) and run on the event loop:
they are the fast path and must not pay for a thread switch. A few walk
the file: ``undoLog`` / ``undoInfo`` (every transaction, back to the
``first``-th match; a specification that never matches reads them all),
``history`` and ``loadSerial`` (an object's chain of revisions),
``iterator_start`` with a start tid (FileStorage searches for it) and
``getInvalidations`` answered by iterating the storage. One such call on
the loop would stall every client, so a session hands them to a
`SlowCalls` lane.

The thread rules:

- The *function* given to `SlowCalls.submit` runs in a worker thread. It
  may touch its own arguments and a storage lent by
  `ServedStorage.borrowed` (FileStorage itself, whose own locks make it
  safe, as for ZEO; an instance of its own for an MVCC storage such as
  RelStorage, whose main instance only the loop uses), nothing of the
  session, the served storage or the connection.
- Everything else runs on the loop: `submit`, the callbacks of the
  returned `Delayed`, and `close`. The thread's outcome reaches the loop
  through the server's executor future, so session state is only ever
  changed on the loop.
- A lane runs one call at a time, in the order received, so one
  connection cannot occupy more than one worker; the server's pool of
  ``worker_threads`` threads bounds them process-wide, and its queue is
  served in order, one entry per busy connection. At most
  ``max_waiting_calls`` more wait in a lane; beyond that a call is refused
  with an error reply (`TooManyWaitingCalls`).
- Replies to slow calls may overtake replies to calls received later:
  clients match replies by message id. Nothing whose order matters for
  cache consistency (loads of current data, invalidations) goes through a
  lane.
- After `close` (the connection is gone) waiting calls never start; a
  running one finishes and its outcome is delivered to callbacks that must
  check whether their session is still open (the adapter drops replies to
  a closed connection; a session releases what the call acquired).
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from zope.interface import implementer

from zeo.server.interfaces import ISlowCalls
from zeo.server.results import Delayed

__all__ = ["SlowCalls", "TooManyWaitingCalls", "ConnectionClosedError"]

#: ``run_in_thread(function) -> Delayed`` settled on the loop.
RunInThread = Callable[[Callable[[], Any]], Delayed]


class TooManyWaitingCalls(Exception):
    """A connection queued more slow calls than ``max_waiting_calls``."""


class ConnectionClosedError(Exception):
    """The connection closed before its slow call could start."""


@implementer(ISlowCalls)
class SlowCalls:
    """One connection's lane of slow storage calls. See the module docstring."""

    def __init__(self, run_in_thread: RunInThread, max_waiting: int) -> None:
        self._run_in_thread = run_in_thread
        self.max_waiting = max_waiting
        self._waiting: collections.deque[tuple[Callable[[], Any], Delayed]] = \
            collections.deque()
        self.running = False
        self.closed = False

    def __len__(self) -> int:
        """Calls running or waiting."""
        return len(self._waiting) + self.running

    def submit(self, function: Callable[[], Any]) -> Delayed:
        """Run *function* in a worker thread after this lane's earlier calls."""
        if self.closed:
            raise ConnectionClosedError("the connection is closed")
        if len(self._waiting) >= self.max_waiting:
            raise TooManyWaitingCalls(
                f"this connection already has {len(self)} slow storage calls"
                f" (undoLog, undoInfo, history, loadSerial, iterator_start,"
                f" getInvalidations) running or waiting; the limit is"
                f" {self.max_waiting} waiting (max-waiting-calls)")
        delayed = Delayed()
        self._waiting.append((function, delayed))
        self._start_next()
        return delayed

    def _start_next(self) -> None:
        if self.running or not self._waiting or self.closed:
            return
        function, delayed = self._waiting.popleft()
        self.running = True
        try:
            outcome = self._run_in_thread(function)
        except BaseException as error:   # e.g. the server is closing
            self.running = False
            delayed.fail(error)
            self._start_next()
            return
        outcome.add_callback(lambda error, value: self._finished(delayed, error, value))

    def _finished(self, delayed: Delayed, error: BaseException | None, value: Any) -> None:
        self.running = False
        try:
            if error is None:
                delayed.resolve(value)
            else:
                delayed.fail(error)
        finally:
            self._start_next()

    def close(self) -> None:
        """Drop the waiting calls (answered with an error nobody reads)."""
        self.closed = True
        waiting, self._waiting = self._waiting, collections.deque()
        for _, delayed in waiting:
            delayed.fail(ConnectionClosedError("the connection closed"))
