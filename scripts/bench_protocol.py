#!/usr/bin/env python
"""Per-message cost of zeo.protocol against bare msgpack.

For a typical ``loadBefore`` request and its reply (a 200-byte record),
prints nanoseconds per message for:

* floor -- ``msgpack.unpackb(msgpack.packb(t, use_bin_type=True),
  raw=False, use_list=False)`` of the same wire tuple, i.e. what the
  reference does per message, minus framing and dispatch;
* ours -- ``send(event)`` on one connection (encode + frame),
  ``receive_data()`` on the peer (feed the frame reader) and
  ``next_event()`` (unframe + decode + validate + build the event);

and the ratio ours / floor.  For msgpack it also prints a lower bound
for this design: the same work (reused Packer, 4-byte header, bytearray
buffer, unpackb, ``message_from_wire`` validation and typed event) in one
inlined function, without the connection's state machine and error
handling.  The pickle rows run the connection path with encoding ``Z``
(restricted unpickler) and are compared both to the msgpack floor and to
a bare ``pickle.loads(pickle.dumps(t, 3))``.

Goal: ours <= 1.5 x floor for msgpack.  Timings are the best of several
repeats, to filter out noise from other processes.

With ``--pure-python`` the connections use the pure-Python code instead
of the compiled helper ``zeo.protocol._speedups`` (what an install without
a C compiler runs).

Run:  python scripts/bench_protocol.py [--number N] [--repeat R] [--pure-python]
(adds packages/zeo.protocol/src to sys.path if zeo.protocol isn't
installed).
"""

import argparse
import os
import pickle
import struct
import sys
import timeit

import msgpack


try:
    import zeo.protocol  # noqa: F401
except ImportError:
    sys.path.insert(
        0,
        os.path.join(
            os.path.dirname(os.path.abspath(__file__)),
            os.pardir,
            "packages",
            "zeo.protocol",
            "src",
        ),
    )

from zeo.protocol import Call  # noqa: E402
from zeo.protocol import ClientConnection  # noqa: E402
from zeo.protocol import Reply  # noqa: E402
from zeo.protocol import ServerConnection  # noqa: E402
from zeo.protocol import message_from_wire  # noqa: E402


OID = b"\x00\x00\x00\x00\x00\x00\x12\x34"
TID = b"\x03\xe8\x41\x22\x10\x00\x00\x01"
START = b"\x03\xe8\x41\x20\x00\x00\x00\x07"
DATA = bytes(range(200))

REQUEST = Call((OID, TID), "loadBefore", (OID, TID))
REPLY = Reply((OID, TID), (DATA, START, None))


def connected_pair(encoding):
    server = ServerConnection(encoding=encoding)
    client = ClientConnection()
    client.receive_data(server.initiate())
    list(client.events())
    server.receive_data(client.data_to_send())
    list(server.events())
    return server, client


def inlined_round_trip():
    """The lower bound: one function doing the same work (see docstring)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    unpackb = msgpack.unpackb
    pack_header = struct.Struct(">I").pack
    unpack_header = struct.Struct(">I").unpack_from
    buffer = bytearray()

    def round_trip(event):
        payload = pack(event)
        buffer.extend(pack_header(len(payload)) + payload)
        end = unpack_header(buffer)[0] + 4
        received = buffer[4:end]
        del buffer[:end]
        return message_from_wire(unpackb(received, raw=False, use_list=False))

    return round_trip


def use_pure_python():
    """Point the connection's hot path at the pure-Python functions."""
    from zeo.protocol import connection
    from zeo.protocol import msgpack_codec
    from zeo.protocol.events import _message_from_wire_py
    from zeo.protocol.framing import _frame_bytes_py
    from zeo.protocol.framing import _next_message_py

    msgpack_codec.message_from_wire = _message_from_wire_py
    msgpack_codec.MsgpackCodec.decode_message = staticmethod(
        msgpack_codec._decode_message_py)
    connection.frame_bytes = _frame_bytes_py
    connection.next_message = _next_message_py


def measure(cases, number, repeat):
    """Best ns/message for each (name, stmt, namespace) in *cases*.

    Rounds are interleaved -- every case runs once per round -- so that a
    burst of load from other processes hits all cases alike.
    """
    best = {}
    for _ in range(repeat):
        for name, stmt, namespace in cases:
            elapsed = timeit.timeit(stmt, globals=namespace, number=number)
            best[name] = min(best.get(name, float("inf")), elapsed / number * 1e9)
    return best


FLOOR = "unpackb(packb(wire, use_bin_type=True), raw=False, use_list=False)"
OURS = "receive_data(send(event)); next_event()"
BARE_PICKLE = "loads(dumps(wire, 3))"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument(
        "--pure-python", action="store_true",
        help="measure without the compiled helper zeo.protocol._speedups")
    options = parser.parse_args(argv)
    if options.pure_python:
        use_pure_python()

    cases = []
    for encoding in ("M", "Z"):
        server, client = connected_pair(encoding)
        for label, event, sender, receiver in (
            ("request", REQUEST, client, server),
            ("reply", REPLY, server, client),
        ):
            # Sanity: the path really delivers the event.
            receiver.receive_data(sender.send(event))
            assert receiver.next_event() == event
            namespace = {
                "packb": msgpack.packb,
                "unpackb": msgpack.unpackb,
                "dumps": pickle.dumps,
                "loads": pickle.loads,
                "wire": tuple(event),
                "event": event,
                "send": sender.send,
                "receive_data": receiver.receive_data,
                "next_event": receiver.next_event,
                "inlined": inlined_round_trip(),
            }
            cases.append(((encoding, label, "floor"), FLOOR, namespace))
            cases.append(((encoding, label, "ours"), OURS, namespace))
            if encoding == "M":
                assert namespace["inlined"](event) == event
                cases.append(((encoding, label, "inlined"), "inlined(event)", namespace))
            if encoding == "Z":
                cases.append(((encoding, label, "pickle"), BARE_PICKLE, namespace))
    best = measure(cases, options.number, options.repeat)

    if options.pure_python:
        print("Pure Python: without the compiled helper.")
    print(
        f"Python {sys.version.split()[0]}, msgpack"
        f" {'.'.join(map(str, msgpack.version))}, best of {options.repeat}"
        f" interleaved rounds x {options.number:,} messages (ns/message)"
    )
    header = f"{'loadBefore':<22}{'floor':>8}{'ours':>8}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    ratios = []
    for encoding in ("M", "Z"):
        for label in ("request", "reply"):
            floor = best[encoding, label, "floor"]
            ours = best[encoding, label, "ours"]
            name = f"{'msgpack' if encoding == 'M' else 'pickle'} {label}"
            print(f"{name:<22}{floor:>8.0f}{ours:>8.0f}{ours / floor:>8.2f}")
            if encoding == "M":
                ratios.append(ours / floor)
                low = best[encoding, label, "inlined"]
                print(f"{'  inlined lower bound':<22}{floor:>8.0f}{low:>8.0f}{low / floor:>8.2f}")
            else:
                bare = best[encoding, label, "pickle"]
                print(f"{'  vs bare pickle':<22}{bare:>8.0f}{ours:>8.0f}{ours / bare:>8.2f}")
    worst = max(ratios)
    verdict = "met" if worst <= 1.5 else "NOT met"
    print(f"\nmsgpack goal (ours <= 1.5 x floor): {verdict}; worst ratio {worst:.2f}")


if __name__ == "__main__":
    main()
