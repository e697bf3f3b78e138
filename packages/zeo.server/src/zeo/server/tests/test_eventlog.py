"""What the server's log file says: the real ``<eventlog>`` file of a real
``runzeo`` process, after real clients did what operators diagnose
(connections, registrations, commits, packs, refused and timed-out
connections), and the pieces of zeo.server.eventlog on their own."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

from zeo.server.eventlog import JSONFormatter, RefusalLog, echo_to_terminal, fields
from zeo.server.testing import free_port
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import ServerProcess, child_env

Z64 = b"\0" * 8


def wait_for(predicate, message, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


def lines_with(text, *needles):
    return [line for line in text.splitlines() if all(n in line for n in needles)]


class EventLogTests(unittest.TestCase):
    """A real runzeo with an ``<eventlog>`` file."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-eventlog-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def start(self, **options):
        server = ServerProcess(self.directory, log_file=True, **options)
        self.addCleanup(server.stop)
        return server

    def test_a_client_session_is_logged_from_accept_to_close(self):
        import ZODB
        from ZODB.FileStorage import FileStorage
        ZODB.DB(FileStorage(os.path.join(self.directory, "Data.fs"))).close()  # a root to pack
        server = self.start(zeo_options={"slow-commit-threshold": "0.2"})
        client = server.client()
        for _ in range(3):   # set again and again: logged once
            client.send("set_client_label", "worker-7")
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"first")])
        # A slow commit: the lock held past the threshold.
        client.send("tpc_begin", 2, b"", b"", {}, None, " ")
        client.send("storea", oid, client.call("lastTransaction"), b"second", 2)
        client.call("vote", 2)
        time.sleep(0.4)
        client.call("tpc_finish", 2)
        client.call("pack", time.time(), 1)
        client.close()
        wait_for(lambda: lines_with(server.event_log_text(), "worker-7", "connection closed"),
                 "no line for the closed connection")
        server.stop()
        log = server.event_log_text()
        port = f"127.0.0.1:{server.address[1]}"
        self.assertTrue(lines_with(log, "ready: serving on", port, server.event_log), log)
        accepted = lines_with(log, "INFO", "connection accepted (TCP), protocol Z5")
        self.assertTrue(accepted, log)
        self.assertTrue(lines_with(log, "INFO", "registered with storage '1', read-write"), log)
        self.assertEqual(len(lines_with(log, "INFO", "worker-7 (127.0.0.1:", "client label set")),
                         1, log)
        self.assertTrue(lines_with(log, "INFO", "worker-7", "pack of storage '1' started"), log)
        self.assertTrue(lines_with(log, "INFO", "worker-7", "pack of storage '1' finished in"),
                        log)
        slow = lines_with(log, "WARNING", "worker-7", "slow commit (committed)")
        self.assertEqual(len(slow), 1, log)
        self.assertIn("slow-commit-threshold 0.2 s", slow[0])
        closed = lines_with(log, "INFO", "worker-7", "connection closed: by the client (after")
        self.assertEqual(len(closed), 1, log)
        self.assertRegex(closed[0], r"\d+ bytes in, \d+ bytes out\)")
        # No line per request.
        self.assertFalse(lines_with(log, "new_oids"), log)
        self.assertFalse(lines_with(log, "storea"), log)

    def test_a_transaction_timeout_is_critical_and_names_the_client(self):
        server = self.start(zeo_options={"transaction-timeout": "0.5"})
        client = server.client()
        client.send("set_client_label", "stuck-app")
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storea", oid, Z64, b"data", 1)
        client.call("vote", 1)
        self.assertTrue(client.wait_closed())   # the server gave up on it
        wait_for(lambda: lines_with(server.event_log_text(), "connection closed"),
                 "the connection was not closed")
        log = server.event_log_text()
        critical = lines_with(log, "CRITICAL", "stuck-app (127.0.0.1:", "transaction timeout")
        self.assertEqual(len(critical), 1, log)
        self.assertTrue(lines_with(log, "stuck-app", "connection closed: transaction timeout"),
                        log)

    def test_a_disconnect_during_a_transaction_says_it_was_aborted(self):
        server = self.start()
        client = server.client()
        client.send("set_client_label", "leaver")
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.call("ping")
        client.close()
        wait_for(lambda: lines_with(server.event_log_text(), "leaver", "connection closed"),
                 "the connection was not closed")
        line, = lines_with(server.event_log_text(), "leaver", "connection closed")
        self.assertIn("WARNING", line)
        self.assertIn("by the client during a transaction, which was aborted", line)

    def test_a_port_scan_gives_a_bounded_number_of_lines(self):
        server = self.start(zeo_options={"max-refusal-log-lines": "3"})
        for _ in range(30):
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                while sock.recv(1000):   # closed by the server
                    pass
        wait_for(lambda: len(lines_with(server.event_log_text(), "refused:")) >= 3,
                 "the refusals were not logged")
        server.stop()
        log = server.event_log_text()
        refused = lines_with(log, "WARNING", "127.0.0.1:", ": refused: protocol error")
        self.assertEqual(len(refused), 3, log)
        summary = lines_with(log, "WARNING", "27 more refused connections")
        self.assertEqual(len(summary), 1, log)
        self.assertLess(len(lines_with(log, "zeo.server")), 20, log)

    def test_json_lines_carry_the_fields(self):
        server = self.start(log_formatter="zeo.server.eventlog.JSONFormatter")
        client = server.client()
        client.send("set_client_label", "shipper")
        client.call("ping")
        client.close()
        wait_for(lambda: lines_with(server.event_log_text(), "shipper", "connection closed"),
                 "the connection was not closed")
        server.stop()
        records = [json.loads(line) for line in server.event_log_text().splitlines()]
        for record in records:
            self.assertLessEqual({"time", "level", "logger", "message"}, set(record))
        closed, = [r for r in records if "shipper" in r["message"]
                   and "connection closed" in r["message"]]
        self.assertEqual(closed["level"], "INFO")
        self.assertEqual(closed["logger"], "zeo.server")
        self.assertEqual(closed["label"], "shipper")
        self.assertTrue(closed["peer"].startswith("127.0.0.1:"))
        self.assertEqual(closed["reason"], "by the client")
        self.assertIsInstance(closed["duration"], float)
        self.assertGreater(closed["bytes_in"], 0)
        self.assertGreater(closed["bytes_out"], 0)
        registered = [r for r in records if "registered" in r["message"]]
        self.assertEqual(registered[-1]["storage"], "1")
        self.assertIs(registered[-1]["read_only"], False)
        self.assertTrue(any(r["message"].startswith("ready: serving on") for r in records))


class TLSEventLogTests(unittest.TestCase):

    def setUp(self):
        import trustme
        self.directory = tempfile.mkdtemp(prefix="zeo-eventlog-tls-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.ca = trustme.CA()
        certificate = os.path.join(self.directory, "server.pem")
        self.ca.issue_cert("localhost", "127.0.0.1") \
            .private_key_and_cert_chain_pem.write_to_path(certificate)
        ca_file = os.path.join(self.directory, "ca.pem")
        self.ca.cert_pem.write_to_path(ca_file)
        self.zeo_text = (f"  <ssl>\n    certificate {certificate}\n"
                         f"    authenticate {ca_file}\n  </ssl>\n")

    def client_context(self, with_certificate=True):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        if with_certificate:
            self.ca.issue_cert("client@example.com").configure_cert(context)
        return context

    def test_refused_handshakes_are_logged_with_why_uvloop(self):
        self.check_refused_handshakes("uvloop")

    def test_refused_handshakes_are_logged_with_why_asyncio(self):
        self.check_refused_handshakes("asyncio")

    def check_refused_handshakes(self, event_loop):
        server = ServerProcess(
            self.directory, log_file=True, zeo_text=self.zeo_text,
            zeo_options={"event-loop": event_loop},
            client_options={"ssl_context": self.client_context(),
                            "server_hostname": "localhost"})
        self.addCleanup(server.stop)
        with self.assertRaises(OSError):   # no client certificate
            RawClient(server.address, ssl_context=self.client_context(False),
                      server_hostname="localhost", timeout=5).call("lastTransaction")
        with socket.create_connection(server.address, timeout=10) as sock:   # plain TCP
            sock.sendall(b"\0\0\0\x02M5")
            while sock.recv(1000):
                pass
        client = server.client()
        client.call("ping")
        client.close()
        wait_for(lambda: len(lines_with(server.event_log_text(), "refused: TLS")) >= 2,
                 "the refused handshakes were not logged")
        log = server.event_log_text()
        refused = lines_with(log, "WARNING", "127.0.0.1:", "refused: TLS handshake failed")
        self.assertEqual(len(refused), 2, log)
        self.assertTrue(any("CERTIFICATE" in line.upper() for line in refused), log)
        self.assertTrue(lines_with(log, "connection accepted (TCP over TLS), protocol Z5"), log)


class ConfigurationTests(unittest.TestCase):

    def load(self, keys=""):
        from zeo.server import zconfig
        directory = tempfile.mkdtemp(prefix="zeo-eventlog-conf-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "zeo.conf")
        with open(path, "w") as f:
            f.write(f"<zeo>\n  address 127.0.0.1:0\n{keys}</zeo>\n"
                    f"<filestorage 1>\n  path {directory}/Data.fs\n</filestorage>\n")
        return zconfig.load(path).config

    def test_defaults(self):
        config = self.load()
        self.assertEqual(config.slow_commit_threshold, 5.0)
        self.assertEqual(config.max_refusal_log_lines, 10)

    def test_keys(self):
        config = self.load("  slow-commit-threshold 0.5\n  max-refusal-log-lines 3\n")
        self.assertEqual(config.slow_commit_threshold, 0.5)
        self.assertEqual(config.max_refusal_log_lines, 3)

    def test_a_zero_threshold_turns_slow_commit_lines_off(self):
        self.assertIsNone(self.load("  slow-commit-threshold 0\n").slow_commit_threshold)

    def test_bad_values_are_refused(self):
        from zeo.server.config import ServerConfig
        for bad in ({"max_refusal_log_lines": 0}, {"slow_commit_threshold": -1}):
            with self.assertRaises(ValueError):
                ServerConfig(**bad)


class ForegroundTests(unittest.TestCase):
    """``zeoctl fg`` runs runzeo on the terminal: it says where it serves
    and logs, and shows the log there too."""

    def test_on_a_terminal_the_log_is_shown_as_well(self):
        import pty
        directory = tempfile.mkdtemp(prefix="zeo-eventlog-fg-")
        self.addCleanup(shutil.rmtree, directory, True)
        port = free_port()
        log_file = os.path.join(directory, "zeo.log")
        config = os.path.join(directory, "zeo.conf")
        with open(config, "w") as f:
            f.write(f"<zeo>\n  address 127.0.0.1:{port}\n</zeo>\n"
                    f"<filestorage 1>\n  path {directory}/Data.fs\n</filestorage>\n"
                    f"<eventlog>\n  <logfile>\n    path {log_file}\n  </logfile>\n</eventlog>\n")
        master, slave = pty.openpty()
        env = child_env()
        process = subprocess.Popen(
            [sys.executable, "-m", "zeo.server.runzeo", "-C", config],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        shown = b""
        try:
            deadline = time.monotonic() + 60
            while b"ready: serving on" not in shown:
                left = deadline - time.monotonic()
                self.assertGreater(left, 0, f"not shown on the terminal: {shown!r}")
                if select.select([master], [], [], min(left, 1.0))[0]:
                    shown += os.read(master, 10000)
        finally:
            process.terminate()
            process.wait(30)
            os.close(master)
        text = shown.decode()
        self.assertIn(f"ready: serving on 127.0.0.1:{port}", text)
        self.assertIn(f"logging to {log_file}", text)
        with open(log_file) as f:
            self.assertIn(f"ready: serving on 127.0.0.1:{port}", f.read())


class Clock:

    def __init__(self):
        self.now = 1000.0
        self.timers = []

    def call_later(self, delay, function):
        self.timers.append((self.now + delay, function))
        return self

    def cancel(self):
        self.timers.clear()

    def advance(self, seconds):
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, function in due:
            function()


class RefusalLogTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.logger = logging.getLogger("zeo.server.test-refusals")
        self.log = RefusalLog(self.logger, 2, lambda: self.clock.now, self.clock.call_later)

    def test_lines_past_the_limit_are_counted_in_one_line(self):
        with self.assertLogs(self.logger) as logged:
            for index in range(5):
                self.log.warning("refused %d", index, peer=f"p{index}")
            self.clock.advance(59)
            self.assertEqual(len(logged.output), 2)
            self.clock.advance(1)
        self.assertEqual(len(logged.output), 3)
        self.assertIn("3 more refused connections", logged.output[2])
        self.assertEqual(logged.records[2].count, 3)
        self.assertEqual(logged.records[0].peer, "p0")

    def test_a_new_interval_logs_again(self):
        with self.assertLogs(self.logger) as logged:
            self.log.warning("one")
            self.log.warning("two")
            self.clock.advance(61)
            self.log.warning("three")
        self.assertEqual(len(logged.output), 3)

    def test_closing_logs_the_count_so_far(self):
        with self.assertLogs(self.logger) as logged:
            for _ in range(4):
                self.log.warning("refused")
            self.log.close()
        self.assertIn("2 more refused connections", logged.output[-1])


class FormatterTests(unittest.TestCase):

    def test_json_line(self):
        record = logging.LogRecord("zeo.server", logging.WARNING, __file__, 1,
                                   "%s: refused", ("x" * 3,), None)
        record.__dict__.update(fields(peer="1.2.3.4:5", reason="why", tls=True))
        line = json.loads(JSONFormatter("ignored %(message)s", None, style="%").format(record))
        self.assertEqual(line["message"], "xxx: refused")
        self.assertEqual(line["level"], "WARNING")
        self.assertEqual(line["logger"], "zeo.server")
        self.assertEqual((line["peer"], line["reason"], line["tls"]), ("1.2.3.4:5", "why", True))
        self.assertTrue(line["time"].endswith("+00:00"))

    def test_unknown_fields_are_refused(self):
        with self.assertRaises(ValueError):
            fields(message="clash")

    def test_no_echo_when_not_a_terminal(self):
        self.assertFalse(echo_to_terminal(io.StringIO()))


if __name__ == "__main__":
    unittest.main()
