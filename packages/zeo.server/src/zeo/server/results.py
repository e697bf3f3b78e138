"""Replies that come later than the call that asked for them.

A session method returns a plain value to reply at once, or a `Delayed`
when the answer has to wait (a ``vote`` queued for the commit lock, a
``pack`` running in a worker thread). The network adapter subscribes with
`Delayed.add_callback` and writes the reply when it is settled.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Callback", "Delayed", "chain"]

#: ``callback(error, value)``: *error* is None on success.
Callback = Callable[[BaseException | None, Any], None]


class Delayed:
    """A reply that is settled once, with a value or an exception."""

    __slots__ = ("_callbacks", "_outcome")

    def __init__(self) -> None:
        self._callbacks: list[Callback] = []
        self._outcome: tuple[BaseException | None, Any] | None = None

    @property
    def settled(self) -> bool:
        return self._outcome is not None

    def resolve(self, value: Any) -> None:
        self._settle(None, value)

    def fail(self, error: BaseException) -> None:
        self._settle(error, None)

    def settle_with(self, function: Callable[[], Any]) -> None:
        """Settle with ``function()``'s value, or the exception it raises."""
        try:
            value = function()
        except Exception as error:
            self.fail(error)
        else:
            self.resolve(value)

    def _settle(self, error: BaseException | None, value: Any) -> None:
        if self._outcome is not None:
            raise RuntimeError("a delayed reply can be settled only once")
        self._outcome = (error, value)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(error, value)

    def add_callback(self, callback: Callback) -> None:
        if self._outcome is None:
            self._callbacks.append(callback)
        else:
            callback(*self._outcome)


def chain(source: Delayed, then: Callable[[Any], Any]) -> Delayed:
    """A `Delayed` settled with ``then(value)`` when *source* resolves
    (*then*'s exception if it raises), or with *source*'s error. *then*
    runs where *source* is settled: on the loop, for a thread's outcome."""
    result = Delayed()

    def settled(error: BaseException | None, value: Any) -> None:
        if error is not None:
            result.fail(error)
        else:
            result.settle_with(lambda: then(value))

    source.add_callback(settled)
    return result
