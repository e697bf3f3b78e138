"""The admin client with a few conveniences for server tests."""

from __future__ import annotations

from typing import Any

from zeo.server.admin import AdminClient, ServerError  # noqa: F401 (re-exported)


class RawClient(AdminClient):

    def wait_one_way(self, method: str) -> Any:
        while True:
            for index, message in enumerate(self.one_way):
                if message.method == method:
                    del self.one_way[index]
                    return message
            self._read()

    def wait_closed(self) -> bool:
        """Read until the server closes, then close our end; True if it did."""
        try:
            while True:
                self._read()
        except (ConnectionError, OSError):
            self.close()
            return True

    def commit(self, txn: Any, stores: list[tuple[bytes, bytes, bytes]]) -> bytes:
        """A whole transaction: ``stores`` of (oid, serial, data)."""
        self.send("tpc_begin", txn, b"", b"", {}, None, " ")
        for oid, serial, data in stores:
            self.send("storea", oid, serial, data, txn)
        self.call("vote", txn)
        return self.call("tpc_finish", txn)


def connect_when_ready(address: Any, timeout: float = 30.0, **options: Any) -> RawClient:
    """A RawClient as soon as a starting server accepts, or the last error."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            return RawClient(address, **options)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
