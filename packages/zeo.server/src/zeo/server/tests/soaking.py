"""Connection churn against a real server, with its memory sampled.

`soak` runs *clients* threads for *seconds*. Each repeats a cycle: connect
and register, commit new revisions of its own few objects, read them back
(and an object of another client), and disconnect. One cycle in eight ends
badly instead: the client disconnects in the middle of a transaction, or
after its vote while it holds the commit lock. A sampler thread reads the
server's resident memory and open descriptors every *interval* seconds.

Objects are created during the warm-up only, so the server's data
structures that legitimately grow with the database (FileStorage's index
of oids) stay the same size while memory is judged.

`judge` decides whether memory stayed flat: it drops the warm-up samples,
splits the rest into quarters and compares the median of the first
quarter with the median of the last. Medians ignore the short peaks of
whatever happens to be in flight at a sampling instant; comparing quarters
ignores the slope of the first minutes, while the allocator settles. The
growth allowed is `TOLERANCE_KIB` plus `TOLERANCE_FRACTION` of the first
median: a leak of even a few hundred bytes per connection exceeds it in a
long run (10 minutes make tens of thousands of connections).
"""

from __future__ import annotations

import dataclasses
import random
import socket
import statistics
import threading
import time
from typing import Any

from zeo.server.tests.rawclient import RawClient, ServerError

Z64 = b"\0" * 8
MAXTID = b"\x7f" + b"\xff" * 7
#: Objects each client owns and rewrites.
OBJECTS_PER_CLIENT = 4
#: Allowed growth between the first and last quarter (see `judge`).
TOLERANCE_KIB = 2048
TOLERANCE_FRACTION = 0.02


@dataclasses.dataclass
class SoakResult:
    seconds: float = 0.0
    warm_up: float = 0.0
    cycles: int = 0
    commits: int = 0
    loads: int = 0
    broken: int = 0          # cycles that disconnected mid-transaction
    conflicts: int = 0
    #: The server's open descriptors once warm (its FileStorage keeps a
    #: read handle from the first load on), before the churn.
    descriptors_before: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    samples: list[tuple[float, int, int]] = dataclasses.field(default_factory=list)

    def judge(self) -> tuple[int, int, int, int]:
        """(first-quarter median, last-quarter median, growth, allowed), KiB."""
        measured = [rss for t, rss, _ in self.samples if t >= self.warm_up]
        if len(measured) < 8:
            raise ValueError(f"only {len(measured)} samples after the warm-up")
        quarter = len(measured) // 4
        first = int(statistics.median(measured[:quarter]))
        last = int(statistics.median(measured[-quarter:]))
        allowed = int(TOLERANCE_KIB + TOLERANCE_FRACTION * first)
        return first, last, last - first, allowed

    def summary(self) -> str:
        first, last, growth, allowed = self.judge()
        descriptors = [fds for _, _, fds in self.samples]
        return (f"{self.seconds:.0f} s, {self.cycles} connections, {self.commits} commits,"
                f" {self.loads} loads, {self.broken} cut mid-transaction,"
                f" {self.conflicts} conflicts; RSS {self.samples[0][1]} KiB at start,"
                f" median {first} KiB after the warm-up, {last} KiB at the end"
                f" ({growth:+d} KiB, {allowed} KiB allowed), {self.samples[-1][1]} KiB last;"
                f" descriptors {min(descriptors)}..{max(descriptors)}")


def soak(server: Any, seconds: float, clients: int, warm_up: float,
         interval: float = 0.5, seed: int | None = None) -> SoakResult:
    """See the module docstring. *server* is a `ServerProcess`."""
    result = SoakResult(warm_up=warm_up)
    lock = threading.Lock()
    start = time.monotonic()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            try:
                sample = (time.monotonic() - start, server.rss_kib(), server.descriptors())
            except OSError as error:
                result.errors.append(f"sampling: {error}")
                return
            with lock:
                result.samples.append(sample)
            stop.wait(interval)

    threads = [threading.Thread(target=sampler, name="soak sampler")]
    owners = [_Owner(server, number, random.Random(None if seed is None else seed + number))
              for number in range(clients)]
    for owner in owners:
        owner.create()
    server.wait_connections(0)
    result.descriptors_before = server.descriptors()
    for owner in owners:
        threads.append(threading.Thread(
            target=owner.churn, args=(start + seconds, owners, result, lock),
            name=f"soak client {owner.number}"))
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    stop.set()
    threads[0].join()
    result.seconds = time.monotonic() - start
    return result


class _Owner:
    """One soak client and the objects it owns."""

    def __init__(self, server: Any, number: int, rng: random.Random) -> None:
        self.server = server
        self.number = number
        self.rng = rng
        self.serials: dict[bytes, bytes] = {}
        self.values: dict[bytes, bytes] = {}
        self.txn = 0

    def create(self) -> None:
        client = self.server.client()
        try:
            for oid in client.call("new_oids", OBJECTS_PER_CLIENT):
                self.commit(client, {oid: Z64})
                client.call("loadBefore", oid, MAXTID)
        finally:
            client.close()

    def commit(self, client: RawClient, serials: dict[bytes, bytes]) -> None:
        self.txn += 1
        stores = []
        for oid, serial in serials.items():
            value = b"%d:%d:" % (self.number, self.txn) + b"x" * self.rng.randint(10, 2000)
            stores.append((oid, serial, value))
        tid = client.commit(self.txn, stores)
        for oid, _, value in stores:
            self.serials[oid], self.values[oid] = tid, value

    def churn(self, deadline: float, owners: list[_Owner], result: SoakResult,
              lock: threading.Lock) -> None:
        counts = dict(cycles=0, commits=0, loads=0, broken=0, conflicts=0)
        try:
            while time.monotonic() < deadline:
                self.cycle(owners, counts)
        except Exception as error:   # reported, and fails the soak
            with lock:
                result.errors.append(f"client {self.number}: {type(error).__name__}: {error}")
        with lock:
            for name, count in counts.items():
                setattr(result, name, getattr(result, name) + count)

    def cycle(self, owners: list[_Owner], counts: dict[str, int]) -> None:
        client = self.server.client()
        # One-way calls are small writes: without this, Nagle's algorithm
        # and the server's delayed ACKs cost 40 ms a transaction.
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counts["cycles"] += 1
        try:
            mine = self.rng.sample(sorted(self.serials), self.rng.randint(1, OBJECTS_PER_CLIENT))
            if self.rng.random() < 1 / 8:
                self.txn += 1
                client.send("tpc_begin", self.txn, b"soak", b"cut", {}, None, " ")
                client.send("storea", mine[0], self.serials[mine[0]], b"never", self.txn)
                if self.rng.random() < 0.5:
                    client.call("vote", self.txn)   # and leave holding the lock
                counts["broken"] += 1
                return
            try:
                self.commit(client, {oid: self.serials[oid] for oid in mine})
                counts["commits"] += 1
            except ServerError as error:   # only if a cut cycle's abort is late
                counts["conflicts"] += 1
                if "Conflict" not in error.class_name:
                    raise
            for oid in mine:
                data, tid, _ = client.call("loadBefore", oid, MAXTID)
                if (data, tid) != (self.values[oid], self.serials[oid]):
                    raise AssertionError(f"read {data[:20]!r} of {tid.hex()}, committed"
                                         f" {self.values[oid][:20]!r} in {self.serials[oid].hex()}")
                counts["loads"] += 1
            other = self.rng.choice(owners)
            client.call("loadBefore", self.rng.choice(sorted(other.serials)), MAXTID)
            counts["loads"] += 1
        finally:
            client.close()
