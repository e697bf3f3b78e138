"""The monitor endpoint: metrics scraped from a real server with real
clients, the status page over HTTP and in a headless browser, the JSON."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
import urllib.error
import urllib.request

import zope.event
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families)
from prometheus_client.parser import text_string_to_metric_families
from ZODB.FileStorage import FileStorage
from ZODB.tests.MinPO import MinPO
from ZODB.tests.StorageTestBase import zodb_pickle

import zeo.server
from zeo.server.commit_lock import CommitLock
from zeo.server.config import ServerConfig
from zeo.server.interfaces import IServing
from zeo.server.monitor import monitor_address
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.support import ServerProcess, child_env, free_port, wait_until
from zeo.server.stats import LATENCY_BOUNDS, StorageStats, Timing
from zeo.server.zconfig import load

Z64 = b"\0" * 8
#: A label a hostile client might choose: it must reach the page escaped.
EVIL_LABEL = '<script>alert("x")</script>&'
HOLDER_LABEL = "holder <of the lock>"


def fetch(address, path, accept=None):
    request = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers.get("Content-Type"), response.read().decode("utf-8")


def samples(text, parse=text_string_to_metric_families):
    """{(sample name, frozenset(labels)): value} of an exposition."""
    found = {}
    for family in parse(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found, name, **labels):
    return found[(name, frozenset(labels.items()))]


class MonitorServer:
    """A server in this process with the monitor on a free port."""

    def __init__(self, test, **options):
        self.directory = tempfile.mkdtemp(prefix="zeo-monitor-")
        test.addCleanup(shutil.rmtree, self.directory, True)
        served = []
        zope.event.subscribers.append(served.append)
        try:
            storage = FileStorage(os.path.join(self.directory, "Data.fs"))
            self.address, stop = zeo.server.server(
                storages={"1": storage}, monitor_address=("127.0.0.1", 0), **options)
        finally:
            zope.event.subscribers.remove(served.append)
        test.addCleanup(stop)
        self.server = [e for e in served if IServing.providedBy(e)][0].server
        self.monitor = self.server.monitor.address

    def client(self, test, label=None):
        client = RawClient(self.address)
        test.addCleanup(client.close)
        if label is not None:
            client.send("set_client_label", label)
        return client

    def metrics(self, accept=None):
        return fetch(self.monitor, "/metrics", accept)

    def json(self):
        return json.loads(fetch(self.monitor, "/status.json")[1])


class Scenario:
    """One commit, one conflict, a client holding the commit lock (voted,
    not finished) and one whose vote waits for it."""

    def __init__(self, test, **options):
        self.server = server = MonitorServer(test, **options)
        committer = server.client(test, EVIL_LABEL)
        oid = committer.call("new_oids", 1)[0]
        self.tid = committer.commit(b"t1", [(oid, Z64, zodb_pickle(MinPO(1)))])
        # A store based on the old serial: ConflictError at the vote.
        conflicting = server.client(test, "conflicting")
        conflicting.send("tpc_begin", b"t2", b"", b"", {}, None, " ")
        conflicting.send("storea", oid, Z64, zodb_pickle(MinPO(2)), b"t2")
        with test.assertRaises(ServerError) as raised:
            conflicting.call("vote", b"t2")
        test.assertIn("ConflictError", raised.exception.class_name)
        conflicting.call("tpc_abort", b"t2")
        # Voted, never finished: it holds the lock.
        self.holder = server.client(test, HOLDER_LABEL)
        self.holder.send("tpc_begin", b"t3", b"", b"", {}, None, " ")
        self.holder.send("storea", oid, self.tid, zodb_pickle(MinPO(3)), b"t3")
        self.holder.call("vote", b"t3")
        # Its vote waits (no reply until the holder is done).
        self.waiter = server.client(test, "waiter")
        self.waiter.send("tpc_begin", b"t4", b"", b"", {}, None, " ")
        self.waiter.send_call("vote", b"t4")
        lock = server.server.storages["1"].lock
        wait_until(lambda: lock.waiting == 1)


class MetricsTests(unittest.TestCase):

    def test_the_scrape_shows_commits_conflicts_and_the_lock(self):
        scenario = Scenario(self)
        content_type, text = scenario.server.metrics()
        self.assertTrue(content_type.startswith("text/plain"), content_type)
        found = samples(text)
        self.assertEqual(value(found, "zeo_commits_total", storage="1"), 1)
        self.assertEqual(value(found, "zeo_conflicts_total", storage="1"), 1)
        self.assertEqual(value(found, "zeo_aborts_total", storage="1"), 1)
        self.assertGreaterEqual(value(found, "zeo_stores_total", storage="1"), 3)
        self.assertEqual(value(found, "zeo_connections", storage="1", state="committing"), 1)
        self.assertEqual(value(found, "zeo_connections", storage="1", state="waiting"), 1)
        self.assertEqual(value(found, "zeo_connections", storage="1", state="idle"), 2)
        self.assertEqual(value(found, "zeo_commit_lock_waiting", storage="1"), 1)
        self.assertGreater(value(found, "zeo_commit_lock_held_seconds", storage="1"), 0)
        self.assertEqual(value(found, "zeo_active_transactions", storage="1"), 2)
        # Three grants (commit, conflict, holder), two releases so far.
        self.assertEqual(value(found, "zeo_commit_lock_wait_seconds_count", storage="1"), 3)
        self.assertEqual(
            value(found, "zeo_commit_lock_wait_seconds_bucket", storage="1", le="+Inf"), 3)
        self.assertEqual(value(found, "zeo_commit_lock_hold_seconds_count", storage="1"), 2)
        # Votes answered: the commit's, the conflict's and the holder's.
        self.assertEqual(value(found, "zeo_vote_duration_seconds_count", storage="1"), 3)
        self.assertEqual(value(found, "zeo_finish_duration_seconds_count", storage="1"), 1)
        self.assertGreater(value(found, "zeo_received_bytes_total", storage="1"), 0)
        self.assertGreater(value(found, "zeo_sent_bytes_total", storage="1"), 0)
        self.assertGreater(value(found, "zeo_storage_size_bytes", storage="1"), 4)
        self.assertEqual(value(found, "zeo_invalidation_queue_length", storage="1"),
                         len(scenario.server.server.storages["1"].queue))
        self.assertGreater(value(found, "zeo_spool_bytes", storage="1"), 0)
        self.assertEqual(value(found, "zeo_open_iterators", storage="1"), 0)
        self.assertEqual(value(found, "zeo_refusals_total", limit="max-connections",
                               storage=""), 0)
        self.assertEqual(value(found, "zeo_refusals_total", limit="reader-stall-timeout",
                               storage="1"), 0)
        self.assertGreater(value(found, "process_resident_memory_bytes"), 0)
        # Buckets are cumulative and end with the count.
        buckets = [v for (name, labels), v in found.items()
                   if name == "zeo_commit_lock_hold_seconds_bucket"]
        self.assertEqual(max(buckets), 2)

    def test_openmetrics_when_asked(self):
        server = MonitorServer(self)
        server.client(self).commit(b"t", [(Z64, Z64, zodb_pickle(MinPO(0)))])
        content_type, text = server.metrics(
            accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(text.endswith("# EOF\n"))
        found = samples(text, openmetrics_families)
        self.assertEqual(value(found, "zeo_commits_total", storage="1"), 1)

    def test_refusals_by_limit(self):
        server = MonitorServer(self, max_connections=1, max_iterators=1,
                               max_spool_size=1000)
        client = server.client(self)
        refused = socket.create_connection(server.address, timeout=10)
        self.assertEqual(refused.recv(100), b"")   # closed on accept
        refused.close()
        client.call("iterator_start", None, None)
        with self.assertRaises(ServerError):
            client.call("iterator_start", None, None)
        client.send("tpc_begin", b"t", b"", b"", {}, None, " ")
        client.send("storea", Z64, Z64, b"x" * 2000, b"t")
        self.assertTrue(client.wait_closed())   # a one-way store that fails
        found = samples(server.metrics()[1])
        for limit in ("max-connections", "max-iterators", "max-spool-size"):
            self.assertEqual(value(found, "zeo_refusals_total", limit=limit, storage=""), 1,
                             limit)
        self.assertEqual(value(found, "zeo_refusals_total", limit="max-spool-total",
                               storage=""), 0)
        self.assertEqual(server.json()["server"]["refusals"],
                         {"max-connections": 1, "max-iterators": 1, "max-spool-size": 1})

    def test_a_transaction_timeout_is_counted(self):
        scenario = Scenario(self, transaction_timeout=0.5)
        self.assertTrue(scenario.holder.wait_closed())
        with self.assertRaises(ServerError) as raised:
            scenario.waiter.wait_reply(scenario.waiter.next_id)
        self.assertIn("ConflictError", raised.exception.class_name)
        found = samples(scenario.server.metrics()[1])
        self.assertEqual(value(found, "zeo_transaction_timeouts_total", storage="1"), 1)
        self.assertEqual(value(found, "zeo_refusals_total", limit="transaction-timeout",
                               storage="1"), 1)
        self.assertEqual(value(found, "zeo_connections", storage="1", state="committing"), 0)


class StatusPageTests(unittest.TestCase):

    def test_json_shows_the_holder_the_waiter_and_every_connection(self):
        scenario = Scenario(self)
        data = scenario.server.json()
        storage, = data["storages"]
        self.assertEqual(storage["name"], "1")
        self.assertEqual(storage["last_tid"], scenario.tid.hex())
        self.assertEqual(storage["lock"]["holder"], HOLDER_LABEL)
        self.assertEqual([w["label"] for w in storage["lock"]["waiters"]], ["waiter"])
        self.assertEqual(storage["counters"]["commits"], 1)
        states = {c["label"]: c["state"] for c in data["connections"]}
        self.assertEqual(states, {EVIL_LABEL: "idle", "conflicting": "idle",
                                  HOLDER_LABEL: "committing", "waiter": "waiting"})
        holder = [c for c in data["connections"] if c["label"] == HOLDER_LABEL][0]
        self.assertEqual(holder["protocol"], "Z5")  # the default encoding
        self.assertEqual(holder["storage"], "1")
        self.assertTrue(holder["address"].startswith("127.0.0.1:"))
        self.assertGreaterEqual(holder["state_for"], 0)
        self.assertEqual(data["connections"][0]["state"], "committing")  # busiest first
        names = [t["name"] for t in data["threads"]]
        self.assertIn("MainThread", names)
        self.assertTrue(any("zeo.server" in t["stack"] for t in data["threads"]))

    def test_the_page_escapes_what_clients_send(self):
        scenario = Scenario(self)
        content_type, page = fetch(scenario.server.monitor, "/")
        self.assertEqual(content_type, "text/html; charset=utf-8")
        self.assertNotIn("<script>", page)
        self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;", page)
        self.assertIn("Commit lock held by <b>holder &lt;of the lock&gt;</b>", page)
        self.assertIn('<meta http-equiv="refresh"', page)

    def test_slow_transactions_are_listed(self):
        server = MonitorServer(self, monitor_slow_transaction=0.05)
        client = server.client(self, "slow one")
        client.send("tpc_begin", b"t", b"", b"", {}, None, " ")
        client.send("storea", Z64, Z64, zodb_pickle(MinPO(0)), b"t")
        client.call("vote", b"t")
        time.sleep(0.1)
        client.call("tpc_finish", b"t")
        slow, = server.json()["storages"][0]["slow_transactions"]
        self.assertEqual(slow["label"], "slow one")
        self.assertGreaterEqual(slow["held"], 0.05)
        self.assertIn("slow one", fetch(server.monitor, "/")[1])

    def test_what_is_not_a_page(self):
        server = MonitorServer(self)
        with self.assertRaises(urllib.error.HTTPError) as raised:
            fetch(server.monitor, "/nothing")
        self.assertEqual(raised.exception.code, 404)
        request = urllib.request.Request(
            f"http://{server.monitor[0]}:{server.monitor[1]}/metrics", data=b"x")
        with self.assertRaises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=30)
        self.assertEqual(raised.exception.code, 405)
        with socket.create_connection(server.monitor, timeout=10) as sock:
            sock.sendall(b"GET /" + b"x" * 20000 + b" HTTP/1.0\r\n\r\n")
            self.assertTrue(sock.recv(100).startswith(b"HTTP/1.0 400"))
        # The server still answers.
        self.assertIn("zeo_commits_total", server.metrics()[1])


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserTests(unittest.TestCase):
    """The page in a real headless browser (Debian's chromium)."""

    def test_the_page_renders_in_chromium_and_shows_the_lock_holder(self):
        chromium = find_chromium()
        self.assertIsNotNone(chromium, (
            "no chromium: the status page is checked in a headless browser;"
            " install it with `apt-get install -y chromium` (Debian)"))
        scenario = Scenario(self)
        profile = tempfile.mkdtemp(prefix="zeo-monitor-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        host, port = scenario.server.monitor
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", f"http://{host}:{port}/"],
            capture_output=True, timeout=120, text=True)
        dom = result.stdout
        self.assertIn("zeo server status", dom, result.stderr[-2000:])
        self.assertIn('class="lock-holder"', dom)
        self.assertIn("holder &lt;of the lock&gt;", dom)
        self.assertIn("state-committing", dom)
        # The browser parsed the hostile label as text, not as a script.
        self.assertNotIn("<script>", dom)


class ConfigurationTests(unittest.TestCase):

    def write(self, keys):
        directory = tempfile.mkdtemp(prefix="zeo-monitor-conf-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "zeo.conf")
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:{free_port()}
                  {keys}
                </zeo>
                <filestorage 1>
                  path {directory}/Data.fs
                </filestorage>
                """))
        return path

    def test_off_by_default(self):
        config = load(self.write("")).config
        self.assertIsNone(config.monitor_address)
        self.assertEqual(config.monitor_slow_transaction, 1.0)
        self.assertIsNone(ServerConfig().monitor_address)

    def test_keys(self):
        config = load(self.write("monitor-address 9102\n  monitor-slow-transaction 2.5")).config
        self.assertEqual(config.monitor_address, ("127.0.0.1", 9102))
        self.assertEqual(config.monitor_slow_transaction, 2.5)

    def test_address_forms(self):
        self.assertEqual(monitor_address("9100"), ("127.0.0.1", 9100))
        self.assertEqual(monitor_address(":9100"), ("127.0.0.1", 9100))
        self.assertEqual(monitor_address("0.0.0.0:9100"), ("0.0.0.0", 9100))
        self.assertEqual(monitor_address("[::1]:9100"), ("::1", 9100))
        for bad in ("", "host", "host:port", "70000", "-1"):
            with self.assertRaises(ValueError, msg=bad):
                monitor_address(bad)
        with self.assertRaises(ValueError):
            ServerConfig(monitor_address="127.0.0.1:9100")
        with self.assertRaises(ValueError):
            ServerConfig(monitor_slow_transaction=0)

    def test_without_the_library_the_key_is_refused_clearly(self):
        # A Python where prometheus_client cannot be imported.
        code = textwrap.dedent("""\
            import sys
            sys.modules["prometheus_client"] = None
            from zeo.server.zconfig import load
            try:
                load(sys.argv[1])
            except Exception as error:
                print(type(error).__name__, error)
            else:
                print("loaded")
            load(sys.argv[2])   # without the key, nothing needs the library
            print("plain config loaded")
            """)
        result = subprocess.run(
            [sys.executable, "-c", code, self.write("monitor-address 9102"), self.write("")],
            capture_output=True, text=True, timeout=60,
            env=child_env())
        self.assertIn("install zeo.server[monitor]", result.stdout, result.stderr)
        self.assertIn("plain config loaded", result.stdout, result.stderr)

    def test_runzeo_serves_the_endpoint_on_localhost(self):
        directory = tempfile.mkdtemp(prefix="zeo-monitor-runzeo-")
        self.addCleanup(shutil.rmtree, directory, True)
        port = free_port()
        process = ServerProcess(directory, zeo_options={"monitor-address": str(port)})
        self.addCleanup(process.stop)
        client = process.client()
        self.addCleanup(client.close)
        client.commit(b"t", [(Z64, Z64, zodb_pickle(MinPO(0)))])
        found = samples(fetch(("127.0.0.1", port), "/metrics")[1])
        self.assertEqual(value(found, "zeo_commits_total", storage="1"), 1)
        self.assertEqual(value(found, "zeo_connections", storage="1", state="idle"), 1)
        self.assertIn("monitor endpoint on http://127.0.0.1:%d/" % port, process.log_text())
        self.assertEqual(process.stop(), 0)


class CounterTests(unittest.TestCase):
    """What the server counts for the monitor, without a server."""

    def test_timing_buckets(self):
        timing = Timing()
        for seconds in (0.0, 0.001, 0.0011, 0.3, 61.0, -1.0):
            timing.observe(seconds)
        self.assertEqual(timing.count, 6)
        self.assertEqual(len(timing.counts), len(LATENCY_BOUNDS) + 1)
        self.assertEqual(timing.counts[0], 3)    # <= 0.001 (a negative one as 0)
        self.assertEqual(timing.counts[1], 1)    # <= 0.0025
        self.assertEqual(timing.counts[LATENCY_BOUNDS.index(0.5)], 1)
        self.assertEqual(timing.counts[-1], 1)   # above the last bound
        self.assertAlmostEqual(timing.total, 61.3021)

    def test_the_commit_lock_reports_waits_and_holds(self):
        now = [100.0]
        waits, holds, soon = [], [], []
        lock = CommitLock(call_soon=soon.append, clock=lambda: now[0],
                          on_wait=waits.append,
                          on_hold=lambda owner, seconds: holds.append((owner, seconds)))
        self.assertTrue(lock.request("a", lambda: None))
        self.assertFalse(lock.request("b", lambda: None))
        self.assertEqual(lock.waiting_since_of("b"), 100.0)
        self.assertIsNone(lock.waiting_since_of("a"))
        now[0] = 102.5
        lock.release("a")
        now[0] = 103.0
        lock.release("b")
        lock.release("c")   # not the holder: nothing to report
        self.assertEqual(waits, [0.0, 2.5])
        self.assertEqual(holds, [("a", 2.5), ("b", 0.5)])

    def test_slow_transactions_are_kept_from_the_threshold(self):
        stats = StorageStats(start_time=0.0, slow_threshold=1.0)
        stats.lock_held("quick", 0.5, now=10.0)
        stats.lock_held("slow", 1.0, now=11.0)
        for i in range(30):
            stats.lock_held(f"slower {i}", 2.0, now=12.0 + i)
        self.assertEqual(stats.lock_hold.count, 32)
        self.assertEqual(len(stats.slow_transactions), 20)   # the most recent
        self.assertEqual(stats.slow_transactions[-1].label, "slower 29")
        self.assertNotIn("quick", [s.label for s in stats.slow_transactions])
        # ruok's dict is unchanged by what the monitor counts.
        self.assertNotIn("timeouts", stats.as_dict(1.0, Z64))
