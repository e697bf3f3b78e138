"""Process-wide budgets: what all the connections of a server hold together.

Every per-connection limit (the frame limit, ``max_output_buffer``) bounds
one connection; these bound the process, whatever the number of
connections:

* **buffered input** (``ServerConfig.total_input_limit``): the bytes of
  partial requests every connection's frame reader holds (input read but
  not yet a whole message; what ``ServerConnection.buffered`` reports).
  Over the limit, the connections holding the most are aborted until the
  total is under it again: a peer that announces big frames and dribbles
  their bytes cannot keep the budget, and clients sending ordinary
  requests hold nothing between reads, so they are never the ones chosen.
* **unsent output** (``ServerConfig.total_output_limit``): replies and
  notifications waiting to be sent, in the adapter's queue and in the
  transport's buffer. Over the limit, the tallies are refreshed (a
  transport drains without telling) and, if still over, the connections
  with the most unsent output are aborted.
* **connections per address** (``max_connections_per_address``): TCP
  connections from one IP address beyond the limit are closed on accept.
  Unix socket connections have no address; only ``max_connections``
  bounds them.
* **idle connections** (``idle_timeout``, off by default): one periodic
  sweep on the loop, every quarter of the timeout, closes (one log line)
  a connection that completed the handshake and has sent nothing for the
  timeout (sweeps notice it within 1.5 times the timeout), unless it is
  busy: a transaction in progress (including a vote waiting for the
  commit lock), a call answered later (a pack), output still queued, or
  reading paused by back-pressure. A heartbeat is input: ZEO clients send
  one every 60 seconds, so a timeout well above that closes only clients
  that are gone or stuck.

Ownership: the `Budgets` object, one per `StorageServer`, owns every tally
here (the per-connection amounts, the totals, the per-address counts, the
idle times); a connection owns its buffers and only *reports* what they
hold (``input_held``, ``output_held``; nothing when it holds nothing and
nothing is counted for it) and whether it heard from its peer
(``take_heard``). Everything runs on the server's event loop thread only:
nothing here locks. Reporting costs a dict lookup per read or write;
cutting a connection off is one log line (by the connection);
anything proportional to the number of connections happens only when a
budget is exceeded, or once per idle sweep.
"""

from __future__ import annotations

import asyncio
import collections
import operator
from typing import Any, Iterable

from zope.interface import implementer

from zeo.server.config import ServerConfig
from zeo.server.interfaces import IServerBudgets

__all__ = ["Budgets"]

_by_amount = operator.itemgetter(1)


@implementer(IServerBudgets)
class Budgets:
    """The process-wide tallies of one server. See `IServerBudgets` and the
    module docstring."""

    def __init__(self, config: ServerConfig) -> None:
        self.input_limit = config.total_input_limit
        self.output_limit = config.total_output_limit
        self.per_address = config.max_connections_per_address
        self.idle_timeout = config.idle_timeout
        #: Bytes of partial input held, in total and by the connections
        #: that hold any. Connections read the dict (to skip reporting 0
        #: when nothing is counted for them); only `Budgets` writes it.
        self.input_total = 0
        self.input_tallies: dict[Any, int] = {}
        #: Bytes of unsent output, as last reported (a transport drains
        #: silently: refreshed before anyone is cut off). Likewise.
        self.output_total = 0
        self.output_tallies: dict[Any, int] = {}
        #: TCP connections by IP address, and the address of each.
        self._hosts: dict[Any, str] = {}
        self._per_host: dict[str, int] = {}
        #: Loop time since which each connection was seen idle.
        self._quiet_since: dict[Any, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        #: Connections refused or cut off, by the limit's key (for the
        #: monitor); the adapter and the server count theirs here too.
        self.refusals: collections.Counter[str] = collections.Counter()

    # -- connections -----------------------------------------------------------

    def admit(self, connection: Any, host: str | None) -> str | None:
        """See `IServerBudgets`."""
        if host is None:
            return None
        count = self._per_host.get(host, 0)
        if count >= self.per_address:
            self.refusals["max-connections-per-address"] += 1
            return (f"{count} connections from {host:.100} already"
                    " (max-connections-per-address)")
        self._per_host[host] = count + 1
        self._hosts[connection] = host
        return None

    def forget(self, connection: Any) -> None:
        """See `IServerBudgets`."""
        self.input_total -= self.input_tallies.pop(connection, 0)
        self.output_total -= self.output_tallies.pop(connection, 0)
        self._quiet_since.pop(connection, None)
        host = self._hosts.pop(connection, None)
        if host is not None:
            count = self._per_host[host] - 1
            if count:
                self._per_host[host] = count
            else:
                del self._per_host[host]

    def _evict(self, connection: Any, reason: str) -> None:
        self.input_total -= self.input_tallies.pop(connection, 0)
        self.output_total -= self.output_tallies.pop(connection, 0)
        connection.abort(reason)

    # -- buffered input ----------------------------------------------------------

    def input_held(self, connection: Any, held: int) -> None:
        """See `IServerBudgets`."""
        tallies = self.input_tallies
        old = tallies.get(connection, 0)
        if held == old:
            return
        if held:
            tallies[connection] = held
        else:
            del tallies[connection]
        self.input_total += held - old
        if held > old and self.input_total > self.input_limit:
            self._shed_input()

    def _shed_input(self) -> None:
        total = self.input_total
        for connection, held in sorted(self.input_tallies.items(), key=_by_amount, reverse=True):
            if self.input_total <= self.input_limit:
                break
            self.refusals["max-total-input-buffer"] += 1
            self._evict(connection, (
                f"it holds {held} bytes of unfinished requests; all connections"
                f" together held {total}, over the limit of {self.input_limit}"
                " bytes (max-total-input-buffer)"))

    # -- unsent output -----------------------------------------------------------

    def output_held(self, connection: Any, unsent: int) -> None:
        """See `IServerBudgets`."""
        tallies = self.output_tallies
        old = tallies.get(connection, 0)
        if unsent == old:
            return
        if unsent:
            tallies[connection] = unsent
        else:
            del tallies[connection]
        self.output_total += unsent - old
        if unsent > old and self.output_total > self.output_limit:
            self._shed_output()

    def _shed_output(self) -> None:
        tallies = self.output_tallies
        for connection in list(tallies):
            unsent = connection.unsent_output()
            if unsent:
                tallies[connection] = unsent
            else:
                del tallies[connection]
        self.output_total = total = sum(tallies.values())
        for connection, unsent in sorted(tallies.items(), key=_by_amount, reverse=True):
            if self.output_total <= self.output_limit:
                break
            self.refusals["max-total-output-buffer"] += 1
            self._evict(connection, (
                f"it has {unsent} bytes of output unsent; all connections"
                f" together had {total}, over the limit of {self.output_limit}"
                " bytes (max-total-output-buffer)"))

    # -- idle connections ----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop,
              connections: Iterable[Any]) -> None:
        """See `IServerBudgets`."""
        timeout = self.idle_timeout
        if timeout is None:
            return
        period = timeout / 4

        def sweep() -> None:
            self._sweep(loop.time(), connections, timeout)
            self._sweeper = loop.call_later(period, sweep)

        self._sweeper = loop.call_later(period, sweep)

    def stop(self) -> None:
        """See `IServerBudgets`."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self, now: float, connections: Iterable[Any], timeout: float) -> None:
        quiet = self._quiet_since
        for connection in list(connections):
            if connection.closed:
                continue
            if connection.take_heard() or connection.busy():
                quiet[connection] = now
                continue
            since = quiet.setdefault(connection, now)
            if now - since >= timeout:
                quiet.pop(connection)
                self.refusals["idle-timeout"] += 1
                connection.close(f"idle for {now - since:.3g} seconds, at least"
                                 f" {timeout:g} (idle-timeout)")
