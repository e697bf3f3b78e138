"""The monitor endpoint: metrics scraped from a real server with real
clients, the status page over HTTP and in a headless browser, the JSON."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
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
from zeo.server.interfaces import IServing
from zeo.server.tests.rawclient import RawClient, ServerError

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


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


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
        server = MonitorServer(self, max_connections=1)
        server.client(self)
        refused = socket.create_connection(server.address, timeout=10)
        self.assertEqual(refused.recv(100), b"")   # closed on accept
        refused.close()
        found = samples(server.metrics()[1])
        self.assertEqual(value(found, "zeo_refusals_total", limit="max-connections",
                               storage=""), 1)

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
        self.assertEqual(holder["protocol"], "M5")
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
