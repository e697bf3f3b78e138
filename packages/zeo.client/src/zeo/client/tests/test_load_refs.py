"""Loads that bring the records the loaded one references (zeo.client.load_refs).

* with our server (real sockets, a FileStorage): a cold read of a
  container caches its children with it, and ``load_refs=False`` (or the
  ``<clientstorage>`` key) turns that off;
* the cache rule: a scripted server sends an invalidation, then a reply
  whose extra record of the invalidated object is older -- it is not
  cached as current; malformed extras are ignored;
* with the reference ZEO 6.2 server: nothing is offered, plain loads.
"""
from __future__ import annotations

import os
import unittest

import msgpack
import transaction
import ZODB
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.utils import maxtid, p64

from zeo.protocol.record_refs import LOAD_REFS

from zeo.client.cache import MemoryCache
from zeo.client.config import ClientConfig
from zeo.client.load_refs import LOAD_METHOD, REFS_METHOD, cache_reply
from zeo.client.storage import ClientStorage
from zeo.client.tests.hostile import FakeServer, wait_until
from zeo.client.tests.support import FAST, ServerFixture, parse, section

CHILDREN = 30


def write_container(address):
    """A PersistentList of CHILDREN mappings under the root: return the
    list's oid and its children's."""
    db = ZODB.DB(ClientStorage(address, **FAST))
    try:
        connection = db.open()
        row = connection.root()['row'] = PersistentList(
            PersistentMapping({'n': i}) for i in range(CHILDREN))
        transaction.commit()
        return row._p_oid, [child._p_oid for child in row]
    finally:
        db.close()


class OurServerTests(ServerFixture):

    def setUp(self):
        super().setUp()
        self.row, self.children = write_container(self.address)

    def test_a_cold_load_caches_the_children(self):
        client = self.client()
        self.assertEqual(client._manager.channel.load_method, REFS_METHOD)
        self.assertIsNone(client._cache.load(self.children[0]))
        client.load(self.row)
        for child in self.children:
            data, tid = client._cache.load(child)
            self.assertEqual((data, tid), client.loadSerial(child, tid) and (data, tid))
        self.assertEqual(client.load(self.children[5]), client._cache.load(self.children[5]))

    def test_the_extras_are_current_and_invalidated_like_any_record(self):
        client, writer = self.client(), self.client()
        client.load(self.row)
        child = self.children[3]
        old = client._cache.load(child)[1]
        new = self.commit_child(writer, child, old)
        wait_until(lambda: client.lastTransaction() == new)
        self.assertIsNone(client._cache.load(child))
        self.assertEqual(client._cache.loadBefore(child, new)[1:], (old, new))
        self.assertEqual(client.load(child)[1], new)

    @staticmethod
    def commit_child(writer, child, previous):
        from zeo.client.tests.support import commit
        data, _ = writer.load(child)
        return commit(writer, (child, previous, data + b''))

    def test_off(self):
        client = self.client(load_refs=False)
        self.assertEqual(client._manager.channel.load_method, LOAD_METHOD)
        self.assertEqual(client._manager.channel.agreed.capabilities, frozenset())
        client.load(self.row)
        self.assertIsNone(client._cache.load(self.children[0]))

    def test_a_whole_database_read_cold(self):
        db = ZODB.DB(ClientStorage(self.address, **FAST))
        self.addCleanup(db.close)
        storage = db.storage
        loads = []
        real = storage._runner.load
        storage._runner.load = lambda oid, tid: loads.append(oid) or real(oid, tid)
        row = db.open().root()['row']
        self.assertEqual([child['n'] for child in row], list(range(CHILDREN)))
        # Opening the database loaded the root, which brought the list
        # and the children.
        self.assertEqual(loads, [])


def reply(msgid, value):
    return msgpack.packb((msgid, 0, '.reply', value), use_bin_type=True)


def invalidation(tid, oids):
    return msgpack.packb((0, True, 'invalidateTransaction', (tid, oids)),
                         use_bin_type=True)


class ScriptedServerTests(unittest.TestCase):
    """A msgpack server offering ``load-refs``, scripted per test."""

    REGISTERED = p64(10)
    X, Y, Z = p64(1), p64(2), p64(3)

    def serve(self, loads):
        """*loads* maps an oid to the messages answering its load."""
        def respond(msgid, method, args):
            if method == 'register':
                return [reply(msgid, self.REGISTERED)]
            if method == 'get_info':
                return [reply(msgid, {})]
            if method in (LOAD_METHOD, REFS_METHOD):
                return [message(msgid) for message in loads[args[0]]]
            return [reply(msgid, None)]
        server = FakeServer(respond, greeting=b'M5+zeo1:' + LOAD_REFS.encode())
        self.addCleanup(server.close)
        client = ClientStorage(server.address, **FAST)
        self.addCleanup(client.close)
        return server, client

    def test_an_extra_older_than_an_invalidation_seen_is_not_cached(self):
        # The server commits Y at 11 and sends the invalidation, then the
        # reply to the load of X, whose extra Y (read before) is at 5.
        server, client = self.serve({
            self.X: [lambda msgid: invalidation(p64(11), [self.Y]),
                     lambda msgid: reply(msgid, (b'x', p64(4), None, [
                         (self.Y, b'old y', p64(5), None),
                         (self.Z, b'z', p64(5), None)]))],
            self.Y: [lambda msgid: reply(msgid, (b'new y', p64(11), None, []))],
        })
        self.assertEqual(server.answers[0], b'M5+zeo1:load-refs')
        self.assertEqual(client.load(self.X), (b'x', p64(4)))
        self.assertIsNone(client._cache.load(self.Y))
        self.assertEqual(client._cache.load(self.Z), (b'z', p64(5)))
        # So Y is asked for, and the new revision read.
        self.assertEqual(client.load(self.Y), (b'new y', p64(11)))
        self.assertEqual(server.methods().count(REFS_METHOD), 2)
        self.assertEqual(client.load(self.Z), (b'z', p64(5)))
        self.assertEqual(server.methods().count(REFS_METHOD), 2)

    def test_an_invalidation_after_the_reply_ends_the_extra(self):
        server, client = self.serve({
            self.X: [lambda msgid: reply(msgid, (b'x', p64(4), None, [
                         (self.Y, b'old y', p64(5), None)])),
                     lambda msgid: invalidation(p64(11), [self.Y])],
            self.Y: [lambda msgid: reply(msgid, (b'new y', p64(11), None, []))],
        })
        client.load(self.X)
        wait_until(lambda: client.lastTransaction() == p64(11))
        self.assertIsNone(client._cache.load(self.Y))
        self.assertEqual(client._cache.loadBefore(self.Y, p64(11)),
                         (b'old y', p64(5), p64(11)))

    def test_malformed_extras_are_ignored(self):
        server, client = self.serve({
            self.X: [lambda msgid: reply(msgid, (b'x', p64(4), None, [
                (self.Y, b'y', p64(5), None), (b'short', b'z', p64(5), None)]))],
        })
        with self.assertLogs('zeo.client', 'WARNING') as logged:
            self.assertEqual(client.load(self.X), (b'x', p64(4)))
        self.assertIn('malformed extra records', logged.output[0])
        self.assertIsNone(client._cache.load(self.Y))


class CacheReplyTests(unittest.TestCase):
    """`cache_reply`: the rules of the cache, and nothing more."""

    def setUp(self):
        self.cache = MemoryCache(1 << 20)
        self.addCleanup(self.cache.close)
        self.cache.setLastTid(p64(1))

    def test_an_extra_contradicting_the_cache_is_skipped_quietly(self):
        # Cached: Y current since 5. The server read a commit at 7 whose
        # invalidation is on its way.
        self.cache.store(p64(2), p64(5), None, b'y5')
        cache_reply(self.cache, p64(1), (b'x', p64(4), None, [
            (p64(2), b'y7', p64(7), None), (p64(3), b'z', p64(6), None)]), 'test')
        self.assertEqual(self.cache.load(p64(2)), (b'y5', p64(5)))
        self.assertEqual(self.cache.load(p64(3)), (b'z', p64(6)))
        self.cache.invalidate(p64(2), p64(7))
        self.assertIsNone(self.cache.load(p64(2)))

    def test_non_current_extras(self):
        cache_reply(self.cache, p64(1), (b'x', p64(4), p64(9), [
            (p64(2), b'y', p64(3), p64(8))]), 'test')
        self.assertIsNone(self.cache.load(p64(2)))
        self.assertEqual(self.cache.loadBefore(p64(2), p64(8)), (b'y', p64(3), p64(8)))
        self.assertIsNone(self.cache.loadBefore(p64(2), maxtid))


class ConfigTests(unittest.TestCase):

    def test_option(self):
        self.assertIs(ClientConfig.from_options(1).load_refs, True)
        self.assertIs(ClientConfig.from_options(1, load_refs=0).load_refs, False)
        self.assertIs(ClientConfig.from_options(1, load_refs=None).load_refs, True)
        self.assertRaises(ValueError, ClientConfig.from_options, 1, load_refs='no')

    def test_key(self):
        storage = parse(section('server 127.0.0.1:1', 'load-refs false'))
        self.assertIs(dict(storage.arguments)['load_refs'], False)
        storage = parse(section('server 127.0.0.1:1'))
        self.assertNotIn('load_refs', dict(storage.arguments))


class ReferenceServerTests(unittest.TestCase):
    """Our client, the reference ZEO 6.2 server: plain loads."""

    def test_nothing_offered_plain_loads(self):
        import tempfile
        import shutil
        from zeo.server.tests.conformance import ReferenceServer
        directory = tempfile.mkdtemp(prefix='zeo-load-refs-')
        self.addCleanup(shutil.rmtree, directory, True)
        server = ReferenceServer(os.path.join(directory, 'Data.fs'))
        self.addCleanup(server.stop)
        row, children = write_container(server.address)
        client = ClientStorage(server.address, **FAST)
        self.addCleanup(client.close)
        protocol = client._manager.channel
        self.assertEqual((protocol.load_method, protocol.agreed.capabilities),
                         (LOAD_METHOD, frozenset()))
        client.load(row)
        self.assertIsNone(client._cache.load(children[0]))
        self.assertEqual(client.load(children[0])[0], client._cache.load(children[0])[0])
