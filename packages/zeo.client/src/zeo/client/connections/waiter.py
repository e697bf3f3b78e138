"""Where an application thread waits for the result of one server call."""
from __future__ import annotations

import _thread
from typing import Any, Callable

from zeo.client.errors import ClientDisconnected

__all__ = ['Waiter']

_allocate_lock = _thread.allocate_lock


class Waiter:
    """One result, set once by whoever reads the reply, waited for once.

    A pre-acquired ``_thread`` lock: the cheapest thing a thread can
    block on.  ``set_result``/``set_exception`` are called once, by the
    thread that handles the reply (the loop, or the application thread
    reading for itself, see ``zeo.client.connections``); ``wait`` once, by the
    thread that made the call.  An optional *hook* runs with the result
    before the waiter is released (``tpc_finish`` uses it to update the
    cache in wire order); what it returns or raises is what `wait`
    returns or raises.
    """

    __slots__ = ('_lock', '_value', '_error', '_hook')

    def __init__(self, hook: Callable[[Any], Any] | None = None) -> None:
        lock = _allocate_lock()
        lock.acquire()
        self._lock = lock
        self._value: Any = None
        self._error: BaseException | None = None
        self._hook = hook

    def done(self) -> bool:
        """Has the result (or error) been set?"""
        return not self._lock.locked()

    def set_result(self, value: Any) -> None:
        hook = self._hook
        if hook is not None:
            self._hook = None
            try:
                value = hook(value)
            except BaseException as error:  # handed to the waiting thread
                self._error = error
        self._value = value
        self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        self._hook = None
        self._error = error
        self._lock.release()

    def wait(self, timeout: float | None = None) -> Any:
        if not self._lock.acquire(True, -1 if timeout is None else timeout):
            raise ClientDisconnected('timed out waiting for the server')
        error = self._error
        if error is not None:
            self._error = None  # no cycle through the traceback
            raise error
        return self._value
