"""Hypothesis properties across the layers: round trips through whole
connections, and fuzzing with the rule "events or RemoteProtocolError,
nothing else"."""

import unittest

import msgpack
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.connection import NEED_DATA
from zeo.protocol.connection import ClientConnection
from zeo.protocol.connection import ConnectionState
from zeo.protocol.connection import ServerConnection
from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import ConnectionClosed
from zeo.protocol.events import Event
from zeo.protocol.framing import frame
from zeo.protocol.tests.support import client_messages
from zeo.protocol.tests.support import connected_pair
from zeo.protocol.tests.support import plain_values
from zeo.protocol.tests.support import server_messages


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def drain_or_remote_error(conn, chunks):
    """Feed *chunks*; only events and RemoteProtocolError may come out."""
    events = []
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                assert isinstance(event, Event), event
                events.append(event)
                if type(event) is ConnectionClosed:
                    return events
    except RemoteProtocolError:
        assert conn.state is ConnectionState.ERROR
        try:
            conn.next_event()
        except LocalProtocolError:
            pass
        else:  # pragma: no cover
            raise AssertionError("a failed connection must refuse further use")
    return events


def split(data, cuts):
    chunks, start, i = [], 0, 0
    while start < len(data):
        size = cuts[i % len(cuts)]
        chunks.append(data[start:start + size])
        start += size
        i += 1
    return chunks


encodings = st.sampled_from("MZ")
cut_lists = st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=5)


class RoundTripProperties(unittest.TestCase):

    @SETTINGS
    @given(encodings, st.lists(client_messages, max_size=5), cut_lists)
    def test_client_to_server(self, encoding, events, cuts):
        server, client = connected_pair(encoding)
        data = b"".join(client.send(event) for event in events)
        received = drain_or_remote_error(server, split(data, cuts))
        self.assertEqual(received, events)

    @SETTINGS
    @given(encodings, st.lists(server_messages, max_size=5), cut_lists)
    def test_server_to_client(self, encoding, events, cuts):
        server, client = connected_pair(encoding)
        data = b"".join(server.send(event) for event in events)
        received = drain_or_remote_error(client, split(data, cuts))
        self.assertEqual(received, events)


class FuzzProperties(unittest.TestCase):

    @SETTINGS
    @given(encodings, st.binary(max_size=200), cut_lists)
    def test_random_bytes_into_a_greeted_server(self, encoding, data, cuts):
        server = ServerConnection(encoding=encoding)
        server.initiate()
        drain_or_remote_error(server, split(data, cuts))

    @SETTINGS
    @given(st.binary(max_size=200), cut_lists)
    def test_random_bytes_into_a_fresh_client(self, data, cuts):
        drain_or_remote_error(ClientConnection(), split(data, cuts))

    @SETTINGS
    @given(encodings, st.lists(st.binary(max_size=60), max_size=4), st.booleans())
    def test_random_frames_into_open_connections(self, encoding, payloads, eof):
        server, client = connected_pair(encoding)
        data = b"".join(frame(payload) for payload in payloads)
        for conn in (server, client):
            chunks = [data, b""] if eof else [data]
            drain_or_remote_error(conn, chunks)

    @SETTINGS
    @given(
        st.tuples(
            st.one_of(st.integers(-2, 3), plain_values),
            st.one_of(st.booleans(), st.integers(-1, 3), plain_values),
            st.one_of(st.sampled_from(["x", ".reply", ""]), plain_values),
            st.one_of(plain_values, st.lists(plain_values, max_size=2)),
        )
    )
    def test_random_well_encoded_tuples(self, wire):
        for encoding in "MZ":
            server, client = connected_pair(encoding)
            if encoding == "M":
                payload = msgpack.packb(wire, use_bin_type=True)
            else:
                payload = __import__("pickle").dumps(wire, 3)
            for conn in (server, client):
                drain_or_remote_error(conn, [frame(payload)])

    @SETTINGS
    @given(encodings, st.lists(client_messages, min_size=1, max_size=3), st.data())
    def test_corrupted_valid_streams(self, encoding, events, data):
        server, client = connected_pair(encoding)
        stream = bytearray(b"".join(client.send(event) for event in events))
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(stream) - 1))
            stream[index] = data.draw(st.integers(0, 255))
        drain_or_remote_error(server, [bytes(stream)])
