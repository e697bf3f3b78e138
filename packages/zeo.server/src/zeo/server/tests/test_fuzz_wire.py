"""Fuzzing a real server over real sockets (Hypothesis).

Each example opens a TCP connection to an in-process server on 127.0.0.1
(FileStorage; msgpack ``M5`` or pickle ``Z5``), answers the handshake (or
sends a broken answer), and sends random frames: well-formed calls of
every method with random arguments, valid msgpack or pickles of random
shapes, undecodable and truncated payloads, msgpack extension types,
hostile pickles (alone and inside a call's arguments), pickle memory
bombs, frames cut short and lengths over the limit. Then it asks
``register`` under a message id nobody else uses. The rules:

- the server answers that call or closes the connection, in time; it
  never hangs, and everything it sends decodes;
- afterwards a client that stayed connected through it all still gets
  answers, a new client commits and reads back, the server counts no
  leftover connection, and the marker file a hostile pickle would create
  does not exist.

The default run makes 100 connections per encoding; `WireFuzzLongTests`
(level 3) 1,500. Each test prints how many connections and frames it sent
and how many were answered or closed.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import struct
import tempfile
import time
import unittest

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

import zeo.server
from zeo.protocol import (
    Call, ClientConnection, ConnectionClosed, ErrorReply, ProtocolError, Reply)
from zeo.server.admin import status
from zeo.server.session import EXPOSED_METHODS
from zeo.server.tests.fuzzing import (
    MAXTID, METHODS, NOT_METHODS, Z64, hostile_pickles, hypothesis_settings)
from zeo.server.tests.rawclient import RawClient, connect_when_ready

SETTINGS = hypothesis_settings()

#: The message id of the closing question; random ones never reach it.
PROBE_ID = 0x5EED_F00D
#: How long the server may take to answer or close (a hang is a failure).
ANSWER_TIMEOUT = 20.0

_frame = struct.Struct(">I").pack


def frame(payload: bytes) -> bytes:
    return _frame(len(payload)) + payload


# -- strategies ----------------------------------------------------------------

def plain_values(ints=st.integers(-2**63, 2**64 - 1), extra=st.nothing()):
    leaves = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=12),
                       st.binary(max_size=20), st.sampled_from([Z64, MAXTID, "1"]), extra)
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4)), children,
                            max_size=3)),
        max_leaves=10)


MSGPACK_VALUES = plain_values()
# Pickle carries what msgpack cannot: big ints, tuples, sets, int keys.
PICKLE_VALUES = plain_values(
    st.integers(), st.one_of(st.frozensets(st.integers(), max_size=3),
                             st.tuples(st.integers(), st.text(max_size=3))))
NAMES = st.one_of(st.sampled_from(METHODS), st.sampled_from(NOT_METHODS), st.text(max_size=8))


# Any exposed method may come as a call, and is answered.
SYNC_NAMES = st.sampled_from(sorted(EXPOSED_METHODS))


def calls(values):
    """Well-formed calls (mostly of synchronous methods, whose errors are
    answered) and one-way calls, with random arguments."""
    args = st.lists(values, max_size=6).map(tuple)
    return st.one_of(
        st.tuples(st.integers(1, 1000), st.just(False), SYNC_NAMES, args),
        st.tuples(st.integers(1, 1000), st.just(False), SYNC_NAMES, args),
        st.tuples(st.just(0), st.just(True), NAMES, args),
        st.tuples(st.sampled_from([0, -1, 1]), st.booleans(), NAMES, args))


def shapes(values):
    """Messages of the wrong shape: any value, any field of any type."""
    return st.one_of(values, st.lists(values, max_size=6),
                     st.tuples(values, values, NAMES, values))


def mutated(draw, payload: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "append", "flip", "insert"]))
    at = draw(st.integers(0, max(len(payload) - 1, 0)))
    if how == "truncate":
        return payload[:at]
    if how == "append":
        return payload + draw(st.binary(min_size=1, max_size=8))
    if how == "flip" and payload:
        return payload[:at] + bytes([payload[at] ^ draw(st.integers(1, 255))]) + payload[at + 1:]
    return payload[:at] + draw(st.binary(min_size=1, max_size=8)) + payload[at:]


def msgpack_payload(draw, garbage: bool) -> bytes:
    kind = "call" if not garbage else draw(st.sampled_from(
        ["shape", "mutated", "random", "ext"]))
    if kind == "random":
        return draw(st.binary(max_size=60))
    if kind == "ext":
        return msgpack.packb((1, False, "ping", (msgpack.ExtType(draw(st.integers(0, 127)),
                                                                 b"x"),)))
    message = draw(calls(MSGPACK_VALUES) if kind == "call" else shapes(MSGPACK_VALUES))
    payload = msgpack.packb(message, use_bin_type=True)
    return mutated(draw, payload) if kind == "mutated" else payload


def embedded(hostile: bytes) -> bytes:
    """A call to loadBefore whose argument is the hostile pickle's object."""
    body = hostile[2:-1] if hostile.startswith(b"\x80") else hostile[:-1]
    return (b"\x80\x03(K\x01\x89X\x0a\x00\x00\x00loadBefore(" + body + b"t" + b"t.")


def pickle_payload(draw, garbage: bool, hostile: list[bytes]) -> bytes:
    kind = "call" if not garbage else draw(st.sampled_from(
        ["shape", "mutated", "random", "hostile", "embedded", "bomb"]))
    if kind == "random":
        return draw(st.binary(max_size=60))
    if kind == "hostile":
        return draw(st.sampled_from(hostile))
    if kind == "embedded":
        return embedded(draw(st.sampled_from(hostile)))
    if kind == "bomb":
        return draw(st.sampled_from([
            b"\x80\x03Nr\xff\xff\xff\x7f.",               # memo index 2**31
            b"\x80\x03B\x00\x00\x00\x80x.",               # 2 GiB of bytes announced
            b"\x80\x04\x8e" + b"\xff" * 8 + b"x.",        # BINBYTES8
            b"\x80\x03" + b"(" * 20000 + b"t" * 20000 + b".",   # deep nesting
        ]))
    message = draw(calls(PICKLE_VALUES) if kind == "call" else shapes(PICKLE_VALUES))
    # ZEO speaks protocol 3; older ones spell bytes with a refused global.
    payload = pickle.dumps(message, protocol=draw(st.sampled_from([3, 3, 3, 4, 5, 2, 0])))
    return mutated(draw, payload) if kind == "mutated" else payload


# -- the exchange ----------------------------------------------------------------

class WireFuzzer:
    """One connection's worth of hostile traffic; see the module docstring."""

    def __init__(self, address, encoding: str) -> None:
        self.address = address
        self.encoding = encoding
        self.outcomes: dict[str, int] = {}
        self.replies: dict[str, int] = {}   # to the fuzzed calls
        self.frames = 0

    def exchange(self, answer: bytes | None, frames: list[bytes], ending: str) -> str:
        """Send; return "answered" or "closed". *answer* None means the
        right handshake answer; *ending* is "probe", "cut", "huge" or "eof"."""
        sock = socket.create_connection(self.address, timeout=ANSWER_TIMEOUT)
        client = ClientConnection(native=False)
        try:
            client.receive_data(_read_frame(sock))
            for _ in client.events():
                break
            if answer is None:
                sock.sendall(client.data_to_send())
                outcome = self._send_and_wait(sock, client, frames, ending)
            else:
                # After a broken answer only a close (or a status, for
                # "ruok") may come back: read to the end, decode nothing.
                sock.sendall(frame(answer))
                outcome = self._send_and_wait(sock, None, frames, "eof")
        finally:
            sock.close()
        self.frames += len(frames)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return outcome

    def _send_and_wait(self, sock, client, frames, ending) -> str:
        try:
            sock.sendall(b"".join(frames))
            if ending == "probe":
                sock.sendall(client.send(Call(PROBE_ID, "register", ("1", False))))
            elif ending == "cut":
                sock.sendall(_frame(100) + b"only part of it")
                sock.shutdown(socket.SHUT_WR)
            elif ending == "huge":
                sock.sendall(_frame(0xFFFFFFFF))
            else:
                sock.shutdown(socket.SHUT_WR)
        except OSError:   # reset, broken pipe, not connected
            return "closed"   # the server closed while we were still sending
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 16)
            except ConnectionResetError:
                return "closed"
            except socket.timeout:
                break
            if client is None:
                if not data:
                    return "closed"
                continue
            try:
                client.receive_data(data)
                for event in client.events():
                    kind = type(event)
                    if kind is ErrorReply or kind is Reply:
                        if event.msgid == PROBE_ID:
                            return "answered"
                        self.replies[kind.__name__] = self.replies.get(kind.__name__, 0) + 1
                    if type(event) is ConnectionClosed:
                        return "closed"
            except ProtocolError as error:
                raise AssertionError(f"the server sent what a client cannot decode: {error}")
        raise AssertionError(f"the server neither answered nor closed in {ANSWER_TIMEOUT} s")


def _read_frame(sock) -> bytes:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed during the greeting")
        data += chunk
    return data


# -- the tests -------------------------------------------------------------------

class WireFuzzTests(unittest.TestCase):
    examples = 100

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-fuzz-wire-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.marker = os.path.join(self.directory, "MARKER")
        self.hostile = hostile_pickles(self.marker)

    def start(self, **options):
        address, stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"),
            blob_dir=os.path.join(self.directory, "blobs"), **options)
        self.addCleanup(stop)
        bystander = RawClient(address)
        self.addCleanup(bystander.close)
        return address, bystander

    def fuzz(self, address, encoding: str, payload) -> WireFuzzer:
        fuzzer = WireFuzzer(address, encoding)
        register = Call(1, "register", ("1", False))

        @settings(SETTINGS, max_examples=self.examples)
        @given(st.data())
        def run(data):
            draw = data.draw
            frames = []
            # (Choices by sampled_from, most likely first: Hypothesis draws
            # the boundaries of integer ranges far more often than the rest.)
            if draw(st.sampled_from([True, True, True, False])):   # past the register rule
                codec = msgpack.packb if encoding == "M" else (lambda m: pickle.dumps(m, 3))
                frames.append(frame(codec(tuple(register))))
            # Mostly calls that reach the session; the rest garbage, which
            # ends a connection at its first frame.
            garbage = draw(st.sampled_from([False, False, True]))
            count = draw(st.integers(1, 3 if garbage else 5))
            frames += [frame(payload(draw, garbage)) for _ in range(count)]
            answer = None
            if draw(st.sampled_from(["right"] * 9 + ["broken"])) == "broken":
                answer = draw(st.one_of(st.binary(max_size=12), st.sampled_from(
                    [b"ruok", b"M5", b"Z5", b"M4", b"Z5+zeo9", b"M5+zeo1:nope"])))
            ending = draw(st.sampled_from(["probe", "probe", "probe", "cut", "huge", "eof"]))
            fuzzer.exchange(answer, frames, ending)
            self.assertFalse(os.path.exists(self.marker), "a hostile pickle ran")

        run()
        return fuzzer

    def check_server_afterwards(self, address, bystander, fuzzer):
        self.assertIsNone(bystander.call("ping"))
        client = connect_when_ready(address)
        try:
            oid = client.call("new_oids", 1)[0]
            tid = client.commit(1, [(oid, Z64, b"after the fuzz")])
            self.assertEqual(client.call("loadBefore", oid, MAXTID), (b"after the fuzz", tid, None))
        finally:
            client.close()
        # The bystander learnt of the commit: the fuzzed connections are gone.
        self.assertEqual(bystander.wait_one_way("invalidateTransaction").args[0], tid)
        deadline = time.monotonic() + 10
        while status(address)["1"]["connections"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(status(address)["1"]["connections"], 1)   # just the bystander
        time.sleep(0.2)   # a Popen or os.system would have finished by now
        self.assertFalse(os.path.exists(self.marker), "a hostile pickle ran")
        print(f"\n    {self.id().rsplit('.', 1)[-1]}: {sum(fuzzer.outcomes.values())}"
              f" connections, {fuzzer.frames} frames; {fuzzer.outcomes}; replies to fuzzed"
              f" calls: {fuzzer.replies}")

    def test_msgpack(self):
        address, bystander = self.start(msgpack=True)
        fuzzer = self.fuzz(address, "M", msgpack_payload)
        self.check_server_afterwards(address, bystander, fuzzer)

    def test_pickle(self):
        address, bystander = self.start(msgpack=False)
        fuzzer = self.fuzz(address, "Z",
                           lambda draw, garbage: pickle_payload(draw, garbage, self.hostile))
        self.check_server_afterwards(address, bystander, fuzzer)


class WireFuzzLongTests(WireFuzzTests):
    level = 3
    examples = 1500


if __name__ == "__main__":
    unittest.main()
