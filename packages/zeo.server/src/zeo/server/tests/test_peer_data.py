"""Peer data in log lines, error replies and status; calls in either mode.

Issue #17: a huge method name or storage name made a log line and an
error reply of the same size (6); a huge client label made every anonymous
``ruok`` answer huge (7); an error reply that could not be built dropped
the connection (9); a method sent in the other mode (a call of a one-way
method, or the reverse) closed the connection (12). Every test runs a
real server on 127.0.0.1 and reads its real log records.
"""

import logging
import os
import shutil
import socket
import struct
import tempfile
import textwrap
import unittest

from ZODB.FileStorage import FileStorage

import zeo.server
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.support import run
from zeo.server.tools import OK, status_main
from zeo.server.zconfig import load

Z64 = b"\0" * 8
MIB = 1 << 20
#: What "bounded" means here: far below the megabytes that were sent.
SMALL = 64 * 1024


class LogRecords(logging.Handler):
    """Every record of the ``zeo.server`` logger, formatted."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


class PeerDataTests(unittest.TestCase):
    msgpack = True

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-peer-data-")
        self.log = LogRecords()
        logger = logging.getLogger("zeo.server")
        logger.addHandler(self.log)
        self.addCleanup(logger.removeHandler, self.log)
        self.address, self.stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"), msgpack=self.msgpack,
            max_status_labels=5)
        client = self.client()
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"x")])
        client.close()

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.directory)

    def client(self, **options):
        client = RawClient(self.address, **options)
        self.addCleanup(client.close)
        return client

    def assert_log_bounded(self):
        self.assertTrue(self.log.lines)
        longest = max(self.log.lines, key=len)
        self.assertLess(len(longest), 2000, longest[:300])

    def assert_usable(self, client):
        self.assertIsNone(client.call("ping"))
        self.assertEqual(len(client.call("lastTransaction")), 8)

    def assert_error_small(self, client, method, *args):
        with self.assertRaises(ServerError) as caught:
            client.call(method, *args)
        self.assertLess(len(repr(caught.exception.payload)), SMALL)
        return caught.exception

    # -- 6: huge peer values --------------------------------------------------

    def test_a_huge_method_name_makes_a_short_log_line(self):
        client = self.client()
        client.send_call("m" * (4 * MIB))
        self.assertTrue(client.wait_closed())
        self.assertTrue(any("unknown method 'mmm" in line for line in self.log.lines))
        self.assert_log_bounded()
        self.assert_usable(self.client())   # the loop goes on

    def test_a_huge_storage_name_makes_a_short_error_and_log_line(self):
        client = self.client(register=None)
        error = self.assert_error_small(client, "register", "s" * (4 * MIB), False)
        self.assertEqual(error.class_name, "builtins.ValueError")
        self.assertIn("unknown storage: 'sss", error.payload[0])
        self.assert_log_bounded()
        client.call("register", "1", False)
        self.assert_usable(client)

    def test_huge_arguments_make_short_errors(self):
        client = self.client()
        huge_text, huge_bytes = "\n" * (4 * MIB), b"\xff" * (4 * MIB)
        self.assert_error_small(client, "iterator_next", huge_text)
        self.assert_error_small(client, "loadBefore", huge_bytes, Z64)
        self.assert_error_small(client, "vote", huge_text)
        self.assert_error_small(client, "iterator_record_start", 1, huge_bytes)
        self.assert_log_bounded()
        self.assertFalse(any("\n" in line for line in self.log.lines))
        self.assert_usable(client)

    # -- 12: either mode --------------------------------------------------------

    def test_a_one_way_method_called_is_answered(self):
        client = self.client()
        self.assertIsNone(client.call("iterator_gc", [1, 2]))
        self.assertIsNone(client.call("set_client_label", "called"))
        # Its error comes back as an error reply; the connection stays.
        error = self.assert_error_small(client, "storea", Z64, Z64, b"x", 1)
        self.assertEqual(error.class_name, "ZODB.POSException.StorageTransactionError")
        self.assertTrue(any(line.startswith("called (127.0.0.1:") for line in self.log.lines))
        self.assert_usable(client)

    def test_a_call_sent_one_way_is_not_answered_and_keeps_the_connection(self):
        client = self.client()
        client.send("ping")
        client.send("lastTransaction")
        client.send("new_oids", 3)
        self.assert_usable(client)
        self.assertFalse(client.replies)

    def test_a_failing_call_sent_one_way_closes_the_connection(self):
        # As the reference: a one-way message's error cannot be reported.
        client = self.client()
        client.send("loadBefore", "not an oid", Z64)
        self.assertTrue(client.wait_closed())
        self.assert_log_bounded()
        self.assert_usable(self.client())

    # -- 7: labels and ruok -----------------------------------------------------

    def ruok(self):
        """The raw ``ruok`` answer (greeting and status frames)."""
        with socket.create_connection(self.address, timeout=30) as sock:
            sock.sendall(struct.pack(">I", 4) + b"ruok")
            data = b""
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return data
                data += chunk

    def test_a_huge_label_leaves_ruok_small(self):
        client = self.client()
        client.send("set_client_label", "L" * (20 * MIB))
        client.send("set_client_label", "\n" + "M" * (20 * MIB))
        self.assert_usable(client)
        self.assertLess(len(self.ruok()), SMALL)
        labels = client.call("server_status")["connections_by_label"]
        self.assertIn("?" + "M" * 199, labels)
        self.assertLessEqual(max(map(len, labels)), 200)
        self.assert_log_bounded()
        self.assertEqual(sum("client label of" in line for line in self.log.lines), 1)
        code, out, _ = run(status_main, f"127.0.0.1:{self.address[1]}")
        self.assertEqual(code, OK, out)
        self.assertIn("OK: storage 1: ", out)

    def test_ruok_lists_only_the_busiest_labels(self):
        for index in range(8):
            for _ in range(1 + index % 2):
                client = self.client()
                client.send("set_client_label", f"{index}" * 200)
                client.call("ping")   # the label is set
        status = client.call("server_status")
        by_label = status["connections_by_label"]
        self.assertEqual(len(by_label), 5)
        self.assertEqual(sorted(by_label.values()), [1, 2, 2, 2, 2])
        self.assertEqual(status["connections_by_label_omitted"],
                         status["connections"] - 9)
        self.assertLess(len(self.ruok()), SMALL)


class OddStorage(FileStorage):
    """getTid answers what no encoding can carry."""

    def getTid(self, oid):
        return lambda: None


class UnencodableResultTests(unittest.TestCase):
    """Issue #17 (9): a result that cannot be encoded is answered with an
    error (as the reference does), not by dropping the connection."""

    def test_an_unencodable_result_is_answered_with_an_error(self):
        directory = tempfile.mkdtemp(prefix="zeo-peer-data-")
        self.addCleanup(shutil.rmtree, directory)
        for msgpack in (True, False):
            storage = OddStorage(os.path.join(directory, f"{msgpack}.fs"))
            address, stop = zeo.server.server(storages={"1": storage}, msgpack=msgpack)
            self.addCleanup(stop)
            client = RawClient(address)
            self.addCleanup(client.close)
            with self.assertRaises(ServerError) as caught:
                client.call("getTid", Z64)
            self.assertEqual(caught.exception.class_name, "builtins.ValueError")
            self.assertIsNone(client.call("ping"))


class FailedCallLogTests(unittest.TestCase):
    """A client sending bad calls cannot fill the log: failed calls are
    logged at most max-refusal-log-lines times a minute, then counted."""

    def test_failed_calls_are_rate_limited(self):
        directory = tempfile.mkdtemp(prefix="zeo-peer-data-")
        self.addCleanup(shutil.rmtree, directory)
        log = LogRecords()
        logger = logging.getLogger("zeo.server")
        logger.addHandler(log)
        self.addCleanup(logger.removeHandler, log)
        address, stop = zeo.server.server(
            path=os.path.join(directory, "Data.fs"), max_refusal_log_lines=3)
        client = RawClient(address)
        try:
            for _ in range(30):
                with self.assertRaises(ServerError):
                    client.call("loadSerial", b"bad", b"bad")
            self.assertIsNone(client.call("ping"))   # still served
        finally:
            client.close()
            stop()   # closing logs the count so far
        raised = [line for line in log.lines if "loadSerial raised" in line]
        self.assertEqual(len(raised), 3, raised)
        summary = [line for line in log.lines if "more failed calls" in line]
        self.assertEqual(len(summary), 1, log.lines[-5:])
        self.assertIn("27 more failed calls", summary[0])


class ConfigTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-peer-data-")
        self.addCleanup(shutil.rmtree, self.directory)

    def test_zconfig_keys(self):
        config = os.path.join(self.directory, "zeo.conf")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:0
                  max-label-length 80
                  max-status-labels 7
                </zeo>
                <filestorage 1>
                  path {self.directory}/Other.fs
                </filestorage>
                """))
        settings = load(config)
        self.assertEqual(settings.config.max_label_length, 80)
        self.assertEqual(settings.config.max_status_labels, 7)


class PicklePeerDataTests(PeerDataTests):
    msgpack = False

    # -- 9: every call is answered (msgpack carries no int of 5000 digits) --

    def test_an_error_about_an_int_repr_refuses_is_answered(self):
        client = self.client()
        error = self.assert_error_small(client, "iterator_next", 10**5000)
        self.assertEqual((error.class_name, error.payload),
                         ("builtins.KeyError", ("<int of 16610 bits>",)))
        self.assert_error_small(client, "iterator_record_start", -(10**5000), Z64)
        self.assert_log_bounded()
        self.assert_usable(client)


if __name__ == "__main__":
    unittest.main()
