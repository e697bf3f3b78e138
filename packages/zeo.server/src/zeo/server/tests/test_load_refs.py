"""``loadBeforeRefs`` over real sockets (zeo.server.load_refs).

A FileStorage in a temporary directory holds a small tree written by
ZODB (a root, a container mapping, a list of leaves, leaves); the server
is ours, in-process, on 127.0.0.1; the client is the raw admin client,
which asks for the ``load-refs`` capability or not.
"""

import os
import shutil
import tempfile
import unittest

import transaction
import ZODB
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.utils import maxtid, z64

import zeo.server
from zeo.protocol.record_refs import LOAD_REFS
from zeo.server import zconfig
from zeo.server.config import (
    DEFAULT_MAX_LOAD_REFS_BYTES, DEFAULT_MAX_LOAD_REFS_RECORDS, ServerConfig)
from zeo.server.tests.rawclient import RawClient, ServerError

LEAVES = 20


def write_tree(path):
    """root -> {'box': mapping of 3 leaves, 'row': list of LEAVES leaves};
    return the oids: root, box, its leaves, row, its leaves."""
    db = ZODB.DB(FileStorage(path))
    try:
        connection = db.open()
        root = connection.root()
        root['box'] = box = PersistentMapping(
            {f'k{i}': PersistentMapping({'n': i}) for i in range(3)})
        root['row'] = row = PersistentList(
            PersistentMapping({'payload': 'x' * 100, 'n': i}) for i in range(LEAVES))
        transaction.commit()
        return {'root': z64, 'box': box._p_oid,
                'box_leaves': {leaf._p_oid for leaf in box.values()},
                'row': row._p_oid, 'row_leaves': [leaf._p_oid for leaf in row]}
    finally:
        db.close()


class LoadRefsTestBase(unittest.TestCase):
    server_options: dict = {}

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix='zeo-load-refs-')
        self.addCleanup(shutil.rmtree, self.directory, True)
        path = os.path.join(self.directory, 'Data.fs')
        self.oids = write_tree(path)
        self.address, stop = zeo.server.server(path=path, **self.server_options)
        self.addCleanup(stop)

    def client(self, capabilities=(LOAD_REFS,), native=True):
        client = RawClient(self.address, native=native, capabilities=capabilities)
        self.addCleanup(client.close)
        return client

    def load_refs(self, client, oid, tid=maxtid):
        data, start, end, extras = client.call('loadBeforeRefs', oid, tid)
        self.assertEqual((data, start, end), client.call('loadBefore', oid, tid))
        return extras


class AgreementTests(LoadRefsTestBase):

    def test_offered_and_agreed(self):
        self.assertEqual(self.client().agreed.capabilities, {LOAD_REFS})

    def test_not_asked_not_agreed_and_the_call_refused(self):
        for client in (self.client(capabilities=()), self.client(native=False)):
            self.assertEqual(client.agreed.capabilities, frozenset())
            with self.assertRaises(ServerError) as raised:
                client.call('loadBeforeRefs', self.oids['box'], maxtid)
            self.assertIn('load-refs capability', str(raised.exception))
            # The connection goes on; plain loads are plain.
            self.assertEqual(len(client.call('loadBefore', self.oids['box'], maxtid)), 3)


class RefusedTests(LoadRefsTestBase):
    server_options = {'load_refs': False}

    def test_not_offered(self):
        client = self.client()
        self.assertEqual(client.agreed.capabilities, frozenset())
        self.assertRaises(ServerError, client.call, 'loadBeforeRefs', self.oids['box'], maxtid)


class WalkTests(LoadRefsTestBase):

    def test_extras_are_what_loadBefore_answers_for_the_references(self):
        client = self.client()
        extras = self.load_refs(client, self.oids['box'])
        self.assertEqual({extra[0] for extra in extras}, self.oids['box_leaves'])
        for oid, data, start, end in extras:
            self.assertEqual(client.call('loadBefore', oid, maxtid), (data, start, end))
            self.assertIsNone(end)

    def test_breadth_first_from_the_root(self):
        extras = self.load_refs(self.client(), self.oids['root'])
        oids = [extra[0] for extra in extras]
        self.assertEqual(oids[:2], sorted(oids[:2]))  # box and row, in pickle order
        self.assertEqual(set(oids[:2]), {self.oids['box'], self.oids['row']})
        self.assertEqual(set(oids), {self.oids['box'], self.oids['row']}
                         | self.oids['box_leaves'] | set(self.oids['row_leaves']))

    def test_the_snapshot_tid_is_the_request_s(self):
        client = self.client()
        leaf = self.oids['row_leaves'][0]
        tid = client.call('lastTransaction')
        new = client.commit(1, [(leaf, tid, b'changed')])
        # As of before the commit: the old revision, ended by it.
        extras = dict((e[0], e[1:]) for e in self.load_refs(client, self.oids['row'], new))
        self.assertEqual(extras[leaf][1:], (tid, new))
        # Now: the new one, current.
        extras = dict((e[0], e[1:]) for e in self.load_refs(client, self.oids['row']))
        self.assertEqual(extras[leaf], (b'changed', new, None))

    def test_nothing_before_the_record_existed(self):
        self.assertIsNone(self.client().call('loadBeforeRefs', self.oids['row'], z64))


class BoundTests(LoadRefsTestBase):
    server_options = {'max_load_refs_records': 4}

    def test_at_most_max_records_and_siblings_go_on(self):
        client = self.client()
        leaves = self.oids['row_leaves']
        self.assertEqual([e[0] for e in self.load_refs(client, self.oids['row'])], leaves[:4])
        # The client reads the leaves in order; the first one it lacks
        # brings the next siblings.
        self.assertEqual([e[0] for e in self.load_refs(client, leaves[4])], leaves[5:9])
        self.assertEqual([e[0] for e in self.load_refs(client, leaves[9])], leaves[10:14])
        # An unrelated load brings only its own references; the walk is kept.
        self.assertEqual({e[0] for e in self.load_refs(client, self.oids['box'])},
                         self.oids['box_leaves'])
        self.assertEqual([e[0] for e in self.load_refs(client, leaves[14])], leaves[15:19])

    def test_a_leaf_outside_the_walk_brings_nothing(self):
        client = self.client()
        self.load_refs(client, self.oids['row'])
        self.assertEqual(self.load_refs(client, self.oids['row_leaves'][2]), [])

    def test_reading_at_random_brings_no_siblings(self):
        client = self.client()
        leaves = self.oids['row_leaves']
        self.load_refs(client, self.oids['row'])      # 0-3 sent, 4-19 remembered
        # Found further than max_records on: nothing; 11-19 go first now,
        # 4-9 behind them.
        self.assertEqual(self.load_refs(client, leaves[10]), [])
        # Then 17-19, 4-9, 11-15.
        self.assertEqual(self.load_refs(client, leaves[16]), [])
        # The walk goes on after the leaf read, then with what was skipped.
        self.assertEqual([e[0] for e in self.load_refs(client, leaves[17])],
                         leaves[18:20] + leaves[4:6])

    def test_walks_are_per_connection(self):
        first, second = self.client(), self.client()
        leaves = self.oids['row_leaves']
        self.load_refs(first, self.oids['row'])
        self.assertEqual(self.load_refs(second, leaves[4]), [])
        self.assertEqual([e[0] for e in self.load_refs(first, leaves[4])], leaves[5:9])


class ByteBoundTests(LoadRefsTestBase):
    server_options = {'max_load_refs_bytes': 400}

    def test_at_most_max_bytes_of_extra_data(self):
        extras = self.load_refs(self.client(), self.oids['row'])
        self.assertTrue(extras)
        self.assertLessEqual(sum(len(e[1]) for e in extras), 400)
        self.assertLess(len(extras), LEAVES)


class FailingStorage(FileStorage):
    """Its loads of ``bad`` fail (as a broken disk would)."""

    bad = None

    def loadBefore(self, oid, tid):
        if oid == self.bad:
            raise OSError("a bad sector")
        return super().loadBefore(oid, tid)


class FailingExtraTests(LoadRefsTestBase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix='zeo-load-refs-')
        self.addCleanup(shutil.rmtree, self.directory, True)
        path = os.path.join(self.directory, 'Data.fs')
        self.oids = write_tree(path)
        storage = FailingStorage(path)
        storage.bad = self.oids['row_leaves'][3]
        self.address, stop = zeo.server.server(storages={'1': storage})
        self.addCleanup(stop)

    def test_the_walk_stops_the_load_stands(self):
        client = self.client()
        data, start, end, extras = client.call('loadBeforeRefs', self.oids['row'], maxtid)
        self.assertEqual([e[0] for e in extras], self.oids['row_leaves'][:3])
        self.assertEqual(client.call('loadBefore', self.oids['row'], maxtid), (data, start, end))


class ConfigTests(unittest.TestCase):

    def test_defaults(self):
        config = ServerConfig()
        self.assertIs(config.load_refs, True)
        self.assertEqual(config.max_load_refs_records, DEFAULT_MAX_LOAD_REFS_RECORDS)
        self.assertEqual(config.max_load_refs_bytes, DEFAULT_MAX_LOAD_REFS_BYTES)
        for field in ('max_load_refs_records', 'max_load_refs_bytes'):
            self.assertRaises(ValueError, ServerConfig, **{field: 0})

    def test_zconfig_keys(self):
        directory = tempfile.mkdtemp(prefix='zeo-load-refs-')
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, 'zeo.conf')

        def load(keys):
            with open(path, 'w') as f:
                f.write(f'<zeo>\n  address 127.0.0.1:0\n{keys}</zeo>\n'
                        f'<mappingstorage 1>\n</mappingstorage>\n')
            return zconfig.load(path).config

        config = load('')
        self.assertEqual((config.load_refs, config.max_load_refs_records,
                          config.max_load_refs_bytes),
                         (True, DEFAULT_MAX_LOAD_REFS_RECORDS, DEFAULT_MAX_LOAD_REFS_BYTES))
        config = load('  load-refs false\n  max-load-refs-records 8\n'
                      '  max-load-refs-bytes 1KB\n')
        self.assertEqual((config.load_refs, config.max_load_refs_records,
                          config.max_load_refs_bytes), (False, 8, 1024))
