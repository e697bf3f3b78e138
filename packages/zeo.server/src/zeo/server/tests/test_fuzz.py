"""Fuzzing the server's dispatch in process (Hypothesis).

A real `StorageServer` on a real FileStorage, no sockets (see `fuzzing`).
Every RPC name the session accepts, plus names it must refuse, is called
with well-formed arguments, with one argument replaced by a value of the
wrong type (None, booleans, huge ints, floats, text, bytes of odd lengths,
nested containers, tuples nested thousands deep, hostile pickles), with
too few or too many arguments, and in the wrong state (``vote`` without
``tpc_begin``, ``storea`` outside a transaction, ``tpc_finish`` twice, two
connections competing for the commit lock ...). The rules:

- a call gets a reply or an error reply, or closes its connection;
  nothing else comes out of dispatch, and no error that only a server bug
  raises (`fuzzing.INTERNAL_ERRORS`);
- after every call the shared state is consistent (commit lock, counters,
  the storage's open transaction) and the marker file a hostile pickle
  would create does not exist;
- a call on an open connection is answered at the latest once the
  connections holding the commit lock have gone;
- after every example all connections close, the lock is free, and a
  normal commit works; then ``fstest`` passes, every normal commit reads
  back from the file reopened without its index, and no file descriptor
  is left open.

Each example runs on a fresh server and file, so that Hypothesis can
replay and shrink it. What it found is kept as plain regression tests in
``test_fuzz_findings``. The default run makes a few thousand calls in a few
seconds; `DispatchFuzzLongTests` (level 3: ``bin/test -s zeo.server -t
test_fuzz -a 3``) nearly 40 times as many. Each test prints how many calls it
made and what came of them. The same over sockets is ``test_fuzz_wire``;
`zeo.server.tests.fuzz_server` drives the decoder and this harness with
atheris.
"""

from __future__ import annotations

import collections
import gc
import os
import pickle
import shutil
import struct
import tempfile
import time
import unittest
import warnings

from BTrees.Length import Length
from hypothesis import given, settings
from persistent.mapping import PersistentMapping
from hypothesis import strategies as st

from zeo.server.tests.fuzzing import (
    MAXTID, METHODS, NOT_METHODS, Z64, Harness, hypothesis_settings, seed_streams)

SETTINGS = hypothesis_settings()

#: The transaction calls, drawn more often to reach odd states.
TRANSACTION_METHODS = (
    "tpc_begin", "storea", "deleteObject", "checkCurrentSerialInTransaction",
    "restorea", "undoa", "storeBlobStart", "storeBlobChunk", "storeBlobEnd",
    "storeBlobShared", "vote", "tpc_finish", "tpc_abort")
#: Real ZODB records: class and state pickles. A Length resolves conflicts.
RECORDS = (pickle.dumps(PersistentMapping, 3) + pickle.dumps({"data": {}}, 3),
           pickle.dumps(Length, 3) + pickle.dumps(5, 3),
           pickle.dumps(Length, 3) + pickle.dumps(7, 3))
#: oids the fuzzer writes: far above what new_oids hands the harness.
FUZZ_OIDS = tuple((1 << 48 | n).to_bytes(8, "big") for n in range(3))


def nested(depth: int) -> tuple:
    value: tuple = ()
    for _ in range(depth):
        value = (value,)
    return value


def wild_values(hostile: list[bytes]) -> st.SearchStrategy:
    """Values of every type a decoder can produce, and some it cannot."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(),
        st.sampled_from([2**63, 2**64, -2**63 - 1, 10**40, -1, 0]),
        st.floats(), st.text(max_size=12), st.binary(max_size=17),
        st.sampled_from(hostile), st.sampled_from([Z64, MAXTID, "1", "M5"]))
    containers = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.lists(children, max_size=4).map(tuple),
            st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4),
                                      st.integers()), children, max_size=3)),
        max_leaves=8)
    return st.one_of(containers, st.integers(50, 3000).map(nested))


class State:
    """What a sequence of calls has learnt: tids, iterator ids, file names."""

    def __init__(self, harness: Harness) -> None:
        self.tids = [Z64, MAXTID, harness.storage.lastTransaction()]
        self.ids = [1, 2, 0, -1]
        self.harness = harness

    def learn(self, value: object) -> None:
        if isinstance(value, bytes) and len(value) == 8:
            self.tids.append(value)
        elif type(value) is int:
            self.ids.append(value)
        elif type(value) is tuple and value and isinstance(value[0], bytes):
            for item in value[:3]:
                self.learn(item)


def plausible_args(draw, method: str, state: State, hostile: list[bytes]) -> tuple:
    """Arguments a client could send for *method*: right types, values that
    are often wrong (unknown ids, stale serials, hostile data)."""
    oid = draw(st.sampled_from(FUZZ_OIDS))
    tid = draw(st.sampled_from(state.tids))
    txn = draw(st.sampled_from([1, 1, 1, 2, "x"]))
    # Mostly ordinary values, so that transactions get on to their vote.
    data = draw(st.sampled_from(["bytes"] * 4 + ["record"] * 3 + ["empty", "hostile"]))
    data = {"bytes": lambda: draw(st.binary(min_size=1, max_size=40)), "empty": lambda: b"",
            "hostile": lambda: draw(st.sampled_from(hostile)),
            "record": lambda: draw(st.sampled_from(RECORDS))}[data]()
    extension = draw(st.sampled_from(["dict"] * 10 + ["other", "hostile"]))
    extension = {"dict": lambda: {}, "hostile": lambda: draw(st.sampled_from(hostile)),
                 "other": lambda: draw(st.sampled_from(
                     [None, {"x": 1}, b"", pickle.dumps({"x": 1}, 3), 5]))}[extension]()
    number = draw(st.sampled_from(state.ids))
    table = {
        "register": lambda: (draw(st.sampled_from(["1", "1", "2", ""])), draw(st.booleans())),
        "getInvalidations": lambda: (tid,),
        "new_oids": lambda: (draw(st.integers(-5, 500)),),
        "loadBefore": lambda: (oid, tid), "loadSerial": lambda: (oid, tid),
        "getTid": lambda: (oid,), "history": lambda: (oid, draw(st.integers(0, 10))),
        "record_iternext": lambda: (draw(st.sampled_from([None, oid, Z64])),),
        "undoLog": lambda: (draw(st.integers(-3, 30)), draw(st.integers(-30, 30))),
        "undoInfo": lambda: (0, 20, draw(st.sampled_from([None, {}, {"user_name": b""}]))),
        "pack": lambda: (time.time() + draw(st.floats(-5, 5)), draw(st.booleans())),
        "sendBlob": lambda: (oid, tid),
        "iterator_start": lambda: (draw(st.sampled_from([None, tid])),
                                   draw(st.sampled_from([None, tid]))),
        "iterator_next": lambda: (number,), "iterator_record_next": lambda: (number,),
        "iterator_record_start": lambda: (number, tid),
        "iterator_gc": lambda: (draw(st.lists(st.sampled_from(state.ids), max_size=3)),),
        "set_client_label": lambda: (draw(st.text(max_size=10)),),
        "tpc_begin": lambda: (txn, b"user", b"desc", extension,
                              *draw(st.sampled_from([(None, " ")] * 10 + [
                                  (tid, " "), (tid, "p"), (tid, "c"), (tid, "xy"), (None, 5)]))),
        "storea": lambda: (oid, draw(st.sampled_from([Z64, None, tid])), data, txn),
        "deleteObject": lambda: (oid, tid, txn),
        "checkCurrentSerialInTransaction": lambda: (oid, tid, txn),
        "restorea": lambda: (oid, tid, draw(st.sampled_from([data, None])),
                             draw(st.sampled_from([None, tid])), txn),
        "undoa": lambda: (draw(st.sampled_from([b"", b"AAAAAAAAAAA=", tid])), txn),
        "storeBlobStart": lambda: (),
        "storeBlobChunk": lambda: (draw(st.binary(max_size=30)),),
        "storeBlobEnd": lambda: (oid, Z64, data, txn),
        "storeBlobShared": lambda: (oid, Z64, data, draw(st.sampled_from(
            ["x.tmp", "../../Data.fs", "/etc/passwd", ".tmp", "a.tmpz", "\0.tmp"])), txn),
        "vote": lambda: (txn,), "tpc_finish": lambda: (txn,), "tpc_abort": lambda: (txn,),
    }
    make = table.get(method)
    return make() if make is not None else ()


def draw_call(draw, state: State, hostile: list[bytes], wild: st.SearchStrategy):
    """One call: a name, and its arguments well formed or broken one of
    four ways (a wrong value in one position, one too few, one too many,
    or all wild)."""
    method = draw(st.one_of(st.sampled_from(METHODS), st.sampled_from(TRANSACTION_METHODS),
                            st.sampled_from(NOT_METHODS)))
    args = list(plausible_args(draw, method, state, hostile))
    how = draw(st.sampled_from(["plausible", "plausible", "wrong type", "fewer",
                                "more", "wild"]))
    if how == "wrong type" and args:
        args[draw(st.integers(0, len(args) - 1))] = draw(wild)
    elif how == "fewer" and args:
        args.pop()
    elif how == "more":
        args.append(draw(wild))
    elif how == "wild":
        args = draw(st.lists(wild, max_size=7))
    return method, tuple(args)


#: The calls of a whole transaction, between tpc_begin and vote.
CHANGES = ("storea", "storea", "deleteObject", "checkCurrentSerialInTransaction", "restorea",
           "undoa", "blob")
#: Reads that look at what transactions left behind.
READS = ("history", "undoLog", "undoInfo", "loadBefore", "iterator")


def draw_transaction(draw, state: State, hostile: list[bytes], wild: st.SearchStrategy):
    """The calls of a whole transaction, then reads of what it left, with
    one call perhaps broken as in `draw_call`, perhaps cut short."""
    txn = draw(st.sampled_from([1, "t"]))
    calls = [("tpc_begin", plausible_args(draw, "tpc_begin", state, hostile)[1:])]
    calls[0] = ("tpc_begin", (txn, *calls[0][1]))
    for change in draw(st.lists(st.sampled_from(CHANGES), min_size=1, max_size=4)):
        if change == "blob":
            calls += [("storeBlobStart", ()), ("storeBlobChunk", (b"blob",)),
                      ("storeBlobEnd", (*plausible_args(draw, "storeBlobEnd", state, hostile)[:3],
                                        txn))]
        else:
            calls.append((change, (*plausible_args(draw, change, state, hostile)[:-1], txn)))
    calls += [("vote", (txn,)), ("tpc_finish", (txn,))]
    for read in draw(st.lists(st.sampled_from(READS), max_size=3)):
        if read == "iterator":
            calls += [("iterator_start", (None, None)), ("iterator_next", (state.ids[-1],))]
        else:
            calls.append((read, plausible_args(draw, read, state, hostile)))
    if draw(st.booleans()):
        index = draw(st.integers(0, len(calls) - 1))
        method, args = calls[index]
        args = list(args)
        if args:
            args[draw(st.integers(0, len(args) - 1))] = draw(wild)
        calls[index] = (method, tuple(args))
    if draw(st.booleans()):
        del calls[draw(st.integers(1, len(calls))):]
    return calls


class Fuzzer:
    """One example: a fresh harness, what it learnt, and the strategies."""

    def __init__(self, directory: str, draw) -> None:
        self.harness = Harness(directory)
        self.draw = draw
        self.hostile = self.harness.hostile
        self.wild = wild_values(self.hostile)
        self.state = State(self.harness)

    def registered(self):
        connection = self.harness.connect()
        self.harness.dispatch(connection, "register", ("1", False))
        return connection

    def call(self, connection, method: str, args: tuple) -> str:
        outcome = self.harness.dispatch(connection, method, args)
        if outcome == "reply":
            self.state.learn(self.harness.last_reply)
        elif outcome == "pending":
            # Answered by a thread (iterator_start, history...): learn
            # from it once it is settled (a settled Delayed calls back at once).
            delayed = self.harness.delayed[-1][1]
            if delayed.settled:
                delayed.add_callback(
                    lambda error, value: None if error else self.state.learn(value))
        return outcome

    def random_call(self):
        return draw_call(self.draw, self.state, self.hostile, self.wild)

    def random_transaction(self):
        return draw_transaction(self.draw, self.state, self.hostile, self.wild)


class FuzzTestBase(unittest.TestCase):
    examples = 0

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-fuzz-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def run_examples(self, body, examples: int) -> None:
        """Run *body(fuzzer)* for *examples* examples, each on a fresh
        server and file: an example's outcome never depends on another's."""
        totals: collections.Counter[str] = collections.Counter()
        gc.collect()
        descriptors = len(os.listdir("/proc/self/fd"))

        @settings(SETTINGS, max_examples=examples)
        @given(st.data())
        def run(data):
            directory = tempfile.mkdtemp(dir=self.directory)
            fuzzer = Fuzzer(directory, data.draw)
            try:
                body(fuzzer)
                fuzzer.harness.reset()
            finally:
                fuzzer.harness.close()   # fstest, reread, marker
                totals.update(fuzzer.harness.outcomes)
                totals["examples"] += 1
                shutil.rmtree(directory)

        with warnings.catch_warnings():
            # ZODB's FileIterator leaves its file to the garbage collector
            # when a start or stop of the wrong type fails its assertion;
            # the descriptor count below is the check that matters.
            warnings.simplefilter("ignore", ResourceWarning)
            run()
            gc.collect()
        self.assertLessEqual(len(os.listdir("/proc/self/fd")), descriptors,
                             "file descriptors leaked")
        calls = sum(n for kind, n in totals.items() if kind != "examples")
        print(f"\n    {self.id().rsplit('.', 1)[-1]}: {calls} calls in"
              f" {totals.pop('examples')} examples; {dict(sorted(totals.items()))}")


class DispatchFuzzTests(FuzzTestBase):
    examples = 40

    def test_every_method_with_wrong_arity_and_types(self):
        def body(fuzzer):
            connection = fuzzer.registered()
            for _ in range(fuzzer.draw(st.integers(1, 6))):
                fuzzer.call(connection, *fuzzer.random_call())
                if connection.closed:
                    connection = fuzzer.registered()

        self.run_examples(body, self.examples * 2)

    def test_call_sequences_on_two_connections_in_any_state(self):
        def body(fuzzer):
            draw = fuzzer.draw
            harness = fuzzer.harness
            connections = [harness.connect(), harness.connect()]
            for _ in range(draw(st.integers(1, 25))):
                for index, connection in enumerate(connections):
                    if connection.closed:
                        connections[index] = harness.connect()
                # Drawn whatever the state, so that a replay draws the same.
                kind = draw(st.sampled_from(["call", "transaction", "race", "call"]))
                read_only = draw(st.sampled_from([False] * 5 + [True]))
                unregistered = [c for c in connections if not c.session.registered]
                if unregistered and draw(st.sampled_from([True] * 5 + [False])):
                    steps = [(c, ("register", ("1", read_only))) for c in unregistered]
                elif kind == "race":
                    # Both connections' transactions, interleaved: votes
                    # wait for each other's commit lock.
                    first, second = fuzzer.random_transaction(), fuzzer.random_transaction()
                    steps = []
                    while first or second:
                        if first and (not second or draw(st.booleans())):
                            steps.append((connections[0], first.pop(0)))
                        else:
                            steps.append((connections[1], second.pop(0)))
                else:
                    connection = connections[draw(st.integers(0, 1))]
                    calls = (fuzzer.random_transaction() if kind == "transaction"
                             else [fuzzer.random_call()])
                    steps = [(connection, call) for call in calls]
                for connection, (method, args) in steps:
                    fuzzer.call(connection, method, args)

        self.run_examples(body, self.examples)


    def test_bytes_through_the_decoder_and_dispatch(self):
        # A real session's frames, cut and spliced with random frames and
        # random bytes, through framing, both codecs and the dispatch.
        seeds = seed_streams()

        def body(fuzzer):
            draw = fuzzer.draw
            for _ in range(draw(st.integers(1, 4))):
                encoding, data = draw(st.sampled_from(seeds))
                pieces = [data[:draw(st.integers(0, len(data)))]]
                for _ in range(draw(st.integers(0, 3))):
                    payload = draw(st.binary(max_size=40))
                    pieces.append(draw(st.sampled_from([
                        struct.pack(">I", len(payload)) + payload, payload,
                        data[draw(st.integers(0, len(data))):]])))
                fuzzer.harness.serve_bytes(encoding, b"".join(pieces))

        self.run_examples(body, self.examples * 2)


class DispatchFuzzLongTests(DispatchFuzzTests):
    level = 3
    examples = 1500


class WrongStateTests(unittest.TestCase):
    """The wrong states named in the issue, each with its expected answer."""

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="zeo-fuzz-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.harness = Harness(directory)
        self.addCleanup(self.harness.close)
        self.hostile = self.harness.hostile

    def registered(self, harness):
        connection = harness.connect()
        harness.dispatch(connection, "register", ("1", False))
        return connection

    def expect(self, connection, method, args, outcome):
        self.assertEqual(self.harness.dispatch(connection, method, args), outcome,
                         f"{method}{args!r}: {connection.close_reason}")

    def test_wrong_states(self):
        h = self.harness
        oid = FUZZ_OIDS[0]
        cases = [
            # (calls before, then the call and its outcome)
            ([], ("ping", ()), "closed"),                       # before register
            ([], ("set_client_label", ("x",)), "closed"),
            ([("register", ("1", False))], ("register", ("1", False)), "error"),
            ([("register", ("1", False))], ("vote", (1,)), "error"),
            ([("register", ("1", False))], ("tpc_finish", (1,)), "reply"),   # None, as ZEO
            ([("register", ("1", False))], ("tpc_abort", (1,)), "reply"),
            ([("register", ("1", False))], ("storea", (oid, Z64, b"x", 1)), "closed"),
            ([("register", ("1", False))], ("storeBlobChunk", (b"x",)), "closed"),
            ([("register", ("1", False))], ("iterator_next", (7,)), "error"),
            ([("register", ("1", False))], ("iterator_record_start", (1, Z64)), "error"),
            ([("register", ("1", True))], ("new_oids", (1,)), "error"),
            ([("register", ("1", True))], ("tpc_begin", (1, b"", b"", {}, None, " ")), "closed"),
            ([("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " "))],
             ("tpc_begin", (2, b"", b"", {}, None, " ")), "closed"),
            ([("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " "))],
             ("storeBlobEnd", (oid, Z64, b"x", 1)), "closed"),
            ([("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " ")),
              ("vote", (1,))], ("vote", (1,)), "error"),
            ([("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " ")),
              ("vote", (1,))], ("storea", (oid, Z64, b"x", 1)), "closed"),
            ([("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " ")),
              ("storea", (oid, Z64, b"x", 1)), ("vote", (1,)), ("tpc_finish", (1,))],
             ("tpc_finish", (1,)), "reply"),
            ([("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " "))],
             ("vote", (2,)), "error"),
        ]
        for before, (method, args), outcome in cases:
            with self.subTest(before=before, call=method):
                connection = h.connect()
                for name, arguments in before:
                    self.assertIn(h.dispatch(connection, name, arguments), ("reply", "sent"))
                self.expect(connection, method, args, outcome)
                h.reset()

    def test_a_voter_waits_for_the_holder_and_is_answered_after_its_abort(self):
        h = self.harness
        first, second = self.registered(h), self.registered(h)
        for connection in (first, second):
            h.dispatch(connection, "tpc_begin", (1, b"", b"", {}, None, " "))
            h.dispatch(connection, "storea", (FUZZ_OIDS[1], Z64, b"x", 1))
        self.assertEqual(h.dispatch(first, "vote", (1,)), "reply")
        self.assertEqual(h.dispatch(second, "vote", (1,)), "pending")
        h.dispatch(first, "tpc_abort", (1,))
        self.assertTrue(h.run_loop(lambda: h.delayed[0][1].settled, timeout=10))
        self.assertEqual(h.dispatch(second, "tpc_finish", (1,)), "reply")
        h.reset()

    def test_the_harness_sees_a_hostile_pickle_run(self):
        # The marker rule can fail: loading each hostile pickle with the
        # plain unpickler creates the file.
        for hostile in self.hostile:
            try:
                made = pickle.loads(hostile)
            except Exception:
                made = None   # the meta tuple's call ran, then the rest failed
            for cleanup in ("wait", "close"):   # a Popen, an open file
                getattr(made, cleanup, lambda: None)()
            deadline = time.monotonic() + 10
            while not self._marker_exists() and time.monotonic() < deadline:
                time.sleep(0.01)   # Popen and os.system finish in a child
            with self.assertRaisesRegex(AssertionError, "marker"):
                self.harness.check_invariants()
            os.remove(self.harness.marker)

    def _marker_exists(self):
        return os.path.exists(self.harness.marker)


if __name__ == "__main__":
    unittest.main()
